# Shared by alignment.sh, slice.sh and accel_bound.sh: a private nginx in a temp dir, and
# alternating wrk rounds. Source it after `set -euo pipefail`.

work=$(mktemp -d)
chmod 755 "$work"  # nginx workers run as nobody: they must read files and write the cache
cleanup_extra=":"
trap 'kill $(cat "$work/nginx.pid") 2>/dev/null || true; eval "$cleanup_extra"; rm -rf "$work"' EXIT

# start_nginx HTTP_BLOCK_BODY: nginx with 2 workers, no access log, a proxy cache zone "z"
# in $work/cache, and the given http { } contents.
start_nginx() {
  cat > "$work/nginx.conf" <<CONF
worker_processes 2;
daemon on;
pid $work/nginx.pid;
error_log $work/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  proxy_cache_path $work/cache levels=2:2 keys_zone=z:10m;
$1
}
CONF
  nginx -c "$work/nginx.conf" -p "$work"
}

# hit_rounds BASE_URL PATH...: ROUNDS (default 3) rounds of wrk -t2 -c16 -d6s, one per path
# in turn, each printing its Transfer/sec.
hit_rounds() {
  local base=$1 round path
  shift
  for round in $(seq "${ROUNDS:-3}"); do
    for path in "$@"; do
      printf 'round %s %-16s ' "$round" "$path"
      wrk -t2 -c16 -d6s "$base/$path" | grep Transfer/sec
    done
  done
}

# same_file_rounds BASE_URL PATH...: checks that every path answers exactly $work/file.bin,
# then runs hit_rounds over them.
same_file_rounds() {
  local base=$1 path
  shift
  for path in "$@"; do
    curl -s -o "$work/out" "$base/$path"
    cmp -s "$work/out" "$work/file.bin" || { echo "wrong bytes from /$path" >&2; exit 1; }
  done
  hit_rounds "$base" "$@"
}
