#!/usr/bin/env bash
# One command for the docker-compose deployment of sheepdog-py (docs/deployment.md).
#
#   compose/cluster.sh build          base image (debootstrap, once) + wheels + docker images
#   compose/cluster.sh up             build, start ZooKeeper + 3 sheep, format once, wait until ready
#   compose/cluster.sh down [-v]      stop and remove containers and network (-v: and the volumes)
#   compose/cluster.sh status         containers, health, published ports, `collie node list`
#   compose/cluster.sh logs [SERVICE] follow-less log dump
#   compose/cluster.sh compose ARGS   any docker-compose command with this project's files/env
#
# Environment: everything in compose/.env.example, plus
#   ZK3=1              use the 3-server ZooKeeper ensemble (docker-compose.zk3.yml)
#   COMPOSE_PROJECT_NAME=sheepdog   the compose project (containers, network and volumes prefix)
#   PYTHON=python3     interpreter whose pip downloads the wheels on the host
#   SHEEPDOG_UP_TIMEOUT=180  seconds `up` waits for health and format
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
# the project name: the environment, else compose/.env, else "sheepdog"
if [[ -z ${COMPOSE_PROJECT_NAME:-} && -f $HERE/.env ]]; then
  COMPOSE_PROJECT_NAME=$(sed -n 's/^COMPOSE_PROJECT_NAME=//p' "$HERE/.env" | tail -1)
fi
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-sheepdog}
PYTHON=${PYTHON:-python3}
WHEELS=$HERE/wheels
FILES=(-f "$HERE/docker-compose.yml")
[[ ${ZK3:-} == 1 ]] && FILES+=(-f "$HERE/docker-compose.zk3.yml")

say() { echo "cluster.sh: $*" >&2; }
dc() { docker-compose --project-directory "$HERE" "${FILES[@]}" "$@"; }

# -- wheels ------------------------------------------------------------------------------
# wheels/deps: third-party wheels from PyPI (`pip download`, binary only, for the image's
# CPython 3.11 on glibc), skipped when the requirement list is unchanged since the last
# download, so warm builds need no network. wheels/project: this project, built from a copy
# of the working tree with a fixed SOURCE_DATE_EPOCH, replaced only when its bytes change,
# so an unchanged tree keeps the image's layer cache.
wheels() {
  mkdir -p "$WHEELS/deps" "$WHEELS/project"
  local reqs arch stamp
  reqs=$("$PYTHON" - "$REPO/pyproject.toml" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))
PY
)
  arch=$(uname -m)
  stamp="$reqs
