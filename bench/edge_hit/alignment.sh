#!/usr/bin/env bash
# Does the offset of a cached body in nginx's proxy_cache file matter for HITs?
# nginx caches a 1 MiB answer three times with different header padding; the script prints
# each cache file's body offset, then wrk rounds of HITs for each. Results: docs/BENCHMARKS.md,
# "nginx edge". Run under `flock /tmp/bench.lock`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-$here/../../.venv/bin/python}
source "$here/lib.sh"
"$py" "$here/upstream.py" 18601 & up=$!
cleanup_extra="kill $up 2>/dev/null || true"
sleep 1
start_nginx '
  upstream up { server 127.0.0.1:18601; keepalive 8; }
  server {
    listen 127.0.0.1:18600 reuseport;
    sendfile on; tcp_nopush on; tcp_nodelay on;
    location /f/ {
      proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_cache z; proxy_cache_key $uri; proxy_cache_valid 200 1h;
      proxy_buffer_size 16k; proxy_buffers 16 16k;
      open_file_cache max=1000 inactive=60s;
    }
  }'
# Paddings found by trial for nginx 1.22.1 and these keys: body at 4096 (aligned), at 4085
# (same header size, unaligned), at 555 (no padding).
paths="d/3549 e/3538 a/10"
for p in $paths; do curl -s -o /dev/null "http://127.0.0.1:18600/f/$p"; done
for f in $(find "$work/cache" -type f); do
  echo "cache file body offset: $(( $(stat -c %s "$f") - 1048576 ))"
done
# shellcheck disable=SC2086 # the paths are words
hit_rounds http://127.0.0.1:18600/f $paths
