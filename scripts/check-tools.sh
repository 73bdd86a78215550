#!/usr/bin/env bash
# Before any test binary runs: every tool a test requires is on this machine.
# Tool names come from the tests themselves (`require_tool("…")`,
# `need_machine!("…")`); their Debian packages from testkit/tools.txt. One line per
# problem, exit 1 on any, so a missing install step is one clear line rather
# than a panic deep inside a test.
set -euo pipefail
cd "$(dirname "$0")/.."
table=testkit/tools.txt
# `python3-at-/usr/bin/python3` asks for python3 at a fixed path: the tool is python3.
names=$(grep -rhoE 'require_tool\("[^"]+"\)|need(_[a-z]+)?!\((\s*"[^"]+",?)+' tests testkit/src \
  | grep -oE '"[^"]+"' | tr -d '"' | sed -E 's/-at-.*//' | sort -u)
package_of() { awk -v t="$1" '!/^#/ && $1 == t { print $2 }' "$table"; }
# Where testkit's find_tool looks: PATH, git's exec-path, a few system dirs.
found() {
  command -v "$1" >/dev/null 2>&1 && return 0
  local d
  for d in "$(git --exec-path 2>/dev/null || true)" /usr/lib/git-core /usr/libexec/git-core \
    /usr/local/libexec/git-core /usr/sbin; do
    [ -n "$d" ] && [ -x "$d/$1" ] && [ -f "$d/$1" ] && return 0
  done
  return 1
}
status=0
for t in $names; do
  pkg=$(package_of "$t")
  if [ -z "$pkg" ]; then
    echo "check-tools: tests require \`$t\`, which $table does not list with its Debian package" >&2
    status=1
  elif ! found "$t"; then
    echo "check-tools: missing tool \`$t\` (Debian package $pkg; \`make deps\` installs it)" >&2
    status=1
  fi
done
[ $status -eq 0 ] && echo "check-tools: all $(echo "$names" | wc -w) tools the tests require are present"
exit $status
