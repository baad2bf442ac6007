#!/usr/bin/env bash
# Usage logging on vs off, end to end: the same gateway config served
#   off       relay-gateway serve --no-store       (usage only logged, no database)
#   sqlite    relay-gateway serve                  (the embedded default: a SQLite file)
#   postgres  relay-gateway serve --database-url   (a throwaway PostgreSQL, scripts/pg-throwaway)
# in front of relay-mock --prerendered, loaded by relay-load (closed loop) in interleaved
# rounds; then the usage rows each "on" run wrote are counted against the answers.
#
#   benches/usage-logging.sh [ROUNDS] [SECONDS]      (default 3 rounds of 10 s per load)
#   PIN=1 benches/usage-logging.sh ...               the gateway on CPU 0, the mock and the load
#                                                    generator on CPU 1, as relay-bench pins them:
#                                                    at c=32 the writer falls behind and rows go
#                                                    through the spill file, so the count checks
#                                                    that path too
# Prints a Markdown table (medians over rounds) and writes benches/results/usage-logging-STAMP.json.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
rounds=${1:-3}
secs=${2:-10}

cargo build --release --locked -p relay-gateway -p relay-mock -p relay-benches >&2
bin="$root/target/release"
unset DATABASE_URL
. scripts/pg-throwaway
pg_url=${DATABASE_URL:-}
# Only the postgres variant names the database; relay-gateway reads DATABASE_URL, so left
# exported it would make the sqlite variant (and its row count) Postgres's too.
unset DATABASE_URL

gw_cpu=()
load_cpu=()
if [ "${PIN:-0}" = 1 ]; then
    gw_cpu=(taskset -c 0)
    load_cpu=(taskset -c 1)
fi

work=$(mktemp -d /tmp/relay-usage-bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap 'cleanup; if declare -F pg_throwaway_stop >/dev/null; then pg_throwaway_stop; fi' EXIT

mock_port=19400
gw_port=19401
"${load_cpu[@]}" "$bin/relay-mock" --listen "127.0.0.1:$mock_port" --prerendered > "$work/mock.log" 2>&1 &
pids+=($!)
cat > "$work/gateway.toml" <<CONF
[server]
listen = "127.0.0.1:$gw_port"

[[keys]]
name = "bench"
key = "rk-bench"

[[channels]]
id = "mock"
provider = "mock"
base_url = "http://127.0.0.1:$mock_port/v1"
allow_private_network = true
models = ["mock-model"]
CONF

wait_up() {
    for _ in $(seq 1 100); do
        if curl -fsS "http://127.0.0.1:$gw_port/healthz" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "gateway did not start: $(tail -5 "$work/gw.log")" >&2
    return 1
}

rows() { # variant -> usage rows so far
    case "$1" in
        sqlite) "$bin/relay-gateway" usage --config "$work/gateway.toml" --since 1d --json | python3 -c 'import json,sys;print(json.load(sys.stdin)["total"]["requests"])' ;;
        postgres) "$bin/relay-gateway" usage --database-url "$pg_url" --since 1d --json | python3 -c 'import json,sys;print(json.load(sys.stdin)["total"]["requests"])' ;;
        *) echo 0 ;;
    esac
}

variants=(off sqlite)
[ -n "$pg_url" ] && variants+=(postgres)
results="$work/results.jsonl"
for round in $(seq 1 "$rounds"); do
    for v in "${variants[@]}"; do
        for c in 1 32; do
            before=$(rows "$v")
            case "$v" in
                off) args=(--no-store) ;;
                sqlite) args=() ;;
                postgres) args=(--database-url "$pg_url") ;;
            esac
            "${gw_cpu[@]}" "$bin/relay-gateway" serve --config "$work/gateway.toml" --log-level warn "${args[@]}" > "$work/gw.log" 2>&1 &
            gw=$!
            pids+=($gw)
            wait_up
            "${load_cpu[@]}" "$bin/relay-load" -u "http://127.0.0.1:$gw_port/v1/chat/completions" -H 'authorization: Bearer rk-bench' \
                -c "$c" -d "$secs" --warmup 2 --label "$v c=$c round $round" --json "$work/out.json" -q
            kill -TERM "$gw"; wait "$gw" 2>/dev/null || true
            after=$(rows "$v")
            python3 - "$work/out.json" "$v" "$c" "$round" "$before" "$after" >> "$results" <<'PY'
import json, sys
path, v, c, rnd, before, after = sys.argv[1:]
d = json.load(open(path))
r = d.get("results", d)
answers = d.get("completed_all", r.get("ok"))
print(json.dumps({"variant": v, "c": int(c), "round": int(rnd),
                  "rps": r["throughput_rps"], "p99_us": r["metrics"]["latency_us"]["p99"],
                  "p50_us": r["metrics"]["latency_us"]["p50"], "errors": r["errors"],
                  "answers": answers, "rows": int(after) - int(before)}))
PY
            tail -n1 "$results" >&2
        done
    done
done

mkdir -p benches/results
stamp=$(date -u +%Y%m%dT%H%M%SZ)
cp "$results" "benches/results/usage-logging-$stamp.jsonl"
python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(v, c, k):
    return statistics.median(r[k] for r in rows if r["variant"] == v and r["c"] == c)
variants = []
for r in rows:
    if r["variant"] not in variants:
        variants.append(r["variant"])
print("| variant | c | throughput rps | vs off | p50 us | p99 us | vs off | answers | usage rows |")
print("|---|---|---|---|---|---|---|---|---|")
for c in (1, 32):
    for v in variants:
        rps, p99 = med(v, c, "rps"), med(v, c, "p99_us")
        ans = sum(r["answers"] for r in rows if r["variant"] == v and r["c"] == c)
        got = sum(r["rows"] for r in rows if r["variant"] == v and r["c"] == c)
        print(f"| {v} | {c} | {rps:.0f} | {rps / med('off', c, 'rps'):.3f} | {med(v, c, 'p50_us'):.0f} | {p99:.0f} | {p99 / med('off', c, 'p99_us'):.3f} | {ans} | {got if v != 'off' else '-'} |")
PY
