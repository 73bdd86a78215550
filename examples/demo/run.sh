#!/usr/bin/env bash
# The demo: a real git daemon on loopback serves a configuration repository;
# provision validates its config, deploys a release, picks up a pushed change
# and keeps the last good release when the server goes away.
# Usage: examples/demo/run.sh PATH/TO/provision
set -euo pipefail
bin=$(readlink -f "${1:-target/release/provision}")
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/provision-demo.XXXXXX)
daemon_pid=""
cleanup() { [ -z "$daemon_pid" ] || kill "$daemon_pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }
export GIT_AUTHOR_NAME=demo GIT_AUTHOR_EMAIL=demo@example.net GIT_COMMITTER_NAME=demo GIT_COMMITTER_EMAIL=demo@example.net
export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1
git_q() { git -c init.defaultBranch=main -c commit.gpgsign=false "$@" >/dev/null 2>&1; }

step "an upstream repository, served by git daemon on 127.0.0.1"
mkdir -p "$work/srv" "$work/src"
git_q init --bare "$work/srv/config.git"
cp -r "$here/repo/." "$work/src/"
git_q -C "$work/src" init
git_q -C "$work/src" add -A
git_q -C "$work/src" commit -m "web: initial configuration"
git_q -C "$work/src" push "$work/srv/config.git" HEAD:main
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
git daemon --reuseaddr --export-all --base-path="$work/srv" --listen=127.0.0.1 --port="$port" "$work/srv" &
daemon_pid=$!
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done
echo "git://127.0.0.1:$port/config.git"

step "a config for this machine"
cat > "$work/config.toml" <<CONF
[[services]]
machine = "demo-host"
service = "web"
upstream = "git://127.0.0.1:$port/config.git"
depth = 3
dirs = [
  { local = "/etc/web", link = "web/etc" },
  { local = "/etc/default/web", link = "web/default/web", file = true },
]
CONF
cat "$work/config.toml"
p() { "$bin" --config "$work/config.toml" --state-dir "$work/state" --machine demo-host "$@"; }

step "provision check"
show p check

step "provision sync: first deployment"
show p sync
release=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["deployed"]["release"])' "$work/state/web/state.json")
echo "release files:"
(cd "$work/state/web/releases/$release" && find . -type f | sort | sed 's/^/  /')

step "push a change upstream, then sync"
sed -i 's/hello from git/hello again/' "$work/src/web/etc/web.conf"
git_q -C "$work/src" commit -am "web: new greeting"
git_q -C "$work/src" push "$work/srv/config.git" HEAD:main
show p sync
release=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["deployed"]["release"])' "$work/state/web/state.json")
show grep greeting "$work/state/web/releases/$release/web/etc/web.conf"

step "nothing changed: sync again"
show p sync

step "the server goes away: the pass fails, the last good release stays"
kill "$daemon_pid"; wait "$daemon_pid" 2>/dev/null || true; daemon_pid=""
set +e; p sync; code=$?; set -e
echo "exit code: $code"
echo "still deployed: $release"
ls "$work/state/web/releases" | sed "s/^/  /"
