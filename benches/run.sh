#!/usr/bin/env bash
# End-to-end benchmarks of Relay, side by side with direct-to-mock and a bare nginx
# hop (and optionally LiteLLM proxy and Portkey gateway), all in front of the same mock.
#
#   benches/run.sh                      every scenario (about 15-20 minutes on 2 cores)
#   benches/run.sh --smoke              a few seconds per scenario: proves the harness works
#   benches/run.sh --scenario overhead --scenario streaming
#   benches/run.sh --peers              also LiteLLM proxy 1.93.0 (PyPI) and Portkey 1.15.2 (npm)
#   benches/run.sh --smoke --debug      the CI smoke run: debug binaries (no release build)
#
# The plugins scenario needs plugins/dist (built here by scripts/build-plugins when
# missing); the usage-logging scenario starts a throwaway PostgreSQL (scripts/pg-throwaway,
# pinned to the mock's CPU) for its relay+postgres target.
#
# Every other flag goes to relay-bench (see `target/release/relay-bench --help`):
# --rounds N, --max-load F, --allow-busy, --no-pin, --port-base P.
# Results: benches/results/STAMP.json and STAMP.md (gitignored).
# Exit status: 0 when the harness worked (whatever the numbers), 1 when it is broken,
# 2 when the machine was too busy to start (see --max-load / --allow-busy).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

LITELLM_VERSION=1.93.0   # pinned; never 1.107.0 (a compromised release)
PORTKEY_VERSION=1.15.2

smoke=0
peers=0
profile=release
args=()
scenarios=()
nopin=0
prev=""
for a in "$@"; do
    case "$a" in
        --smoke) smoke=1; args+=("$a") ;;
        --peers) peers=1; args+=("$a") ;;
        --debug) profile=debug ;;
        --no-pin) nopin=1; args+=("$a") ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) args+=("$a") ;;
    esac
    [ "$prev" = --scenario ] && scenarios+=("$a")
    prev=$a
done
wants() { # scenario -> whether this run includes it
    [ ${#scenarios[@]} -eq 0 ] && return 0
    local s; for s in "${scenarios[@]}"; do [ "$s" = "$1" ] && return 0; done
    return 1
}

say() { printf '==> %s\n' "$*" >&2; }

if [ "$profile" = release ]; then
    say "building release binaries (relay-gateway, relay-mock, relay-load, relay-bench)"
    cargo build --locked --release -p relay-benches -p relay-gateway -p relay-mock >&2
else
    say "building debug binaries (numbers from a debug build mean nothing; smoke only)"
    cargo build --locked -p relay-benches -p relay-gateway -p relay-mock >&2
fi
args+=(--bin-dir "$root/target/$profile")

# The floor: Debian's nginx. Installed when missing and apt is usable; otherwise the
# nginx target is skipped, loudly.
nginx_bin=$(command -v nginx || true)
[ -z "$nginx_bin" ] && [ -x /usr/sbin/nginx ] && nginx_bin=/usr/sbin/nginx
if [ -z "$nginx_bin" ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        say "installing nginx (apt-get)"
        if { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx; } >&2; then
            # The package may start a service; this harness runs its own instance.
            { service nginx stop || nginx -s stop; } >/dev/null 2>&1 || true
            nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
        fi
    fi
fi
if [ -z "$nginx_bin" ] || [ ! -x "$nginx_bin" ]; then
    printf '\n!!!!!!!!\n!!! nginx is not installed and could not be (no apt-get or not root):\n!!! the nginx floor is SKIPPED; ratios to nginx will be missing.\n!!!!!!!!\n\n' >&2
    args+=(--no-nginx)
fi

if [ "$peers" = 1 ]; then
    peers_dir="$root/benches/.peers"
    mkdir -p "$peers_dir"
    venv="$peers_dir/litellm-venv"
    if [ ! -x "$venv/bin/litellm" ] || ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('litellm') != '$LITELLM_VERSION')" 2>/dev/null; then
        say "installing LiteLLM proxy $LITELLM_VERSION into $venv"
        if ! { python3 -m venv "$venv" && "$venv/bin/pip" install --disable-pip-version-check -q "litellm[proxy]==$LITELLM_VERSION"; } >&2; then
            say "LiteLLM install FAILED: the run continues without it (named in the summary)"
        fi
    fi
    pk="$peers_dir/portkey"
    if [ ! -f "$pk/node_modules/@portkey-ai/gateway/package.json" ]; then
        say "installing Portkey gateway $PORTKEY_VERSION into $pk"
        mkdir -p "$pk"
        if ! { command -v npm >/dev/null && (cd "$pk" && npm install --no-audit --no-fund --silent "@portkey-ai/gateway@$PORTKEY_VERSION"); } >&2; then
            say "Portkey install FAILED: the run continues without it (named in the summary)"
        fi
    fi
fi

if wants plugins && [ ! -f "$root/plugins/dist/noop.wasm" ]; then
    say "building the example plugins (scripts/build-plugins) for the plugins scenario"
    bash "$root/scripts/build-plugins" >&2
fi
if wants usage-logging; then
    unset DATABASE_URL
    # shellcheck source=../scripts/pg-throwaway
    . "$root/scripts/pg-throwaway"
    if [ -n "${DATABASE_URL:-}" ]; then
        args+=(--pg-url "$DATABASE_URL")
        # The database plays a separate host: keep it off the gateway's CPU 0. (It
        # shares CPU 1 with the mock and the load generator; SCHED_IDLE there was tried
        # and measured worse, see BENCHMARKS.md "Usage logging".)
        placement="unpinned, normal priority"
        if [ "$nopin" = 0 ] && [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
            pm=$(head -n1 "$RELAY_TEST_PG_DATA/postmaster.pid")
            placement="CPU 1 (with the mock and the load generator), normal priority"
            for p in "$pm" $(pgrep -P "$pm"); do taskset -acp 1 "$p" >/dev/null 2>&1 || true; done
        fi
        args+=(--pg-placement "$placement")
    fi
fi

[ "$smoke" = 1 ] && say "smoke run: a few seconds per scenario; the numbers are not for publication"
# More descriptors for thousands of connections.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
status=0
"$root/target/$profile/relay-bench" --root "$root" "${args[@]}" || status=$?
exit "$status"
