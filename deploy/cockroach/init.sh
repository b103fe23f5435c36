#!/bin/bash
# Initializes the three-node cluster once (a second run finds it initialized), then creates
# the origin's database and SQL user. ORIGIN_DB_PASSWORD comes from .env.
set -euo pipefail
: "${ORIGIN_DB_PASSWORD:?set ORIGIN_DB_PASSWORD in .env}"
flags=(--certs-dir=/certs --host=roach1:26257)
for _ in $(seq 60); do
  if out=$(cockroach init "${flags[@]}" 2>&1); then
    echo "cluster initialized"; break
  elif grep -q "already been initialized" <<<"$out"; then
    echo "cluster was initialized before"; break
  fi
  sleep 2
done
cockroach sql "${flags[@]}" -e "
  CREATE DATABASE IF NOT EXISTS origin;
  CREATE USER IF NOT EXISTS origin;
  ALTER USER origin WITH PASSWORD '${ORIGIN_DB_PASSWORD}';
  GRANT ALL ON DATABASE origin TO origin;
  GRANT ALL ON SCHEMA origin.public TO origin;"
echo "database origin ready"
