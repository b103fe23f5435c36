#!/bin/sh
# Keys come in as compose secrets (bind mounts with the host's owner and mode); sshd wants them
# root-owned and private, so they are copied into place first.
set -eu
install -m 600 /run/secrets/sftp_host_key /etc/ssh/ssh_host_ed25519_key
install -m 644 /run/secrets/origin_ssh_key_pub /etc/ssh/authorized_keys/origin
chown origin:origin /srv/sftp/assets
exec /usr/sbin/sshd -D -e
