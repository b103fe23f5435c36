#!/bin/bash
# The cluster's TLS material, made once: a CA (its key kept in its own volume, mounted only
# here), one node certificate for the three nodes, the root client certificate for the init
# job, and the CA certificate alone for the origins (they log in with a password over TLS).
set -euo pipefail
certs=/certs ca_key=/ca-key/ca.key public=/public
if [ ! -f "$ca_key" ]; then
  cockroach cert create-ca --certs-dir="$certs" --ca-key="$ca_key"
fi
if [ ! -f "$certs/node.crt" ]; then
  cockroach cert create-node roach1 roach2 roach3 localhost 127.0.0.1 \
    --certs-dir="$certs" --ca-key="$ca_key"
fi
if [ ! -f "$certs/client.root.crt" ]; then
  cockroach cert create-client root --certs-dir="$certs" --ca-key="$ca_key"
fi
install -m 644 "$certs/ca.crt" "$public/ca.crt"
echo "certificates ready"
