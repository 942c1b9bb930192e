#!/bin/sh
# The two-host mode on one host: a target with --listen 0 (it prints the port
# it got) and an initiator with --connect, over TCP; then the JSON check.
# usage: smoke_two_hosts.sh FERRY_BENCH PYTHON CHECK_JSON_PY JSON_FILE
set -eu
bench=$1 python=$2 check=$3 json=$4
log=$(mktemp)
trap 'rm -f "$log"' EXIT
"$bench" --listen 0 2>"$log" &
target=$!
port=""
i=0
while [ -z "$port" ] && [ $i -lt 200 ]; do
    port=$(sed -n 's/.*listening on port \([0-9][0-9]*\).*/\1/p' "$log")
    [ -n "$port" ] || sleep 0.05
    i=$((i + 1))
done
if [ -z "$port" ]; then
    kill "$target" 2>/dev/null || true
    echo "smoke_two_hosts: the target printed no port:" >&2
    cat "$log" >&2
    exit 1
fi
rm -f "$json"
"$bench" --connect "127.0.0.1:$port" --tls tcp --block-sizes 1K --batch 1,16 --iters 10 --warmup 1 --reps 2 --retries 0 \
    --notif --json "$json" || { kill "$target" 2>/dev/null || true; exit 1; }
wait "$target" || { echo "smoke_two_hosts: the target failed:" >&2; cat "$log" >&2; exit 1; }
"$python" "$check" "$json" --rows 2 --op write --mem user --pattern contiguous --latency
