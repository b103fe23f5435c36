#!/usr/bin/env bash
# How close can an X-Accel-Redirect GET come to a static file at all? The same nginx serves one
# file statically and through X-Accel-Redirect from an upstream that costs almost nothing (a
# second nginx server answering every request with the redirect header and no body), so what
# remains is nginx's own proxying: the upstream round trip and the internal redirect. The
# origin (Python) can only add to that. SIZE (bytes, default 4096) sets the file's size.
# Results: docs/BENCHMARKS.md, "nginx edge". Run under `flock /tmp/bench.lock`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
head -c "${SIZE:-4096}" /dev/urandom > "$work/file.bin"
chmod 644 "$work/file.bin"
start_nginx "
  upstream up { server 127.0.0.1:18611; keepalive 64; }
  server {
    listen 127.0.0.1:18611;
    location / { add_header X-Accel-Redirect /_accel/file.bin; return 200; }
  }
  server {
    listen 127.0.0.1:18610 reuseport;
    sendfile on; tcp_nopush on; tcp_nodelay on;
    location = /static/file.bin { alias $work/file.bin; }
    location = /static-ofc/file.bin {
      alias $work/file.bin; open_file_cache max=1000 inactive=60s;
    }
    location /accel/ {
      proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\";
    }
    location /_accel/ {
      internal; alias $work/; open_file_cache max=1000 inactive=60s;
    }
  }"
paths="static/file.bin static-ofc/file.bin accel/file.bin"
# shellcheck disable=SC2086 # the paths are words
same_file_rounds http://127.0.0.1:18610 $paths
