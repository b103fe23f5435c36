# The origin node: `origin serve` as a non-root user, the project installed into a venv.
#   docker build -t asset-origin:0.1.0 .
# Configuration comes from ORIGIN_* variables (README.md, "Configuration"); docker-compose.yml
# is the production stack around it.

FROM python:3.11.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY origin ./origin
COPY blobstore ./blobstore
COPY cache ./cache
COPY recommender ./recommender
RUN python -m venv /opt/origin && /opt/origin/bin/pip install .

FROM python:3.11.11-slim-bookworm
# libgomp1: OpenMP for the recommender's ALS (implicit).
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 origin \
    && useradd --system --uid 10001 --gid origin --home-dir /var/lib/origin --create-home \
               --shell /usr/sbin/nologin origin
COPY --from=build /opt/origin /opt/origin
ENV PATH=/opt/origin/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ORIGIN_HOST=0.0.0.0 \
    ORIGIN_PORT=8080 \
    ORIGIN_DATA_DIR=/var/lib/origin
USER origin
WORKDIR /var/lib/origin
# The local disk: blobs when running alone, the LRU cache in front of SFTP in the stack.
# Each container gets its own; it is never shared between nodes.
VOLUME ["/var/lib/origin"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
ENTRYPOINT ["origin"]
CMD ["serve"]