cp311 $arch"
  if [[ ! -f $WHEELS/deps/.stamp || $(cat "$WHEELS/deps/.stamp") != "$stamp" ]]; then
    say "downloading dependency wheels: $(echo "$reqs" | tr '\n' ' ')"
    rm -rf "$WHEELS/deps"; mkdir -p "$WHEELS/deps"
    echo "$reqs" > "$WHEELS/deps/requirements.txt"
    "$PYTHON" -m pip download -q --disable-pip-version-check -d "$WHEELS/deps" \
      --only-binary=:all: --implementation cp --python-version 3.11 --abi cp311 \
      --platform "manylinux_2_28_$arch" --platform "manylinux_2_17_$arch" \
      --platform "manylinux2014_$arch" --platform "linux_$arch" \
      -r "$WHEELS/deps/requirements.txt"
    echo "$stamp" > "$WHEELS/deps/.stamp"
  fi
  local tmp
  tmp=$(mktemp -d)
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" RETURN
  mkdir -p "$tmp/src" "$tmp/out"
  tar -C "$REPO" --exclude=./.git --exclude=./compose/wheels --exclude=./.venv \
      --exclude=./build --exclude='*.egg-info' --exclude='__pycache__' --exclude=./.hypothesis \
      --exclude=./.pytest_cache --exclude=./.local-cluster --exclude=./.benchmarks --exclude=./tests \
      -cf - . | tar -C "$tmp/src" -xf -
  SOURCE_DATE_EPOCH=315532800 "$PYTHON" -m pip wheel -q --disable-pip-version-check --no-deps \
      -w "$tmp/out" "$tmp/src" >&2
  local new old
  new=$(ls "$tmp"/out/*.whl)
  old=$(ls "$WHEELS"/project/*.whl 2>/dev/null || true)
  if [[ -n $old ]] && [[ $(basename "$old") == $(basename "$new") ]] && cmp -s "$old" "$new"; then
    say "project wheel unchanged ($(basename "$new"))"
  else
    rm -f "$WHEELS"/project/*.whl
    cp "$new" "$WHEELS/project/"
    say "project wheel $(basename "$new")"
  fi
}

build() {
  local t0=$SECONDS
  bash "$HERE/build-base-image.sh"
  wheels
  dc build "$@" >&2
  # the images these replaced (same tag, now untagged) are of no further use
  docker image prune -f --filter label=org.sheepdog-py.image >/dev/null || true
  say "images built in $((SECONDS - t0)) s"
}

wait_ready() {
  local timeout=${SHEEPDOG_UP_TIMEOUT:-180} deadline=$((SECONDS + ${SHEEPDOG_UP_TIMEOUT:-180}))
  local cid state rc
  cid=$(dc ps -q format)
  while :; do
    state=$(docker inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$cid")
    [[ $state == exited* ]] && break
    ((SECONDS < deadline)) || { say "format did not finish within ${timeout}s"; dc ps >&2; return 1; }
    sleep 1
  done
  rc=${state#exited }
  if [[ $rc != 0 ]]; then
    say "format failed (exit $rc):"; dc logs --no-color format >&2; return 1
  fi
  for s in sheep1 sheep2 sheep3; do
    until [[ $(docker inspect -f '{{.State.Health.Status}}' "$(dc ps -q "$s")") == healthy ]]; do
      ((SECONDS < deadline)) || { say "$s not healthy within ${timeout}s"; dc ps >&2; return 1; }
      sleep 1
    done
  done
}

port_of() { dc port "$1" "$2" | tail -1 | sed 's/.*://'; }

# collie on the host reads the admin token from its per-user file (docs/security.md)
install_token() {
  local file=${XDG_CONFIG_HOME:-$HOME/.config}/collie/token cluster=${SHEEPDOG_CLUSTER:-default}
  mkdir -p "$(dirname "$file")"
  (umask 077; dc exec -T sheep1 cat "/etc/sheepdog/$cluster/admin.token" > "$file.new")
  mv "$file.new" "$file"
  say "admin token copied to $file"
}

status() {
  dc ps
  local admin
  admin=$(port_of sheep1 7000 2>/dev/null || true)
  echo
  for s in sheep1 sheep2 sheep3; do
    echo "$s: admin $(dc port "$s" 7000 2>/dev/null || echo '-')  nbd $(dc port "$s" 10809 2>/dev/null || echo '-')"
  done
  if [[ -n $admin ]] && command -v collie >/dev/null; then
    echo; collie -a 127.0.0.1 -p "$admin" node list || true
  fi
}

cmd=${1:-}
shift || true
case $cmd in
  build) build "$@" ;;
  up)
    build
    say "starting project $COMPOSE_PROJECT_NAME"
    # `up` waits for the health checks the format service depends on
    dc up -d --no-build "$@" >&2
    wait_ready
    install_token
    admin=$(port_of sheep1 7000); nbd=$(port_of sheep1 10809)
    status
    echo
    echo "collie:  collie -a 127.0.0.1 -p $admin vdi create demo 1G"
    echo "qemu:    qemu-io -f raw nbd://127.0.0.1:$nbd/demo -c 'write -P 0xab 0 1M'"
    echo "down:    $0 down      (keep the data)   |   $0 down -v   (delete the volumes too)"
    ;;
  down) dc down --remove-orphans "$@" ;;
  status) status ;;
  logs) dc logs --no-color "$@" ;;
  compose) dc "$@" ;;
  *) sed -n '2,16p' "$0" >&2; exit 64 ;;
esac
