#!/usr/bin/env bash
# Instruction counts under callgrind: figures a noisy, shared machine cannot disturb.
#
#   benches/icount.sh            count every micro workload (relay-icount --list) and
#                                compare with benches/icount-baseline.txt; exit 1 when
#                                one costs more than the tolerance (default 5 %) above it
#   benches/icount.sh --bless    rewrite the baseline with this run's counts
#   benches/icount.sh --e2e      user-space instructions per proxied request: the gateway
#                                and a bare nginx hop under callgrind, same mock (not gated);
#                                targets relay+sqlite and relay+postgres (a throwaway
#                                cluster unless DATABASE_URL is set) add usage logging
#
# Each figure is (count of 1 + N iterations - count of 1 iteration) / N, so start-up and
# set-up cancel out. Counts are user-space instructions only (no kernel, no waiting);
# they move with the compiler, so the baseline is blessed on the toolchain CI uses.
# Environment: ICOUNT_TOLERANCE=0.05 (fraction), ICOUNT_PROFILE=release,
# ICOUNT_TARGETS="relay nginx" (--e2e; also relay+sqlite, relay+postgres).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

mode=gate
case "${1:-}" in
    --bless) mode=bless ;;
    --e2e) mode=e2e ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    "") ;;
    *) echo "icount.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
esac
tolerance=${ICOUNT_TOLERANCE:-0.05}
profile=${ICOUNT_PROFILE:-release}
baseline="$root/benches/icount-baseline.txt"
say() { printf '==> %s\n' "$*" >&2; }

if ! command -v valgrind >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        say "installing valgrind (apt-get)"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind; } >&2
    else
        echo "icount.sh: valgrind is not installed (apt-get install valgrind)" >&2
        exit 1
    fi
fi

profile_flag=()
[ "$profile" = release ] && profile_flag=(--release)
bin="$root/target/$profile"
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# Instructions counted by callgrind for one command line.
count() {
    local log="$work/cg.$RANDOM.log"
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$@" >/dev/null 2>"$log" || {
        cat "$log" >&2
        return 1
    }
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$log" | tail -1
}

if [ "$mode" != e2e ]; then
    say "building relay-icount ($profile)"
    cargo build --locked "${profile_flag[@]}" -p relay-benches --bin relay-icount >&2
    declare -A base=()
    if [ -f "$baseline" ]; then
        while read -r name value _; do
            case "$name" in ''|'#'*) continue ;; esac
            base[$name]=$value
        done < "$baseline"
    fi
    out="$work/counts.txt"
    fail=0
    printf '%-32s %14s %14s %9s\n' workload "instr/iter" baseline change
    while IFS=$'\t' read -r name what; do
        n=2000
        case "$name" in sse_parse_*) n=20 ;; esac
        one=$(count "$bin/relay-icount" "$name" 1)
        many=$(count "$bin/relay-icount" "$name" $((n + 1)))
        per=$(( (many - one) / n ))
        printf '%s %s # %s\n' "$name" "$per" "$what" >> "$out"
        if [ -n "${base[$name]:-}" ]; then
            verdict=$(awk -v p="$per" -v b="${base[$name]}" -v t="$tolerance" 'BEGIN {
                c = (p - b) / b; printf "%+.1f%%", c * 100; if (c > t) print " REGRESSION"; }')
            case "$verdict" in *REGRESSION*) fail=1 ;; esac
        else
            verdict="(new)"
        fi
        printf '%-32s %14s %14s %s\n' "$name" "$per" "${base[$name]:-–}" "$verdict"
    done < <("$bin/relay-icount" --list)
    if [ "$mode" = bless ]; then
        {
            echo "# Instructions per iteration of each relay-icount workload (benches/icount.sh)."
            echo "# Rewritten by 'benches/icount.sh --bless'; $(rustc --version)."
            cat "$out"
        } > "$baseline"
        say "baseline written: $baseline"
        exit 0
    fi
    if [ "$fail" = 1 ]; then
        echo "icount.sh: a workload costs more than $(awk -v t="$tolerance" 'BEGIN{print t*100}') % over the baseline" >&2
        exit 1
    fi
    exit 0
