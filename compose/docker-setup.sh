#!/usr/bin/env bash
# Make a Docker engine available on a Debian 12 machine without systemd (CI, throw-away VMs):
# install docker.io, docker-compose (the 1.29 Python tool) and debootstrap when missing,
# start dockerd by hand when nothing answers on the socket, and wait until `docker info` works.
# Idempotent; safe to run on every CI start.
#   DOCKERD_LOG=/tmp/dockerd.log   where a dockerd started here writes its log
#   DOCKERD_PID=/tmp/dockerd.pid   its pid (stop it with: kill "$(cat /tmp/dockerd.pid)")
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
DOCKERD_LOG=${DOCKERD_LOG:-/tmp/dockerd.log}
DOCKERD_PID=${DOCKERD_PID:-/tmp/dockerd.pid}
SOCK=unix:///var/run/docker.sock

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  echo "docker-setup: installing ${missing[*]}" >&2
  [ "$(id -u)" = 0 ] || { echo "docker-setup: must run as root to install packages" >&2; exit 1; }
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if docker -H "$SOCK" info >/dev/null 2>&1; then
  echo "docker-setup: engine already running" >&2
  exit 0
fi
# No systemd here: start the engine in its own session so it outlives this script.
setsid dockerd --host "$SOCK" >"$DOCKERD_LOG" 2>&1 </dev/null &
echo $! >"$DOCKERD_PID"
for _ in $(seq 1 240); do
  if docker -H "$SOCK" info >/dev/null 2>&1; then
    echo "docker-setup: dockerd running (pid $(cat "$DOCKERD_PID"), log $DOCKERD_LOG)" >&2
    exit 0
  fi
  kill -0 "$(cat "$DOCKERD_PID")" 2>/dev/null || break
  sleep 0.25
done
echo "docker-setup: dockerd did not come up; see $DOCKERD_LOG" >&2
tail -20 "$DOCKERD_LOG" >&2 || true
exit 1
