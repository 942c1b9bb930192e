#!/bin/sh
# The two-host mode on one host: a target with --listen 0 (it prints the port
# it got) and an initiator with --connect, over TCP; then the JSON check.
# usage: smoke_two_hosts.sh FERRY_BENCH PYTHON CHECK_JSON_PY JSON_FILE
set -eu
. "$(dirname "$0")/../tests/support/await_port.sh"
bench=$1 python=$2 check=$3 json=$4
log=$(mktemp)
trap 'rm -f "$log"' EXIT
"$bench" --listen 0 2>"$log" &
target=$!
await_port "$log" "$target" smoke_two_hosts
rm -f "$json"
"$bench" --connect "127.0.0.1:$port" --tls tcp --block-sizes 1K --batch 1,16 --iters 10 --warmup 1 --reps 2 --retries 0 \
    --notif --json "$json" || { kill "$target" 2>/dev/null || true; exit 1; }
wait "$target" || { echo "smoke_two_hosts: the target failed:" >&2; cat "$log" >&2; exit 1; }
"$python" "$check" "$json" --rows 2 --op write --mem user --pattern contiguous --latency
