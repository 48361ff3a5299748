#!/bin/bash
# Start one sheep from environment variables (docs/deployment.md has the table):
#   SHEEP_ZK=zookeeper:2181        ZooKeeper connection string (comma separated for an ensemble)
#   SHEEP_CLUSTER=default          cluster name (ZooKeeper chroot)
#   SHEEP_ADDR=$(hostname)         address the other sheep reach this one at (the service name)
#   SHEEP_LISTEN=0.0.0.0           bind address inside the container (peer and NBD)
#   SHEEP_LISTEN_ADMIN=0.0.0.0     admin API bind address (publish its port on loopback only)
#   SHEEP_SECRET_FILE=/etc/sheepdog/$SHEEP_CLUSTER/cluster.secret   the cluster secret (the
#                                  keys volume shared by every sheep; created by the first)
#   SHEEP_NBD_TLS_DIR=             x509 files for NBD over TLS (docs/security.md)
#   SHEEP_PORT=7100 SHEEP_ADMIN_PORT=7000 SHEEP_NBD_PORT=10809   ports inside the container
#   SHEEP_ZONE= SHEEP_WEIGHT=1     failure zone, capacity weight
#   SHEEP_GATEWAY=no               yes: a gateway-only sheep (no store, no weight; --gateway)
#   SHEEP_SESSION_TIMEOUT=10 SHEEP_IO_TIMEOUT=60 SHEEP_RESERVE=67108864 SHEEP_LOG_LEVEL=INFO
#   SHEEP_DIR=/var/lib/sheepdog    store directory (a volume; it keeps the node id)
#   SHEEP_EXTRA_ARGS=              anything else, appended to the command line
# Arguments given to the container are appended too.
set -euo pipefail
args=(
  --dir "${SHEEP_DIR:-/var/lib/sheepdog}"
  --zk "${SHEEP_ZK:-zookeeper:2181}"
  --cluster "${SHEEP_CLUSTER:-default}"
  --addr "${SHEEP_ADDR:-$(hostname)}"
  --listen "${SHEEP_LISTEN:-0.0.0.0}"
  --listen-admin "${SHEEP_LISTEN_ADMIN:-0.0.0.0}"
  --port "${SHEEP_PORT:-7100}"
  --admin-port "${SHEEP_ADMIN_PORT:-7000}"
  --nbd-port "${SHEEP_NBD_PORT:-10809}"
  --session-timeout "${SHEEP_SESSION_TIMEOUT:-10}"
  --io-timeout "${SHEEP_IO_TIMEOUT:-60}"
  --log-level "${SHEEP_LOG_LEVEL:-INFO}"
)
if [ "${SHEEP_GATEWAY:-no}" = yes ]; then
  args+=(--gateway)
else
  args+=(--weight "${SHEEP_WEIGHT:-1}")
fi
[ -n "${SHEEP_ZONE:-}" ] && args+=(--zone "$SHEEP_ZONE")
[ -n "${SHEEP_RESERVE:-}" ] && args+=(--reserve "$SHEEP_RESERVE")
[ -n "${SHEEP_SECRET_FILE:-}" ] && args+=(--secret-file "$SHEEP_SECRET_FILE")
[ -n "${SHEEP_NBD_TLS_DIR:-}" ] && args+=(--nbd-tls-dir "$SHEEP_NBD_TLS_DIR")
# shellcheck disable=SC2206  # word splitting wanted
[ -n "${SHEEP_EXTRA_ARGS:-}" ] && args+=($SHEEP_EXTRA_ARGS)
mkdir -p "${SHEEP_DIR:-/var/lib/sheepdog}"
echo "entrypoint-sheep: sheep ${args[*]} $*"
exec sheep "${args[@]}" "$@"
