#!/bin/sh
# Makes the key files docker-compose.yml reads as secrets, in deploy/secrets/ (not in git):
#   the SFTP server's host key, the origins' login key, and the known_hosts line that pins
#   the one to the other. Run once per deployment: deploy/make-secrets.sh
set -eu
dir="$(cd "$(dirname "$0")" && pwd)/secrets"
mkdir -p "$dir"
umask 077
[ -f "$dir/sftp_host_key" ] || ssh-keygen -q -t ed25519 -N '' -C sftp-host -f "$dir/sftp_host_key"
[ -f "$dir/origin_ssh_key" ] || ssh-keygen -q -t ed25519 -N '' -C origin -f "$dir/origin_ssh_key"
# The origin connects to "sftp" on port 22 (ORIGIN_SFTP_URL in docker-compose.yml).
printf 'sftp %s\n' "$(cut -d' ' -f1,2 "$dir/sftp_host_key.pub")" > "$dir/sftp_known_hosts"
# Compose mounts these files as they are on the host: the origin (uid 10001 in its image) must
# own its key to read it; the SFTP server copies its files into place as root.
chown 10001:10001 "$dir/origin_ssh_key" 2>/dev/null \
  || echo "warning: run as root to chown $dir/origin_ssh_key to uid 10001 (the origin user)" >&2
chmod 644 "$dir/origin_ssh_key.pub" "$dir/sftp_known_hosts" "$dir/sftp_host_key.pub"
echo "wrote $dir: sftp_host_key, origin_ssh_key(.pub), sftp_known_hosts"
