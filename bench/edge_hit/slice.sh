#!/usr/bin/env bash
# Does the slice module cost a cached 1 MiB HIT anything? One nginx serves the same 1 MiB file
# statically, from proxy_cache as one whole entry, and from proxy_cache in 8 MiB slices (the
# edge's way); wrk rounds of each, alternating. Results: docs/BENCHMARKS.md, "nginx edge".
# Run under `flock /tmp/bench.lock`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
head -c 1048576 /dev/urandom > "$work/file.bin"
chmod 644 "$work/file.bin"
start_nginx "
  upstream up { server 127.0.0.1:18611; keepalive 8; }
  server {
    listen 127.0.0.1:18611;
    root $work;
  }
  server {
    listen 127.0.0.1:18610 reuseport;
    sendfile on; tcp_nopush on; tcp_nodelay on;
    location = /static/file.bin { alias $work/file.bin; }
    location /whole/ {
      proxy_pass http://up/; proxy_http_version 1.1; proxy_set_header Connection \"\";
      proxy_cache z; proxy_cache_key \$uri; proxy_cache_valid 200 206 1h;
      proxy_buffer_size 16k; proxy_buffers 16 16k; open_file_cache max=1000 inactive=60s;
    }
    location /sliced/ {
      slice 8m;
      proxy_pass http://up/; proxy_http_version 1.1; proxy_set_header Connection \"\";
      proxy_set_header Range \$slice_range;
      proxy_cache z; proxy_cache_key \$uri\$slice_range; proxy_cache_valid 200 206 1h;
      proxy_buffer_size 16k; proxy_buffers 16 16k; open_file_cache max=1000 inactive=60s;
    }
  }"
paths="static/file.bin whole/file.bin sliced/file.bin"
# shellcheck disable=SC2086 # the paths are words
same_file_rounds http://127.0.0.1:18610 $paths
