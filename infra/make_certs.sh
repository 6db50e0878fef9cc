#!/usr/bin/env bash
# Certificates for a supergen cluster over TLS: one private certificate authority, and a key and certificate
# it signs for each NAME (default: scheduler worker client).
#   infra/make_certs.sh DIR [NAME ...]
# Writes DIR/ca.pem (every host gets it), DIR/ca.key (keep it off the cluster: it mints new members),
# DIR/NAME.pem and DIR/NAME.key (the key only to the hosts that play NAME). Dask verifies both ends of every
# connection against ca.pem, so a process without a certificate this CA signed is refused, whichever side
# it is on. Hostnames are not checked (Dask's choice: workers listen on addresses chosen at start), so one
# certificate can serve every worker host; a separate one per host lets one be revoked by re-issuing the rest.
# Existing files are kept: running it again adds only the missing NAMEs under the same CA.
set -euo pipefail
DIR=${1:?directory for the certificates}
shift
NAMES=("$@")
[ ${#NAMES[@]} -gt 0 ] || NAMES=(scheduler worker client)
DAYS=${SUPERGEN_CERT_DAYS:-825}
mkdir -p "$DIR"
umask 077  # keys readable by their owner only
if [ ! -f "$DIR/ca.pem" ]; then
  openssl req -x509 -newkey rsa:3072 -nodes -days "$DAYS" -subj "/CN=supergen cluster CA" \
    -keyout "$DIR/ca.key" -out "$DIR/ca.pem" 2>/dev/null
fi
for name in "${NAMES[@]}"; do
  [ -f "$DIR/$name.pem" ] && continue
  ext=$(mktemp)
  # both usages: a Dask worker is a server (peers fetch its data) and a client (of the scheduler)
  printf 'extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:%s\n' "$name" >"$ext"
  openssl req -newkey rsa:3072 -nodes -subj "/CN=$name" -keyout "$DIR/$name.key" -out "$DIR/$name.csr" 2>/dev/null
  openssl x509 -req -in "$DIR/$name.csr" -CA "$DIR/ca.pem" -CAkey "$DIR/ca.key" -CAcreateserial -days "$DAYS" \
    -extfile "$ext" -out "$DIR/$name.pem" 2>/dev/null
  rm -f "$DIR/$name.csr" "$ext"
done
chmod 644 "$DIR"/*.pem
echo "$DIR: ca.pem$(printf ', %s.pem/.key' "${NAMES[@]}")"