fi

# --e2e: per-request instructions of the gateway and of nginx, each under callgrind.
say "building release binaries (relay-gateway, relay-mock, relay-load)"
cargo build --locked --release -p relay-gateway -p relay-mock -p relay-benches >&2
rel="$root/target/release"
port_mock=19180
port_target=19181
"$rel/relay-mock" --listen "127.0.0.1:$port_mock" --prerendered >"$work/mock.log" 2>&1 &
pids+=($!)
sleep 0.5

wait_port() {
    for _ in $(seq 1 600); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "icount.sh: nothing listens on $1" >&2
    return 1
}

# Runs target "$1" under callgrind, sends $2 requests, stops it; prints instructions.
target_count() {
    local kind=$1 n=$2 log="$work/$1.$2.log" url
    case "$kind" in
        relay|relay+sqlite|relay+postgres)
            local store=(--no-store)
            case "$kind" in
                # The embedded default: a fresh relay-data/gateway.db beside the config.
                relay+sqlite) store=(); rm -rf "$work/relay-data" ;;
                relay+postgres) store=(--database-url "$DATABASE_URL") ;;
            esac
            cat > "$work/gateway.toml" <<EOF
[server]
listen = "127.0.0.1:$port_target"
[[keys]]
name = "bench"
key = "rk-bench"
[[channels]]
id = "mock"
provider = "mock"
base_url = "http://127.0.0.1:$port_mock/v1"
allow_private_network = true
models = ["mock-model"]
EOF
            # Only relay+postgres names a database: relay-gateway reads DATABASE_URL, which
            # the throwaway PostgreSQL exports, and the others must not pick it up.
            env -u DATABASE_URL valgrind --tool=callgrind --callgrind-out-file=/dev/null \
                "$rel/relay-gateway" serve --config "$work/gateway.toml" --log-level warn "${store[@]}" \
                >/dev/null 2>"$log" &
            ;;
        nginx)
            # One process (no master), so callgrind sees the worker's work.
            sed -e "s|@LISTEN@|127.0.0.1:$port_target|; s|@UPSTREAM@|127.0.0.1:$port_mock|" \
                -e "s|@PREFIX@|$work|g; s|master_process on;|master_process off;|" \
                "$root/benches/nginx/nginx.conf.template" > "$work/nginx.conf"
            mkdir -p "$work/tmp"
            valgrind --tool=callgrind --callgrind-out-file=/dev/null \
                "$nginx_bin" -p "$work" -c "$work/nginx.conf" >/dev/null 2>"$log" &
            ;;
    esac
    local pid=$!
    wait_port "$port_target"
    "$rel/relay-load" -u "http://127.0.0.1:$port_target/v1/chat/completions" \
        -H "Authorization: Bearer rk-bench" -c 1 --warmup 0 -d 600 -n "$n" -q \
        --json "$work/load.json" >/dev/null
    kill -TERM "$pid"
    wait "$pid" || true
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$log" | tail -1
}

nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
case " ${ICOUNT_TARGETS:-} " in
    *" relay+postgres "*)
        # shellcheck source=../scripts/pg-throwaway
        . "$root/scripts/pg-throwaway"
        trap 'cleanup; declare -F pg_throwaway_stop >/dev/null && pg_throwaway_stop' EXIT
        [ -n "${DATABASE_URL:-}" ] || { echo "icount.sh: no PostgreSQL for relay+postgres" >&2; exit 1; }
        ;;
esac
printf '%-8s %18s\n' target "instr/request"
for kind in ${ICOUNT_TARGETS:-relay nginx}; do
    if [ "$kind" = nginx ] && [ ! -x "$nginx_bin" ]; then
        echo "nginx    (not installed)"
        continue
    fi
    a=$(target_count "$kind" 100)
    b=$(target_count "$kind" 1100)
    printf '%-8s %18s\n' "$kind" $(( (b - a) / 1000 ))
done
