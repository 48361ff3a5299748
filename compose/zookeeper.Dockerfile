# ZooKeeper from Debian's libzookeeper-java (the server jar, without the desktop JRE that the
# `zookeeper` package pulls in), standalone or one member of an ensemble.
# Configured by environment variables (docs/deployment.md); zoo.cfg is generated at start by
# /usr/local/bin/zookeeper-start (written below) from:
#   ZK_MY_ID=1           this server's id (ensemble member number)
#   ZK_SERVERS=""        ensemble, space separated: "server.1=zk1:2888:3888;2181 server.2=..."
#                        (empty: a standalone server)
#   ZK_TICK_TIME=2000    ms; session timeouts are clamped to 2..20 ticks
#   ZK_CLIENT_PORT=2181  ZK_HEAP=256m  ZK_FORCE_SYNC=yes (no: skip fsync, tests only)
#   ZK_INIT_LIMIT=10  ZK_SYNC_LIMIT=5  ZK_AUTOPURGE_HOURS=1
ARG BASE_IMAGE=localhost/debian:bookworm
FROM ${BASE_IMAGE}
LABEL org.sheepdog-py.image=zookeeper

ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
RUN apt-get update \
 && apt-get install -y --no-install-recommends default-jre-headless libzookeeper-java libslf4j-java \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
 && mkdir -p /var/lib/zookeeper/data /etc/zookeeper-docker

RUN printf '%s\n' \
  '#!/bin/bash' \
  '# Generate zoo.cfg from the environment, then run ZooKeeper in the foreground (PID 1).' \
  'set -euo pipefail' \
  'data=/var/lib/zookeeper/data; cfg=/etc/zookeeper-docker/zoo.cfg' \
  'mkdir -p "$data"' \
  '{' \
  '  echo "tickTime=${ZK_TICK_TIME:-2000}"' \
  '  echo "initLimit=${ZK_INIT_LIMIT:-10}"' \
  '  echo "syncLimit=${ZK_SYNC_LIMIT:-5}"' \
  '  echo "dataDir=$data"' \
  '  echo "clientPort=${ZK_CLIENT_PORT:-2181}"' \
  '  echo "maxClientCnxns=0"' \
  '  echo "admin.enableServer=false"' \
  '  echo "4lw.commands.whitelist=srvr,stat,ruok,mntr,conf,cons,envi"' \
  '  echo "autopurge.snapRetainCount=3"' \
  '  echo "autopurge.purgeInterval=${ZK_AUTOPURGE_HOURS:-1}"' \
  '  if [ -n "${ZK_SERVERS:-}" ]; then' \
  '    echo "quorumListenOnAllIPs=true"' \
  '    for s in $ZK_SERVERS; do echo "$s"; done' \
  '  fi' \
  '} > "$cfg"' \
  'echo "${ZK_MY_ID:-1}" > "$data/myid"' \
  'flags=(-Xmx${ZK_HEAP:-256m} -XX:+UseSerialGC -XX:TieredStopAtLevel=1)' \
  '[ "${ZK_FORCE_SYNC:-yes}" = no ] && flags+=(-Dzookeeper.forceSync=no)' \
  'echo "zookeeper-start: id ${ZK_MY_ID:-1}; config:"; sed "s/^/  /" "$cfg"' \
  'exec java "${flags[@]}" -cp /usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar \' \
  '  org.apache.zookeeper.server.quorum.QuorumPeerMain "$cfg"' \
  > /usr/local/bin/zookeeper-start \
 && printf '%s\n' \
  '#!/bin/bash' \
  '# Healthy = the server answers srvr with a Mode: line (serving, standalone or in a quorum).' \
  'exec 3<>"/dev/tcp/127.0.0.1/${ZK_CLIENT_PORT:-2181}" || exit 1' \
  'printf srvr >&3' \
  'grep -q "^Mode:" <&3' \
  > /usr/local/bin/zookeeper-healthy \
 && chmod 0755 /usr/local/bin/zookeeper-start /usr/local/bin/zookeeper-healthy

VOLUME ["/var/lib/zookeeper"]
EXPOSE 2181 2888 3888
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 CMD ["/usr/local/bin/zookeeper-healthy"]
ENTRYPOINT ["/usr/local/bin/zookeeper-start"]
