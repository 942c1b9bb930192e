#!/bin/sh
# ferry-demo as two separately started processes that meet through a
# metadata_listener: a target with --listen 0 (it prints the port it got) and
# an initiator with --connect; both must exit 0, and the initiator must have
# found every byte in place.
# usage: smoke_listener.sh FERRY_DEMO [DEMO ARGUMENTS...]
set -eu
. "$(dirname "$0")/../tests/support/await_port.sh"
demo=$1
shift
log=$(mktemp)
out=$(mktemp)
trap 'rm -f "$log" "$out"' EXIT
"$demo" --listen 0 "$@" >"$log" 2>&1 &
target=$!
await_port "$log" "$target" smoke_listener
"$demo" --connect "127.0.0.1:$port" "$@" >"$out" 2>&1 || {
    cat "$out" >&2
    kill "$target" 2>/dev/null || true
    exit 1
}
cat "$out"
wait "$target" || { echo "smoke_listener: the target failed:" >&2; cat "$log" >&2; exit 1; }
grep -q 'every byte matches' "$out" || { echo "smoke_listener: the initiator did not check the bytes" >&2; exit 1; }
