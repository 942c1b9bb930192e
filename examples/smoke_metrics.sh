#!/bin/sh
# smoke_metrics.sh FERRY_METRICS [ARGS...]: runs ferry-metrics on a free
# port, scrapes /metrics with curl and checks the counters of its 100
# WRITEs, and that another path gets a 404; then the program must exit 0.
set -eu
if ! command -v curl >/dev/null; then
    echo "FERRY-SKIP: no curl to scrape with (apt-get install curl)"
    exit 0
fi
prog=$1
shift
dir=$(mktemp -d)
pid=""
trap 'if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi; rm -rf "$dir"' EXIT
. "$(dirname "$0")/../tests/support/await_port.sh"
# Created here: the background job opens it only once it runs.
: >"$dir/log"
"$prog" --port 0 --scrapes 2 --transfers 100 --blocks 8 "$@" >"$dir/log" 2>&1 &
pid=$!
await_port "$dir/log" $pid ferry-metrics
curl -sS --max-time 10 "http://127.0.0.1:$port/metrics" >"$dir/metrics"
code=$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/nope")
status=0
wait $pid || status=$?
pid=""
fail() {
    echo "smoke_metrics: $1" >&2
    cat "$dir/log" >&2
    exit 1
}
[ $status -eq 0 ] || fail "ferry-metrics exited with $status"
[ "$code" = 404 ] || fail "GET /nope answered $code, expected 404"
for line in \
    'ferry_posts_total{agent="initiator",peer="target"} 100' \
    'ferry_completions_total{agent="initiator",peer="target"} 100' \
    'ferry_failures_total{agent="initiator",peer="target"} 0' \
    'ferry_notifs_sent_total{agent="initiator",peer="target"} 1' \
    'ferry_bytes_total{agent="initiator",peer="target"} 3276800'; do
    grep -qxF "$line" "$dir/metrics" || fail "no line '$line' in:
$(cat "$dir/metrics")"
done
# Every completion is in one path's histogram: the counts add up to 100.
total=$(sed -n 's/^ferry_xfer_latency_seconds_count{agent="initiator",peer="target",path="[a-z_]*"} \([0-9]*\)$/\1/p' \
    "$dir/metrics" | awk '{n += $1} END {print n + 0}')
[ "$total" = 100 ] || fail "the latency histograms count $total transfers, expected 100"
echo "smoke_metrics: OK ($(grep -c '' "$dir/metrics") lines of metrics)"
