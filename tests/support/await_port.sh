# Sourced by the smoke scripts that start a target with --listen 0, which
# prints the port it got: await_port LOG PID NAME sets $port from LOG, or
# kills PID, prints LOG and exits 1 when no port shows within 10 s.
await_port() {
    port=""
    i=0
    while [ -z "$port" ] && [ $i -lt 200 ]; do
        port=$(sed -n 's/.*listening on port \([0-9][0-9]*\).*/\1/p' "$1")
        [ -n "$port" ] || sleep 0.05
        i=$((i + 1))
    done
    if [ -z "$port" ]; then
        kill "$2" 2>/dev/null || true
        echo "$3: the target printed no port:" >&2
        cat "$1" >&2
        exit 1
    fi
}
