#!/usr/bin/env bash
# Portico load benchmark: Portico vs nginx vs HAProxy (plus the backend directly),
# same route, same machine, same run; Portico with plugin chains of 0, 1 and 4 plugins
# (scenario 6); and Portico with the first-party plugins (scenario 7). Writes docs/benchmarks.md.
#
#   bash bench/run.sh                      # everything, defaults (~19 min after the builds)
#   PROXIES="nginx haproxy" bash bench/run.sh   # without Portico
#   SCENARIOS="1 4" DURATION=5s bash bench/run.sh
#   SCENARIOS=6 bash bench/run.sh          # plugin chains only; keeps the rest of the report
#   SCENARIOS=7 bash bench/run.sh          # first-party plugins only (~10 min)
#
# Method and knobs: bench/README.md. Runs as root on Debian 12 (apt-get installs the tools).
# Traffic goes to 127.0.0.1 only. Everything it starts is stopped on exit.
set -Eeuo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)

# ---------------------------------------------------------------------------------------------
# Knobs (environment). The ones the caller set are echoed into the report's command line.
# ---------------------------------------------------------------------------------------------
KNOBS=(DURATION WARMUP UPSTREAM_DURATION CONNECTIONS IDLE_CONNS HANDSHAKE_CLIENTS SCENARIOS
       PROXIES DIRECT SKIP_BUILD SKIP_INSTALL PORTICO_BIN TLS_KEY FORWARD_HEADERS OUTPUT
       KEEP_TMP PROXY_CPU LOAD_CPU PLUGIN_ROUNDS PLUGIN_DURATION S1_ROUNDS S3_ROUNDS
       CRITERION CRITERION_ARGS)
SET_KNOBS=()
for k in "${KNOBS[@]}"; do
    if [[ -n ${!k+x} ]]; then SET_KNOBS+=("$k=${!k@Q}"); fi
done

DURATION=${DURATION:-10s}             # measured run of scenarios 1, 2, 3
PLUGIN_DURATION=${PLUGIN_DURATION:-5s}  # each run of scenarios 6 and 7 (in pairs, see chain_rounds)
WARMUP=${WARMUP:-2s}                  # unmeasured run before scenarios 1, 2; per chain in 6, 7
UPSTREAM_DURATION=${UPSTREAM_DURATION:-5s}  # each of scenario 4's runs (cold, warm pool)
CONNECTIONS=${CONNECTIONS:-50}        # wrk connections (scenarios 1, 4, 6 and 7)
IDLE_CONNS=${IDLE_CONNS:-10000}       # scenario 5
HANDSHAKE_CLIENTS=${HANDSHAKE_CLIENTS:-4}   # parallel `openssl s_time` processes (scenario 3)
SCENARIOS=${SCENARIOS:-"1 2 3 4 5 6 7"}
PLUGIN_ROUNDS=${PLUGIN_ROUNDS:-5}     # scenarios 6 and 7: rounds (each: every chain paired with a baseline run)
S1_ROUNDS=${S1_ROUNDS:-3}             # scenario 1: rounds over the targets (median round kept)
S3_ROUNDS=${S3_ROUNDS:-3}             # scenario 3: rounds over the proxies (median round kept)
CRITERION=${CRITERION:-1}             # scenario 7: 1 = also run the criterion bench first_party
CRITERION_ARGS=${CRITERION_ARGS:-"--warm-up-time 1 --measurement-time 3"}   # its CLI options
PROXIES=${PROXIES:-"portico nginx haproxy"}
DIRECT=${DIRECT:-1}                   # also measure load generator -> backend directly
SKIP_BUILD=${SKIP_BUILD:-0}
SKIP_INSTALL=${SKIP_INSTALL:-0}
PORTICO_BIN=${PORTICO_BIN:-}
TLS_KEY=${TLS_KEY:-ec}                # ec (P-256) or rsa (2048)
FORWARD_HEADERS=${FORWARD_HEADERS:-0} # 1: nginx/haproxy also add X-Forwarded-*/X-Request-ID
OUTPUT=${OUTPUT:-$ROOT/docs/benchmarks.md}
KEEP_TMP=${KEEP_TMP:-0}
PROXY_CPU=${PROXY_CPU:-0}             # core of the proxy under test
LOAD_CPU=${LOAD_CPU:-1}               # core of the backend and the load generators
LOAD=(taskset -c "$LOAD_CPU")         # prefix for everything that runs on the load core

# Fixed ports on 127.0.0.1.
BACKEND_PORT=18000 BACKEND_TLS_PORT=18001 BACKEND_STATUS_PORT=18009
declare -A PLAIN_PORT=([portico]=18080 [nginx]=18180 [haproxy]=18280 [direct]=$BACKEND_PORT)
declare -A TLS_PORT=([portico]=18443 [nginx]=18543 [haproxy]=18643 [direct]=$BACKEND_TLS_PORT)
PORTICO_ADMIN=19901
# Scenario 6: one Portico, one listener per plugin chain (same route), its own admin port.
PLUGIN_VARIANTS=(none p1 p4 h0 h5)
declare -A PLUGIN_PORT=([none]=18081 [p1]=18082 [p4]=18083 [h0]=18084 [h5]=18085)
declare -A PLUGIN_CHAIN=([none]="" [p1]="rw-a" [p4]="rw-a, rw-b, rw-c, rw-d" [h0]="rw-h0" [h5]="rw-h5")
declare -A PLUGIN_LABEL=([none]="0 plugins (baseline)" [p1]="1 plugin (rw, 2 hostcalls)"
    [p4]="4 plugins (4 × rw, 2 hostcalls each)" [h0]="1 plugin (rw, 0 hostcalls)"
    [h5]="1 plugin (rw, 5 hostcalls)")
# What the backend's /rw-echo answers through each chain: the headers rw wrote upstream.
declare -A PLUGIN_ECHO=([none]="rw-1= rw-3=" [p1]="rw-1=1 rw-3=" [p4]="rw-1=1 rw-3="
    [h0]="rw-1= rw-3=" [h5]="rw-1=1 rw-3=1")
# The request headers wrk adds per chain, one a line: the header rw reads, on every chain.
declare -A PLUGIN_HEADERS=()
# shellcheck disable=SC2034  # (chain_rounds reads it by name)
for v in "${PLUGIN_VARIANTS[@]}"; do PLUGIN_HEADERS[$v]="x-rw-in: 1"; done
PLUGINS_ADMIN=19902
RW_WASM=$ROOT/target/test-plugins/wasm32-wasip1/release/test_rw.wasm
# Scenario 7: the first-party plugins (plugins/, built by scripts/build-plugins.sh into
# target/plugins/), one Portico, one listener per chain (same route), its own admin port. The
# plugin entries are in start_firstparty; a single-plugin chain's entry has the chain's name.
FP_VARIANTS=(none jwt-hs256-warm jwt-rs256-warm jwt-es256-warm jwt-hs256-cold jwt-rs256-cold
    jwt-es256-cold rate-limit auth-api-key header-rewrite chain4)
declare -A FP_PORT=([none]=18090 [jwt-hs256-warm]=18091 [jwt-rs256-warm]=18092
    [jwt-es256-warm]=18093 [jwt-hs256-cold]=18094 [jwt-rs256-cold]=18095 [jwt-es256-cold]=18096
    [rate-limit]=18097 [auth-api-key]=18098 [header-rewrite]=18099 [chain4]=18100)
declare -A FP_CHAIN=([none]="" [chain4]="c4-jwt, c4-rate-limit, c4-auth, c4-header-rewrite")
for v in "${FP_VARIANTS[@]}"; do [[ -n ${FP_CHAIN[$v]+x} ]] || FP_CHAIN[$v]=$v; done
declare -A FP_LABEL=([none]="0 plugins (baseline)"
    [jwt-hs256-warm]="jwt HS256, warm (cached)" [jwt-rs256-warm]="jwt RS256, warm (cached)"
    [jwt-es256-warm]="jwt ES256, warm (cached)" [jwt-hs256-cold]="jwt HS256, cold (no cache)"
    [jwt-rs256-cold]="jwt RS256, cold (no cache)" [jwt-es256-cold]="jwt ES256, cold (no cache)"
    [rate-limit]="rate-limit" [auth-api-key]="auth api_key" [header-rewrite]="header-rewrite"
    [chain4]="chain of 4 (jwt RS256 warm + rate-limit + auth api_key + header-rewrite)")
# What a chain runs, for the sanity checks: jwt, rl (rate-limit), key (auth api_key),
# hr (header-rewrite); and the rate-limit entry whose counter must move.
declare -A FP_KINDS=([none]="" [rate-limit]="rl" [auth-api-key]="key" [header-rewrite]="hr"
    [chain4]="jwt rl key hr")
for v in "${FP_VARIANTS[@]}"; do [[ $v != jwt-* ]] || FP_KINDS[$v]=jwt; done
declare -A FP_RL_ENTRY=([rate-limit]=rate-limit [chain4]=c4-rate-limit)
# The token in each chain's Authorization header: its own algorithm's on the single jwt chains,
# RS256 on every other chain (the baseline included, so it carries what chain4 carries).
declare -A FP_ALG=()
for v in "${FP_VARIANTS[@]}"; do
    case $v in jwt-hs256-*) FP_ALG[$v]=HS256 ;; jwt-es256-*) FP_ALG[$v]=ES256 ;; *) FP_ALG[$v]=RS256 ;; esac
done
unset v
FP_MODULES=(jwt rate-limit auth header-rewrite)
FP_WASM_DIR=$ROOT/target/plugins
FP_API_KEY=bench-key-0123456789       # auth's one key (as in bench/micro/first_party.rs)
FP_ADMIN=19903
BENCH_TOKENS=$ROOT/target/release/examples/bench_tokens   # proxy/examples/bench_tokens.rs
declare -A FP_TOKEN=() FP_HEADERS=()  # set by fp_tokens: per algorithm; per chain (wrk's -H)
FP_JWKS="" FP_CRITERION_EXE=""
# The criterion cases of bench/micro/first_party.rs (group "first-party plugins") that scenario 7
# runs for the in-process and native numbers.
FP_CRITERION_CASES=("no plugins" "jwt HS256 cold" "jwt RS256 cold" "jwt ES256 cold"
    "native HS256" "native RS256" "native ES256" "chain of 4 (warm)")
FP_CRITERION_FILTER='^first-party plugins/(no plugins|jwt (HS|RS|ES)256 cold|native (HS|RS|ES)256|chain of 4 \(warm\))$'

declare -A R=()        # results: R[scenario.target.metric]=value
declare -A NOTES=()    # NOTES[target]="problems seen"
declare -A NOISY=()    # NOISY[target]="s1 23%, ...": runs where other processes took CPU
NOISE_PCT=10           # above this share of a core taken by other processes a run is noisy
declare -A VERSIONS=()
declare -A TARGET_PID=()
STARTED_PIDS=()        # every process this script started (killed on exit)
TMP=""
POLICY_RC=/usr/sbin/policy-rc.d ADDED_POLICY=0   # see install_deps
CLK_TCK=$(getconf CLK_TCK)

# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------
log()  { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die()  { log "ERROR: $*"; exit 1; }
note() { NOTES[$1]="${NOTES[$1]:-}${NOTES[$1]:+; }$2"; log "$1: $2"; }
want() { [[ " $SCENARIOS " == *" $1 "* ]]; }
want_any() { local s; for s in "$@"; do want "$s" && return 0; done; return 1; }
with_portico() { [[ " $PROXIES " == *" portico "* ]]; }
calc() { awk "BEGIN { printf \"$1\", ($2) }"; }         # calc FORMAT EXPR
add() { R[$1]=$(( ${R[$1]:-0} + $2 )); }               # add KEY N: R[KEY] += N
now_ns() { date +%s%N; }
secs_of() {                                           # 10s / 2m / 500ms / 7 -> seconds (int, >=1)
    local d=$1
    case $d in
        *ms) echo $(( ${d%ms} / 1000 > 0 ? ${d%ms} / 1000 : 1 )) ;;
        *s)  echo "${d%s}" ;;
        *m)  echo $(( ${d%m} * 60 )) ;;
        *)   echo "$d" ;;
    esac
}

trap 'log "failed at line $LINENO: $BASH_COMMAND"' ERR
trap cleanup EXIT
trap 'exit 130' INT TERM HUP   # go through cleanup

# A process and all its descendants (nginx: master + workers).
tree_pids() {
    local root=$1
    [[ -d /proc/$root ]] || return 0
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v root="$root" '
        { pid = $1; sub(/^.*\) /, ""); parent[pid] = $2 }   # after "pid (comm) ": state ppid ...
        END {
            keep[root] = 1; changed = 1
            while (changed) {
                changed = 0
                for (pid in parent)
                    if (!(pid in keep) && (parent[pid] in keep)) { keep[pid] = 1; changed = 1 }
            }
            for (pid in keep) print pid
        }'
}

# utime+stime (clock ticks) summed over the given pids; /proc/PID/stat covers all threads.
cpu_ticks() {
    local total=0 p stat
    local -a f
    for p in "$@"; do
        stat=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        read -ra f <<<"${stat##*) }"
        total=$(( total + f[11] + f[12] ))
    done
    echo "$total"
}

mem_kb() {   # mem_kb FIELD PIDS...: sum of VmRSS (status) or Pss (smaps_rollup) in kB
    local field=$1 p v total=0
    shift
    for p in "$@"; do
        if [[ $field == Pss ]]; then
            v=$(awk '/^Pss:/ { print $2 }' "/proc/$p/smaps_rollup" 2>/dev/null || true)
        else
            v=$(awk -v f="$field:" '$1 == f { print $2 }' "/proc/$p/status" 2>/dev/null || true)
        fi
        total=$(( total + ${v:-0} ))
    done
    echo "$total"
}

target_pids() { [[ -n ${TARGET_PID[$1]:-} ]] && tree_pids "${TARGET_PID[$1]}"; return 0; }
alive() { [[ -n ${TARGET_PID[$1]:-} ]] && kill -0 "${TARGET_PID[$1]}" 2>/dev/null; }

# Busy and total ticks of one core (core_ticks 0) or of all (core_ticks "") from /proc/stat.
# Busy includes irq/softirq (loopback packet processing), which is charged to whatever process
# was running unless the kernel has IRQ time accounting.
core_ticks() {
    awk -v c="cpu$1" '$1 == c { b = $2 + $3 + $4 + $7 + $8 + $9; print b, b + $5 + $6 }' /proc/stat
}
# utime+stime of this shell's waited-for children: the load generators of a run.
children_ticks() {
    local stat
    local -a f
    stat=$(cat "/proc/$$/stat")
    read -ra f <<<"${stat##*) }"
    echo $(( f[13] + f[14] ))
}
backend_ticks() {
    local -a pids
    mapfile -t pids < <(tree_pids "$BACKEND_PID")
    cpu_ticks "${pids[@]}"
}

# CPU accounting around one load run: cpu_begin T; <load>; cpu_end T KEY
cpu_begin() {
    local -a pids
    mapfile -t pids < <(target_pids "$1")
    LOAD0=$(core_ticks "$LOAD_CPU") ALL0=$(core_ticks "")
    KNOWN0=$(( $(backend_ticks) + $(children_ticks) ))
    CPU0=$(cpu_ticks "${pids[@]}") WALL0=$(now_ns)
}
cpu_end() {   # sets R[KEY.cpu_ticks], R[KEY.cpu_pct], R[KEY.wall_s], R[KEY.load_core_pct], R[KEY.other_pct]
    local t=$1 key=$2 ticks wall known
    local -a pids l0 l1 a0 a1
    mapfile -t pids < <(target_pids "$t")
    ticks=$(( $(cpu_ticks "${pids[@]}") - CPU0 ))
    wall=$(calc %.3f "$(( $(now_ns) - WALL0 )) / 1e9")
    known=$(( $(backend_ticks) + $(children_ticks) - KNOWN0 + ticks ))
    read -ra l0 <<<"$LOAD0"; read -ra a0 <<<"$ALL0"
    read -ra l1 < <(core_ticks "$LOAD_CPU"); read -ra a1 < <(core_ticks "")
    R[$key.wall_s]=$wall
    if [[ $t != direct ]]; then   # direct has no proxy: no CPU columns
        R[$key.cpu_ticks]=$ticks
        R[$key.cpu_pct]=$(calc %.0f "$ticks / $CLK_TCK / $wall * 100")
    fi
    # Is the layout doing what it should? How busy the load core was, and how much CPU went to
    # anything but the proxy, the backend and the load generator (a build next to the
    # benchmark, say), in % of one core.
    R[$key.load_core_pct]=$(calc %.0f "100 * (${l1[0]} - ${l0[0]}) / (${l1[1]} - ${l0[1]} + 0.001)")
    R[$key.other_pct]=$(calc %.0f "(f = 100 * (${a1[0]} - ${a0[0]} - $known) / $CLK_TCK / $wall) > 0 ? f : 0")
    local label=${key/.$t/}   # "s1", "s4.cold"
    if (( R[$key.other_pct] > NOISE_PCT )); then
        NOISY[$t]="${NOISY[$t]:-}${NOISY[$t]:+, }$label ${R[$key.other_pct]}%"
        log "$t: $label: other processes took ${R[$key.other_pct]}% of a core: noisy run"
    fi
}
cpu_us_per() {   # cpu_us_per KEY COUNT -> µs of proxy CPU per unit
    local ticks=${R[$1.cpu_ticks]:-} n=$2
    [[ -n $ticks && ${n:-0} -gt 0 ]] || return 0
    calc %.1f "$ticks * 1e6 / $CLK_TCK / $n"
}

# Poll a command until it succeeds (readiness; no fixed sleeps).
wait_until() {   # wait_until SECONDS DESCRIPTION CMD...
    local deadline=$(( $(date +%s) + $1 )) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        if (( $(date +%s) >= deadline )); then log "timed out waiting for $what"; return 1; fi
        sleep 0.1
    done
}

http_ok() { curl -sf --max-time 2 -o /dev/null "$1"; }

start_bg() {   # start_bg LOGBASE CMD... : output to LOGBASE.log; sets BG_PID
    local logbase=$1
    shift
    "$@" >"$logbase.log" 2>&1 &
    BG_PID=$!
    STARTED_PIDS+=("$BG_PID")
}
# shellcheck disable=SC2317  # (the trap calls it)
stop_pid() {   # TERM the process tree, then KILL what is left
    local pid=$1 p i
    local -a tree
    mapfile -t tree < <(tree_pids "$pid")
    ((${#tree[@]})) || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    for p in "${tree[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait "$pid" 2>/dev/null || true
}

remove_policy() { if [[ $ADDED_POLICY == 1 ]]; then rm -f "$POLICY_RC"; ADDED_POLICY=0; fi; }

cleanup() {
    local rc=$? pid
    trap - ERR
    remove_policy
    for pid in "${STARTED_PIDS[@]}"; do stop_pid "$pid"; done
    if [[ -n $TMP && -d $TMP ]]; then
        if [[ $KEEP_TMP == 1 || $rc -ne 0 ]]; then
            log "raw outputs kept in $TMP"
        else
            rm -rf "$TMP"
        fi
    fi
    exit "$rc"
}

# ---------------------------------------------------------------------------------------------
# Setup: packages, build, limits, certificates
# ---------------------------------------------------------------------------------------------
install_deps() {
    local tools=(nginx haproxy wrk h2load openssl curl python3 taskset awk)
    local missing=() t
    for t in "${tools[@]}"; do command -v "$t" >/dev/null || missing+=("$t"); done
    if [[ $SKIP_INSTALL == 1 || ${#missing[@]} -eq 0 ]]; then return 0; fi
    [[ $(id -u) == 0 ]] || die "missing ${missing[*]}; run as root so apt-get can install them"
    log "installing packages (missing: ${missing[*]})"
    # Debian starts nginx/haproxy on install; a policy-rc.d that says 101 stops that. We never use
    # the system services (our instances have their own config, pid file and ports), so an
    # already running system nginx/haproxy does not matter either.
    if [[ ! -e $POLICY_RC ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$POLICY_RC" && chmod +x "$POLICY_RC" && ADDED_POLICY=1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        nginx haproxy wrk nghttp2-client openssl curl python3 util-linux procps >/dev/null
    remove_policy
}

resolve_portico() {
    [[ " $PROXIES " == *" portico "* ]] || return 0
    if [[ -n $PORTICO_BIN ]]; then
        [[ -x $PORTICO_BIN ]] || die "PORTICO_BIN=$PORTICO_BIN is not executable"
        return 0
    fi
    PORTICO_BIN=$ROOT/target/release/portico
    if [[ $SKIP_BUILD != 1 ]]; then
        log "building portico (cargo build --release -p portico)"
        (cd "$ROOT" && cargo build --release -p portico) ||
            die "cargo build failed (PROXIES=\"nginx haproxy\" runs without Portico)"
    fi
    [[ -x $PORTICO_BIN ]] || die "$PORTICO_BIN not found (build failed or SKIP_BUILD=1 without a build)"
}

# Scenario 6's plugin, tests/plugins/rw, built with the rest of the corpus (wasm32-wasip1).
build_plugins() {
    want 6 && with_portico || return 0
    if [[ $SKIP_BUILD != 1 ]]; then
        log "building the test plugins (scripts/build-test-plugins.sh)"
        bash "$ROOT/scripts/build-test-plugins.sh" >"$TMP/build-test-plugins.log" 2>&1 ||
            die "scripts/build-test-plugins.sh failed: $(tail -n5 "$TMP/build-test-plugins.log")"
    fi
    [[ -f $RW_WASM ]] || die "$RW_WASM not found (SKIP_BUILD=1 without bash scripts/build-test-plugins.sh?)"
}

# Scenario 7's plugins (plugins/, scripts/build-plugins.sh) and the program that mints its
# tokens (proxy/examples/bench_tokens.rs); the criterion bench is compiled here too (its
# executable in FP_CRITERION_EXE), so that no build runs next to the load or inside the
# measurement, and what is measured is what was built now.
build_firstparty() {
    local m
    want 7 && with_portico || return 0
    if [[ $SKIP_BUILD != 1 ]]; then
        log "building the first-party plugins (scripts/build-plugins.sh)"
        bash "$ROOT/scripts/build-plugins.sh" >"$TMP/build-plugins.log" 2>&1 ||
            die "scripts/build-plugins.sh failed: $(tail -n5 "$TMP/build-plugins.log")"
        log "building the token minter (cargo build --release -p portico --example bench_tokens)"
        (cd "$ROOT" && cargo build --release -p portico --example bench_tokens) \
            >"$TMP/build-bench-tokens.log" 2>&1 ||
            die "building bench_tokens failed: $(tail -n5 "$TMP/build-bench-tokens.log")"
    fi
    if [[ $CRITERION == 1 ]]; then
        # Even with SKIP_BUILD=1: cargo names the executable (and builds it if out of date).
        log "building the criterion bench (cargo bench -p portico --bench first_party --no-run)"
        FP_CRITERION_EXE=$(cd "$ROOT" &&
            cargo bench -p portico --bench first_party --no-run --message-format=json 2>"$TMP/build-criterion.log" |
            python3 -c 'import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "first_party" and m.get("executable"):
        print(m["executable"])') ||
            die "building the criterion bench failed: $(tail -n5 "$TMP/build-criterion.log")"
        [[ -x $FP_CRITERION_EXE ]] ||
            die "cargo bench --no-run named no executable for first_party: $(tail -n5 "$TMP/build-criterion.log")"
    fi
    for m in "${FP_MODULES[@]}"; do
        [[ -f $FP_WASM_DIR/$m.wasm ]] ||
            die "$FP_WASM_DIR/$m.wasm not found (SKIP_BUILD=1 without bash scripts/build-plugins.sh?)"
    done
    [[ -x $BENCH_TOKENS ]] ||
        die "$BENCH_TOKENS not found (SKIP_BUILD=1 without cargo build --release -p portico --example bench_tokens?)"
}

# Is anything listening on 127.0.0.1:PORT (or 0.0.0.0:PORT)? Reads /proc, needs no ss/netstat.
port_busy() {
    local hex
    hex=$(printf '%04X' "$1")
    awk -v p=":$hex" '$4 == "0A" && ($2 == "0100007F" p || $2 == "00000000" p) { found = 1 }
        END { exit !found }' /proc/net/tcp
}

check_ports() {   # the ports of this run's scenarios
    local p t busy=()
    local -a ports=("$BACKEND_PORT" "$BACKEND_TLS_PORT" "$BACKEND_STATUS_PORT")
    if want_any 1 2 3 4 5; then
        for t in $PROXIES; do ports+=("${PLAIN_PORT[$t]}" "${TLS_PORT[$t]}"); done
        if with_portico; then ports+=("$PORTICO_ADMIN"); fi
    fi
    if want 6 && with_portico; then ports+=("$PLUGINS_ADMIN" "${PLUGIN_PORT[@]}"); fi
    if want 7 && with_portico; then ports+=("$FP_ADMIN" "${FP_PORT[@]}"); fi
    for p in "${ports[@]}"; do
        if port_busy "$p"; then busy+=("$p"); fi
    done
    ((${#busy[@]} == 0)) || die "ports already in use on 127.0.0.1: ${busy[*]} (a previous run still going?)"
}

raise_fd_limit() {
    ulimit -n 1048576 2>/dev/null || ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
    NOFILE=$(ulimit -n)
    if (( IDLE_CONNS + 500 > NOFILE )); then
        log "open-file limit is $NOFILE: scenario 5 uses $(( NOFILE - 500 )) connections, not $IDLE_CONNS"
        IDLE_CONNS=$(( NOFILE - 500 ))
    fi
}

make_certs() {
    # In a directory of their own: Portico watches the directories of the files it uses, and
    # s_time's progress output in $TMP would wake its watcher on every handshake.
    mkdir -p "$TMP/tls"
    local keyopt=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1)
    [[ $TLS_KEY == rsa ]] && keyopt=(-newkey rsa:2048)
    openssl req -x509 "${keyopt[@]}" -nodes -days 7 -subj /CN=localhost \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout "$TMP/tls/bench.key" -out "$TMP/tls/bench.crt" 2>/dev/null
    cat "$TMP/tls/bench.crt" "$TMP/tls/bench.key" >"$TMP/tls/bench.pem"   # HAProxy wants one file
}

collect_versions() {
    VERSIONS[kernel]=$(uname -r)
    VERSIONS[nginx]=$(nginx -v 2>&1 | sed 's/^nginx version: //')
    VERSIONS[haproxy]=$(haproxy -v 2>/dev/null | head -n1 | awk '{ print $3, $4 }' || true)
    VERSIONS[wrk]=$( (wrk -v 2>&1 || true) | head -n1 | awk '{ print $2 }')
    VERSIONS[h2load]=$( (h2load --version 2>&1 || true) | head -n1)
    VERSIONS[openssl]=$(openssl version)
    VERSIONS[python3]=$(python3 --version 2>&1)
    VERSIONS[curl]=$(curl --version | head -n1 | awk '{ print $2 }')
    if [[ " $PROXIES " == *" portico "* ]]; then
        VERSIONS[portico]=$("$PORTICO_BIN" --version 2>&1 | head -n1 || true)
    fi
}

# ---------------------------------------------------------------------------------------------
# The backend: nginx on CPU 1, "hello\n" with long keep-alive, stub_status for accept counts
# ---------------------------------------------------------------------------------------------
# Main-context lines shared by both nginx instances. nginx allocates and touches its connection
# table up front, so worker_connections (sized for scenario 5) is part of its idle RSS.
nginx_common() {   # nginx_common DIR
    local dir=$1
    mkdir -p "$dir/tmp"
    cat <<EOF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
worker_rlimit_nofile $NOFILE;
events { worker_connections $(( IDLE_CONNS + 1000 )); }
EOF
}
nginx_http_common() {
    local dir=$1
    cat <<EOF
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    default_type text/plain;
    keepalive_timeout 300s;
    keepalive_requests 1000000000;
EOF
}

start_backend() {
    local dir=$TMP/backend
    mkdir -p "$dir"
    {
        nginx_common "$dir"
        echo "http {"
        nginx_http_common "$dir"
        cat <<EOF
    server {
        listen 127.0.0.1:$BACKEND_PORT backlog=4096;
        listen 127.0.0.1:$BACKEND_TLS_PORT ssl http2 backlog=4096;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_certificate $TMP/tls/bench.crt;
        ssl_certificate_key $TMP/tls/bench.key;
        location / { return 200 "hello\n"; }
        # Scenario 6's sanity check: which headers the rw plugins wrote on the way up.
        location = /rw-echo { return 200 "rw-1=\$http_x_rw_1 rw-3=\$http_x_rw_3\n"; }
        # Scenario 7's: what auth and header-rewrite changed on the way up.
        location = /fp-echo {
            return 200 "x-request-host=\$http_x_request_host x-debug=\$http_x_debug x-api-key=\$http_x_api_key x-api-key-name=\$http_x_api_key_name\n";
        }
    }
    server {
        listen 127.0.0.1:$BACKEND_STATUS_PORT;
        location / { stub_status; }
    }
}
EOF
    } >"$dir/nginx.conf"
    start_bg "$dir/nginx" "${LOAD[@]}" nginx -e stderr -p "$dir" -c "$dir/nginx.conf"
    BACKEND_PID=$BG_PID
    wait_until 10 "backend nginx" http_ok "http://127.0.0.1:$BACKEND_PORT/" ||
        die "backend nginx did not start: $(tail -n5 "$dir/nginx.log")"
}

backend_counters() {   # "accepts requests" from stub_status (this query counts itself once)
    curl -sf --max-time 2 "http://127.0.0.1:$BACKEND_STATUS_PORT/" | awk 'NR == 3 { print $1, $3 }'
}

# ---------------------------------------------------------------------------------------------
# Proxies under test: one worker each, pinned to CPU 0, same single route to the backend
# ---------------------------------------------------------------------------------------------
start_portico() {
    local dir=$TMP/portico
    mkdir -p "$dir/config"   # the configuration alone in its directory, which Portico watches
    cat >"$dir/config/portico.yaml" <<EOF
listeners:
  - name: web
    address: "127.0.0.1:${PLAIN_PORT[portico]}"
  - name: websecure
    address: "127.0.0.1:${TLS_PORT[portico]}"
    tls:
      certificates:
        - { cert: $TMP/tls/bench.crt, key: $TMP/tls/bench.key }
admin:
  address: "127.0.0.1:$PORTICO_ADMIN"
access_log: false
upstreams:
  backend:
    endpoints: ["127.0.0.1:$BACKEND_PORT"]
routes:
  - name: all
    paths: [{ type: Prefix, value: / }]
    upstream: backend
EOF
    start_bg "$dir/portico" env PORTICO_WORKERS=1 RUST_LOG="${RUST_LOG:-warn}" \
        taskset -c "$PROXY_CPU" "$PORTICO_BIN" run --config "$dir/config/portico.yaml"
    TARGET_PID[portico]=$BG_PID
    wait_until 30 "portico /ready" http_ok "http://127.0.0.1:$PORTICO_ADMIN/ready"
}

start_nginx() {
    local dir=$TMP/nginx-proxy headers=""
    mkdir -p "$dir"
    if [[ $FORWARD_HEADERS == 1 ]]; then
        headers='proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Request-ID $request_id;
            proxy_set_header Host $host;'
    fi
    {
        nginx_common "$dir"
        echo "http {"
        nginx_http_common "$dir"
        cat <<EOF
    upstream backend {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive 64;
        keepalive_requests 1000000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:${PLAIN_PORT[nginx]} backlog=4096;
        listen 127.0.0.1:${TLS_PORT[nginx]} ssl http2 backlog=4096;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_certificate $TMP/tls/bench.crt;
        ssl_certificate_key $TMP/tls/bench.key;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            $headers
        }
    }
}
EOF
    } >"$dir/nginx.conf"
    start_bg "$dir/nginx" taskset -c "$PROXY_CPU" nginx -e stderr -p "$dir" -c "$dir/nginx.conf"
    TARGET_PID[nginx]=$BG_PID
    wait_until 10 "nginx proxy" http_ok "http://127.0.0.1:${PLAIN_PORT[nginx]}/"
}

start_haproxy() {
    local dir=$TMP/haproxy headers="" limits="" maxconn=$(( IDLE_CONNS + 1000 ))
    mkdir -p "$dir"
    # HAProxy reserves two fds per connection and refuses to start when the open-file limit
    # cannot cover that; idle client connections need one each, so let it start anyway.
    (( 2 * maxconn + 100 <= NOFILE )) || limits="no strict-limits"
    if [[ $FORWARD_HEADERS == 1 ]]; then
        headers='option forwardfor
    http-request set-header X-Forwarded-Proto https if { ssl_fc }
    http-request set-header X-Forwarded-Proto http if !{ ssl_fc }
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    unique-id-format %{+X}o\ %ci:%cp_%fi:%fp_%Ts_%rt:%pid
    http-request set-header X-Request-ID %[unique-id]'
    fi
    cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn $maxconn
    $limits
    ssl-default-bind-options ssl-min-ver TLSv1.2

defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-request 30s
    timeout http-keep-alive 300s

frontend web
    bind 127.0.0.1:${PLAIN_PORT[haproxy]}
    bind 127.0.0.1:${TLS_PORT[haproxy]} ssl crt $TMP/tls/bench.pem alpn h2,http/1.1
    $headers
    default_backend backend

backend backend
    http-reuse always
    server s1 127.0.0.1:$BACKEND_PORT
EOF
    start_bg "$dir/haproxy" taskset -c "$PROXY_CPU" haproxy -db -f "$dir/haproxy.cfg"
    TARGET_PID[haproxy]=$BG_PID
    wait_until 10 "haproxy" http_ok "http://127.0.0.1:${PLAIN_PORT[haproxy]}/"
}

start_direct() { :; }   # the backend is already up

start_target() { "start_$1"; }

stop_target() {
    [[ -n ${TARGET_PID[$1]:-} ]] || return 0
    stop_pid "${TARGET_PID[$1]}"
}

# Every target must answer the route over HTTP/1.1, HTTP/2+TLS and, over TLS without SNI, the
# request `openssl s_time` sends in scenario 3, before it is measured.
sanity_check() {
    local t=$1 plain=${PLAIN_PORT[$1]} tls=${TLS_PORT[$1]} body ver resp
    body=$(curl -sS --max-time 5 "http://127.0.0.1:$plain/" 2>&1) || true
    [[ $body == hello ]] || { note "$t" "GET / over HTTP/1.1 answered '${body:0:80}', not 'hello'"; return 1; }
    ver=$(curl -sS -k --http2 --max-time 5 -o /dev/null -w '%{http_version}' "https://127.0.0.1:$tls/" 2>&1) || true
    [[ $ver == 2 ]] || { note "$t" "HTTPS with ALPN h2 gave HTTP version '$ver', not 2"; return 1; }
    resp=$(printf "GET %s HTTP/1.0\r\n\r\n" "$S_TIME_PATH" |
        timeout 5 openssl s_client -connect "127.0.0.1:$tls" -brief -ign_eof 2>"$TMP/tls.$t.txt") || true
    [[ $resp == "HTTP/1."?" 200"* ]] || { note "$t" "s_time's HTTP/1.0 GET over TLS without SNI: '${resp:0:60}'"; return 1; }
    R[tls.$t]=$(awk -F': ' '/^Protocol version/ { p = $2 } /^Ciphersuite/ { c = $2 }
        /^Server Temp Key/ { k = $2 } END { sub(/,.*/, "", k); print p " " c " " k }' "$TMP/tls.$t.txt")
}

# ---------------------------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------------------------
WRK_LUA='done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH requests=%d duration_us=%d errors=%d non2xx=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end'

run_wrk() {   # run_wrk TARGET PORT DURATION LOGFILE [WRK ARGS...]
    "${LOAD[@]}" wrk -t1 -c"$CONNECTIONS" -d"$3" --latency -s "$TMP/bench.lua" "${@:5}" \
        "http://127.0.0.1:$2/" >"$4" 2>&1 || note "$1" "wrk exited with status $?: $(tail -n1 "$4")"
}
wrk_field() {   # wrk_field LOGFILE NAME -> the number from the BENCH line (0 if absent)
    local x
    x=$(sed -n "s/^BENCH.* $2=\([0-9]*\).*/\1/p" "$1" | head -n1)
    echo "${x:-0}"
}

# 1. HTTP/1.1 keep-alive, small bodies.
s1_http1() {
    local t=$1 port=${PLAIN_PORT[$1]} out=$TMP/s1.$1.txt n
    run_wrk "$t" "$port" "$WARMUP" "$out.warmup"
    cpu_begin "$t"
    run_wrk "$t" "$port" "$DURATION" "$out"
    cpu_end "$t" "s1.$t"
    n=$(wrk_field "$out" requests)
    R[s1.$t.requests]=$n
    R[s1.$t.rps]=$(calc %.0f "$n / ($(wrk_field "$out" duration_us) + 0.001) * 1e6")
    R[s1.$t.p50_ms]=$(calc %.3f "$(wrk_field "$out" p50_us) / 1000")
    R[s1.$t.p99_ms]=$(calc %.3f "$(wrk_field "$out" p99_us) / 1000")
    R[s1.$t.errors]=$(( $(wrk_field "$out" errors) + $(wrk_field "$out" non2xx) ))
    R[s1.$t.cpu_us]=$(cpu_us_per "s1.$t" "$n")
}

# 2. HTTP/2 over TLS: h2load, 10 connections x 10 streams.
s2_h2() {
    local t=$1 url="https://127.0.0.1:${TLS_PORT[$1]}/" out=$TMP/s2.$1.txt n
    "${LOAD[@]}" h2load -c10 -m10 -D "$WARMUP" "$url" >"$out.warmup" 2>&1 ||
        note "$t" "h2load (warm-up) exited with status $?"
    cpu_begin "$t"
    "${LOAD[@]}" h2load -c10 -m10 -D "$DURATION" --log-file="$out.log" "$url" >"$out" 2>&1 ||
        note "$t" "h2load exited with status $?"
    touch "$out.log"
    cpu_end "$t" "s2.$t"
    n=$(awk '/^requests:/ { for (i = 1; i <= NF; i++) if ($(i + 1) ~ /^succeeded/) print $i }' "$out")
    R[s2.$t.requests]=$n
    R[s2.$t.rps]=$(awk '/^finished in/ { print int($4 + 0.5) }' "$out")
    R[s2.$t.errors]=$(awk '/^requests:/ { for (i = 1; i <= NF; i++) if ($(i + 1) ~ /^(failed|errored|timeout)/) s += $i; print s + 0 }' "$out")
    # Per-request log: start(µs) <TAB> status <TAB> duration(µs) -> percentiles.
    read -r "R[s2.$t.mean_ms]" "R[s2.$t.p50_ms]" "R[s2.$t.p99_ms]" < <(
        cut -f3 "$out.log" | sort -n | awk '{ v[NR] = $1; s += $1 }
            END { if (!NR) { print "- - -"; exit }
                  printf "%.3f %.3f %.3f\n", s / NR / 1000, v[int(NR * 0.50) + 1] / 1000, v[int(NR * 0.99) + 1] / 1000 }')
    rm -f "$out.log"
    R[s2.$t.cpu_us]=$(cpu_us_per "s2.$t" "$n")
}

# 3. Full TLS handshakes: parallel `openssl s_time -new -www PATH` (no session reuse; each
#    connection = a full handshake + one HTTP/1.0 GET, then the server closes).
# s_time writes "GET <PATH> HTTP/1.0\r\n\r\n"; this PATH smuggles in a Host header (and turns
# the trailing " HTTP/1.0" into a header value), so the request is what a real client sends:
#   GET / HTTP/1.0 | Host: localhost | User-Agent: portico-bench-s_time HTTP/1.0
S_TIME_PATH=$'/ HTTP/1.0\r\nHost: localhost\r\nUser-Agent: portico-bench-s_time'

s3_handshakes() {
    local t=$1 port=${TLS_PORT[$1]} secs i n total=0 failed=0
    local -a pids=()
    secs=$(secs_of "$DURATION")
    cpu_begin "$t"
    for i in $(seq "$HANDSHAKE_CLIENTS"); do
        "${LOAD[@]}" openssl s_time -connect "127.0.0.1:$port" -new -www "$S_TIME_PATH" -time "$secs" \
            >"$TMP/s3.$t.$i.txt" 2>&1 &
        pids+=($!)
        STARTED_PIDS+=($!)
    done
    for i in "${pids[@]}"; do wait "$i" || failed=$(( failed + 1 )); done
    cpu_end "$t" "s3.$t"
    for i in $(seq "$HANDSHAKE_CLIENTS"); do
        n=$(awk '/connections in [0-9]+ real seconds/ { print $1 }' "$TMP/s3.$t.$i.txt")
        total=$(( total + ${n:-0} ))
    done
    (( failed == 0 )) || note "$t" "$failed of $HANDSHAKE_CLIENTS s_time clients exited non-zero"
    R[s3.$t.handshakes]=$total
    R[s3.$t.hs_per_s]=$(calc %.0f "$total / ${R[s3.$t.wall_s]}")
    R[s3.$t.cpu_us]=$(cpu_us_per "s3.$t" "$total")
    if [[ -n ${R[s3.$t.cpu_us]} ]]; then
        R[s3.$t.hs_per_core]=$(calc %.0f "1e6 / ${R[s3.$t.cpu_us]}")
    fi
}

# Rounds (scenarios 1 and 3). Each carries one of issue 2's targets, and one pass per target, one
# target after the other, lands a drift of the machine on one target only. So scenario 1 has
# S1_ROUNDS rounds and scenario 3 S3_ROUNDS: the first inside each target's run, the others
# afterwards, one target after the other (the order rotated), every target started fresh once
# per round and measured in both scenarios when both have that round (scenario 1 first, as in
# the target's run). A target's row is its median round (by CPU per unit; by req/s for
# "direct"); a target of issue 2 takes the median over the rounds of the ratio of two targets'
# CPU per unit in the same round. A round's results are R[s1r2.portico.cpu_us] and the like.
ROUNDED=(s1 s3)
declare -A ROUND_RUN=([s1]=s1_http1 [s3]=s3_handshakes)
# What a round keeps (read by name, S1_FIELDS for s1); the first is set whenever the scenario ran.
# shellcheck disable=SC2034
S1_FIELDS=(requests rps p50_ms p99_ms errors cpu_us cpu_pct load_core_pct other_pct)
# shellcheck disable=SC2034
S3_FIELDS=(handshakes hs_per_s cpu_us hs_per_core cpu_pct load_core_pct other_pct)

rounds_of() {   # rounds_of S -> how many rounds scenario S runs (1 when it is not selected)
    local -n count=${1^^}_ROUNDS
    if want "${1#s}"; then echo "$count"; else echo 1; fi
}

keep_round() {   # keep_round S TARGET ROUND: R[S.TARGET.*] -> R[SrROUND.TARGET.*]
    local -n fields=${1^^}_FIELDS
    local f
    for f in "${fields[@]}"; do R[$1r$3.$2.$f]=${R[$1.$2.$f]:-}; done
}

more_rounds() {
    local -a targets todo
    local -A count=()
    local r i t n s last=1 first
    mapfile -t targets < <(targets_for)
    n=${#targets[@]}
    for s in "${ROUNDED[@]}"; do
        count[$s]=$(rounds_of "$s")
        if ((count[$s] > last)); then last=${count[$s]}; fi
        for t in "${targets[@]}"; do keep_round "$s" "$t" 1; done
    done
    for ((r = 2; r <= last; r++)); do
        for ((i = 0; i < n; i++)); do
            t=${targets[(i + r - 1) % n]}
            todo=()
            for s in "${ROUNDED[@]}"; do   # the scenarios with a round r that ran on t in round 1
                first="${s^^}_FIELDS[0]"
                if ((r <= count[$s])) && [[ -n ${R[${s}r1.$t.${!first}]:-} ]]; then todo+=("$s"); fi
            done
            ((${#todo[@]})) || continue
            if start_target "$t"; then
                for s in "${todo[@]}"; do
                    log "$t: scenario ${s#s}, round $r of ${count[$s]}"
                    "${ROUND_RUN[$s]}" "$t"
                    keep_round "$s" "$t" "$r"
                done
            else
                note "$t" "did not start for round $r (scenarios ${todo[*]#s})"
            fi
            stop_target "$t"
        done
    done
    for s in "${ROUNDED[@]}"; do
        if ((count[$s] > 1)); then for t in "${targets[@]}"; do round_median "$s" "$t"; done; fi
    done
}

# round_median S TARGET: the target's row becomes its median round; R[S.TARGET.rounds] lists them.
round_median() {
    local s=$1 t=$2 key=cpu_us r pick f n
    local -a list=()
    local -n fields=${s^^}_FIELDS
    n=$(rounds_of "$s")
    [[ $t != direct ]] || key=rps
    for ((r = 1; r <= n; r++)); do
        if [[ -n ${R[${s}r$r.$t.$key]:-} ]]; then list+=("${R[${s}r$r.$t.$key]} $r"); fi
    done
    ((${#list[@]})) || return 0
    pick=$(printf '%s\n' "${list[@]}" | sort -g | awk '{ v[NR] = $2 } END { print v[int((NR + 1) / 2)] }')
    for f in "${fields[@]}"; do R[$s.$t.$f]=${R[${s}r$pick.$t.$f]:-}; done
    R[$s.$t.rounds]=$(for ((r = 1; r <= n; r++)); do
        printf '%s' "${R[${s}r$r.$t.cpu_us]:-—}"; ((r < n)) && printf ' / '; done; echo)
}

# round_ratio S A B: A's CPU per unit over B's in scenario S, as issue 2's targets take it: with
# rounds, the median of the ratios within a round; else the rows' ratio. Sets RATIO ("1.23", or
# empty when not measured) and RATIO_ROUNDS ("; per round 1.20× / 1.31×, their median", or empty).
round_ratio() {
    local s=$1 a=$2 b=$3 r x y n
    local -a per=()
    n=$(rounds_of "$s")
    RATIO="" RATIO_ROUNDS=""
    for ((r = 1; n > 1 && r <= n; r++)); do
        x=${R[${s}r$r.$a.cpu_us]:-} y=${R[${s}r$r.$b.cpu_us]:-}
        if [[ -n $x && -n $y ]] && awk "BEGIN { exit !($y > 0) }"; then per+=("$(calc %.2f "$x / $y")"); fi
    done
    if ((${#per[@]})); then
        RATIO=$(median_of "${per[@]}")
        RATIO_ROUNDS="; per round $(printf '%s× / ' "${per[@]}" | sed 's| / $||'), their median"
        return 0
    fi
    x=${R[$s.$a.cpu_us]:-} y=${R[$s.$b.cpu_us]:-}
    if [[ -n $x && -n $y ]] && awk "BEGIN { exit !($y > 0) }"; then RATIO=$(calc %.2f "$x / $y"); fi
}

rounds_method() {   # rounds_method S WHAT: the report's sentence on scenario S's rounds
    local n
    n=$(rounds_of "$1")
    if ((n == 1)); then echo "One run per target (S${1#s}_ROUNDS=1)."; return 0; fi
    echo "$n rounds: the first inside each target's run, the others after all of them, one target after the other (the order rotated), every target started fresh once per round$( (($(rounds_of s1) > 1 && $(rounds_of s3) > 1)) && echo " and, in a round that scenarios 1 and 3 both have, measured in both (scenario 1 first)"). A row is the target's median round by $2, \"per round\" lists every round's; \"× nginx\" and \"× haproxy\" divide the rows, while the target above takes the median of the per-round ratios."
}

median_of() {   # median_of NUMBER... -> the median (mean of the middle two for an even count)
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR) printf "%.2f\n", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# 4. Upstream connections, counted by the backend's stub_status: "cold" is the first load
#    after the proxy started (the pool fills), "warm" the same load again right after (steady
#    state: a working pool opens nothing new). The target is judged on the warm run.
s4_upstream() {
    local t=$1 phase out a0 q0 a1 q1 opened reqs
    for phase in cold warm; do
        out=$TMP/s4.$t.$phase.txt
        read -r a0 q0 < <(backend_counters)
        cpu_begin "$t"
        run_wrk "$t" "${PLAIN_PORT[$t]}" "$UPSTREAM_DURATION" "$out"
        cpu_end "$t" "s4.$t.$phase"
        read -r a1 q1 < <(backend_counters)
        opened=$(( a1 - a0 - 1 ))   # minus the second stub_status query itself
        reqs=$(( q1 - q0 - 1 ))
        R[s4.$t.$phase.requests]=$reqs
        R[s4.$t.$phase.opened]=$opened
        if (( reqs > 0 )); then
            R[s4.$t.$phase.per_10k]=$(calc %.2f "$opened * 10000 / $reqs")
            R[s4.$t.$phase.reused_pct]=$(calc %.3f "100 * (1 - $opened / $reqs)")
        fi
    done
}

# 5a. Idle memory right after start (before any load).
s5_idle() {
    local t=$1
    local -a pids
    mapfile -t pids < <(target_pids "$t")
    R[s5.$t.processes]=${#pids[@]}
    R[s5.$t.idle_rss_kb]=$(mem_kb VmRSS "${pids[@]}")
    R[s5.$t.idle_pss_kb]=$(mem_kb Pss "${pids[@]}")
}

# 5b. RSS per idle HTTP/1.1 keep-alive connection (IDLE_CONNS connections, one request each).
s5_conns() {
    local t=$1 out=$TMP/s5.$1.txt rss0 rss1 open final py
    local -a pids
    mapfile -t pids < <(target_pids "$t")
    rss0=$(mem_kb VmRSS "${pids[@]}")
    "${LOAD[@]}" python3 "$BENCH_DIR/idle_conns.py" --port "${PLAIN_PORT[$t]}" \
        -n "$IDLE_CONNS" >"$out" 2>&1 &
    py=$!
    STARTED_PIDS+=("$py")
    wait_until 180 "$IDLE_CONNS idle connections" grep -q '^READY' "$out" || true
    sleep 1   # let the proxy settle after the last response before reading its RSS
    mapfile -t pids < <(target_pids "$t")
    rss1=$(mem_kb VmRSS "${pids[@]}")
    kill -TERM "$py" 2>/dev/null || true
    wait "$py" 2>/dev/null || true
    open=$(sed -n 's/^READY open=\([0-9]*\).*/\1/p' "$out")
    final=$(sed -n 's/^FINAL open=\([0-9]*\).*/\1/p' "$out")
    R[s5.$t.conns]=${open:-0}
    R[s5.$t.still_open]=${final:-?}
    R[s5.$t.loaded_rss_kb]=$rss1
    if [[ ${open:-0} -gt 0 ]]; then
        R[s5.$t.per_conn_kib]=$(calc %.2f "($rss1 - $rss0) / $open")
    fi
    if [[ ${open:-0} -lt $IDLE_CONNS ]]; then
        note "$t" "only ${open:-0} of $IDLE_CONNS idle connections were open when all had been tried ($(grep -m1 '^READY' "$out" || tail -n1 "$out"))"
    fi
    if [[ -n $final && $final != "$open" ]]; then
        note "$t" "another $(( open - final )) idle connections were closed by the server around the RSS reading"
    fi
}

# 6. Plugin chains: Portico alone, scenario 1's load, through chains of the rw test plugin
#    (tests/plugins/rw: N request-header hostcalls, alternating get x-rw-in / set x-rw-<i>).
#    One Portico serves every chain, one listener each, so the chains are measured in the same
#    process, each in pairs with a run of the 0-plugin chain (chain_rounds). Differences from
#    the 0-plugin chain within the pairs are what the plugins cost.
start_plugins() {
    local dir=$TMP/portico-plugins v
    mkdir -p "$dir/config"   # the configuration alone in its directory, which Portico watches
    {
        echo "listeners:"
        for v in "${PLUGIN_VARIANTS[@]}"; do
            echo "  - name: chain-$v"
            echo "    address: \"127.0.0.1:${PLUGIN_PORT[$v]}\""
            if [[ -n ${PLUGIN_CHAIN[$v]} ]]; then echo "    plugins: [${PLUGIN_CHAIN[$v]}]"; fi
        done
        cat <<EOF
admin:
  address: "127.0.0.1:$PLUGINS_ADMIN"
access_log: false
upstreams:
  backend:
    endpoints: ["127.0.0.1:$BACKEND_PORT"]
plugins:
  rw-a: { module: "$RW_WASM", config: { hostcalls: 2 } }
  rw-b: { module: "$RW_WASM", config: { hostcalls: 2 } }
  rw-c: { module: "$RW_WASM", config: { hostcalls: 2 } }
  rw-d: { module: "$RW_WASM", config: { hostcalls: 2 } }
  rw-h0: { module: "$RW_WASM", config: { hostcalls: 0 } }
  rw-h5: { module: "$RW_WASM", config: { hostcalls: 5 } }
routes:
  - name: all
    paths: [{ type: Prefix, value: / }]
    upstream: backend
EOF
    } >"$dir/config/portico.yaml"
    start_bg "$dir/portico" env PORTICO_WORKERS=1 RUST_LOG="${RUST_LOG:-warn}" \
        PORTICO_PLUGIN_CACHE="$dir/plugin-cache" \
        taskset -c "$PROXY_CPU" "$PORTICO_BIN" run --config "$dir/config/portico.yaml"
    TARGET_PID[plugins]=$BG_PID
    wait_until 60 "portico (plugin chains) /ready" http_ok "http://127.0.0.1:$PLUGINS_ADMIN/ready"
}

# Every chain answers the route, and its plugins really run: the backend's /rw-echo shows the
# headers rw wrote on the way up.
plugins_sanity() {
    local v port body
    for v in "${PLUGIN_VARIANTS[@]}"; do
        port=${PLUGIN_PORT[$v]}
        body=$(curl -sS --max-time 5 -H "x-rw-in: 1" "http://127.0.0.1:$port/" 2>&1) || true
        [[ $body == hello ]] || { note plugins "$v: GET / answered '${body:0:80}', not 'hello'"; return 1; }
        body=$(curl -sS --max-time 5 -H "x-rw-in: 1" "http://127.0.0.1:$port/rw-echo" 2>&1) || true
        [[ $body == "${PLUGIN_ECHO[$v]}" ]] ||
            { note plugins "$v: /rw-echo answered '${body:0:80}', not '${PLUGIN_ECHO[$v]}'"; return 1; }
    done
}

plugin_failures() {   # plugin_failures ADMIN_PORT: sum of portico_plugin_failures_total, or ?
    local m
    m=$(curl -sf --max-time 2 "http://127.0.0.1:$1/metrics") || { echo "?"; return 0; }
    awk '/^portico_plugin_failures_total/ { s += $NF } END { print s + 0 }' <<<"$m"
}

s6_plugins() {
    # What wrk sends: scenario 1's request plus the header rw reads (so every read finds a
    # value and copies it into the guest). The baseline gets it too.
    chain_rounds s6 plugins PLUGIN_VARIANTS PLUGIN_PORT PLUGIN_HEADERS
    # Each chain against the 0-plugin chain (and 5 hostcalls against 0).
    chain_delta s6 p1 none; chain_delta s6 p4 none; chain_delta s6 h0 none
    chain_delta s6 h5 none; chain_delta s6 h5 h0
    R[s6.failures]=$(plugin_failures "$PLUGINS_ADMIN")
    if [[ ${R[s6.failures]} != 0 ]]; then
        note plugins "the plugins failed ${R[s6.failures]} times (portico_plugin_failures_total)"
    fi
}

# The measurement of scenarios 6 and 7: one Portico (TARGET) with a listener per chain, scenario
# 1's load on each, in PLUGIN_ROUNDS rounds. The first chain is the baseline, and every other
# chain is measured in a pair with a baseline run right next to it (the baseline first in one
# round, second in the next; the chains' order rotated): this machine's speed drifts by more
# than a plugin costs over the minutes a round takes, but hardly over the seconds of a pair.
#   chain_rounds S TARGET CHAINS PORTS HEADERS
# CHAINS names the array of chains, PORTS the map chain -> port, HEADERS the map chain -> the
# request headers wrk adds (one a line). Sets, per chain V: R[S.V.rN.cpu_us] per round (the
# baseline's: the median of its runs in the round), R[S.V.rN.base_us] (the baseline run of V's
# pair), R[S.V.rounds] (the rounds', listed), R[S.V.cpu_us] (their median),
# R[S.V.pooled_cpu_us], and over all its runs requests, errors, rps, p50_ms/p99_ms and
# load_core_pct (means of the runs'), cpu_pct, other_pct (the worst run's).
chain_rounds() {
    local s=$1 t=$2 round i v w k n rounds=$PLUGIN_ROUNDS base_runs
    local -n chain_list=$3 chain_port=$4 chain_headers=$5
    local base=${chain_list[0]}
    local -a others=("${chain_list[@]:1}") pair
    for v in "${chain_list[@]}"; do
        header_args "${chain_headers[$v]:-}"
        run_wrk "$t" "${chain_port[$v]}" "$WARMUP" "$TMP/$s.$v.warmup" "${HDR[@]}"
        for k in ticks requests duration_us errors p50_us p99_us load_pct runs; do R[$s.$v.sum_$k]=0; done
        R[$s.$v.sum_wall]=0 R[$s.$v.other_pct]=0 R[$s.$v.rounds]=""
    done
    for round in $(seq "$rounds"); do
        log "$t: scenario ${s#s}, round $round of $rounds"
        base_runs=""
        for i in "${!others[@]}"; do
            v=${others[(i + round - 1) % ${#others[@]}]}
            if (( (round + i) % 2 )); then pair=("$base" "$v"); else pair=("$v" "$base"); fi
            for w in "${pair[@]}"; do
                chain_run "$s" "$t" "$w" "$round" "${chain_port[$w]}" "${chain_headers[$w]:-}"
            done
            R[$s.$v.r$round.base_us]=$BASE_CPU_US
            base_runs+=" $BASE_CPU_US"
        done
        if (( ${#others[@]} == 0 )); then
            chain_run "$s" "$t" "$base" "$round" "${chain_port[$base]}" "${chain_headers[$base]:-}"
            base_runs=$BASE_CPU_US
        fi
        R[$s.$base.r$round.cpu_us]=$(median "$base_runs")
        for v in "${chain_list[@]}"; do
            R[$s.$v.rounds]="${R[$s.$v.rounds]}${R[$s.$v.rounds]:+ / }${R[$s.$v.r$round.cpu_us]}"
        done
    done
    for v in "${chain_list[@]}"; do
        n=${R[$s.$v.sum_requests]}
        k=${R[$s.$v.sum_runs]}
        R[$s.$v.requests]=$n
        R[$s.$v.errors]=${R[$s.$v.sum_errors]}
        R[$s.$v.rps]=$(calc %.0f "$n / (${R[$s.$v.sum_duration_us]} + 0.001) * 1e6")
        R[$s.$v.p50_ms]=$(calc %.3f "${R[$s.$v.sum_p50_us]} / $k / 1000")
        R[$s.$v.p99_ms]=$(calc %.3f "${R[$s.$v.sum_p99_us]} / $k / 1000")
        R[$s.$v.cpu_pct]=$(calc %.0f "${R[$s.$v.sum_ticks]} / $CLK_TCK / (${R[$s.$v.sum_wall]} + 0.001) * 100")
        R[$s.$v.load_core_pct]=$(calc %.0f "${R[$s.$v.sum_load_pct]} / $k")
        if (( n > 0 )); then
            R[$s.$v.pooled_cpu_us]=$(calc %.2f "${R[$s.$v.sum_ticks]} * 1e6 / $CLK_TCK / $n")
            R[$s.$v.cpu_us]=$(median "${R[$s.$v.rounds]// \/ / }")
        fi
    done
}

# One measured run of chain V (BASE: the baseline) in round ROUND of scenario S. Its proxy CPU
# per request goes to BASE_CPU_US for the baseline, else to R[S.V.rROUND.cpu_us]; V's sums grow.
#   chain_run S TARGET V ROUND PORT HEADERS
chain_run() {
    local s=$1 t=$2 v=$3 round=$4 port=$5 out k n cpu
    out=$TMP/$s.$v.r$round.${R[$s.$v.sum_runs]}.txt
    k=$s.$t.$v.r$round
    header_args "$6"
    cpu_begin "$t"
    run_wrk "$t" "$port" "$PLUGIN_DURATION" "$out" "${HDR[@]}"
    cpu_end "$t" "$k"
    n=$(wrk_field "$out" requests)
    cpu=$(calc %.2f "${R[$k.cpu_ticks]} * 1e6 / $CLK_TCK / ($n + 0.000001)")
    if [[ $v == "${chain_list[0]}" ]]; then BASE_CPU_US=$cpu; else R[$s.$v.r$round.cpu_us]=$cpu; fi
    add "$s.$v.sum_runs" 1
    add "$s.$v.sum_ticks" "${R[$k.cpu_ticks]}"
    add "$s.$v.sum_requests" "$n"
    add "$s.$v.sum_duration_us" "$(wrk_field "$out" duration_us)"
    add "$s.$v.sum_errors" "$(wrk_field "$out" errors)"
    add "$s.$v.sum_errors" "$(wrk_field "$out" non2xx)"
    add "$s.$v.sum_p50_us" "$(wrk_field "$out" p50_us)"
    add "$s.$v.sum_p99_us" "$(wrk_field "$out" p99_us)"
    add "$s.$v.sum_load_pct" "${R[$k.load_core_pct]}"
    R[$s.$v.sum_wall]=$(calc %.3f "${R[$s.$v.sum_wall]} + ${R[$k.wall_s]}")
    if (( ${R[$k.other_pct]} > ${R[$s.$v.other_pct]} )); then R[$s.$v.other_pct]=${R[$k.other_pct]}; fi
}

header_args() {   # header_args "NAME: value<newline>...": HDR=(-H "NAME: value" ...), for wrk and curl
    local line
    HDR=()
    while IFS= read -r line; do
        if [[ -n $line ]]; then HDR+=(-H "$line"); fi
    done <<<"$1"
}

# chain_delta S V BASE: chain V against chain BASE of scenario S, R[S.V-BASE.delta] and
# R[S.V-BASE.spread]. Per round, a chain's difference from the baseline is taken within its pair
# (seconds apart); against another chain it is the difference of the two chains' differences.
# The result is the median over the rounds, so that one disturbed pair does not move it; the
# range of the per-round differences is the error bar.
chain_delta() {
    local s=$1 v=$2 base=$3 round d ds=""
    [[ -n ${R[$s.$v.cpu_us]:-} && -n ${R[$s.$base.cpu_us]:-} ]] || return 0
    for round in $(seq "$PLUGIN_ROUNDS"); do
        d="${R[$s.$v.r$round.cpu_us]} - ${R[$s.$v.r$round.base_us]}"
        if [[ -n ${R[$s.$base.r$round.base_us]:-} ]]; then
            d="$d - (${R[$s.$base.r$round.cpu_us]} - ${R[$s.$base.r$round.base_us]})"
        fi
        ds+=" $(calc %.2f "$d")"
    done
    R[$s.$v-$base.delta]=$(calc %+.2f "$(median "$ds")")
    R[$s.$v-$base.spread]=$(tr ' ' '\n' <<<"$ds" | sed '/^$/d' | sort -g |
        awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%+.2f … %+.2f", lo, hi }')
}

median() {   # median "X Y Z ..." -> the middle value (the mean of the two middle ones if even)
    tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g |
        awk '{ v[NR] = $1 } END { if (NR % 2) m = v[(NR + 1) / 2]; else m = (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.2f", m }'
}

run_plugins() {
    log "== plugins (scenario 6: Portico with plugin chains of 0, 1 and 4 plugins)"
    if ! start_plugins; then
        note plugins "did not start or become ready: $(tail -n3 "$TMP/portico-plugins/portico.log" 2>/dev/null | tr '\n' ' ')"
        stop_target plugins
        return 0
    fi
    if plugins_sanity; then
        log "plugins: every chain answers and its plugins run; measuring"
        s6_plugins
        alive plugins || note plugins "the process exited during the run"
    fi
    stop_target plugins
}

# 7. The first-party plugins (plugins/: jwt, rate-limit, auth, header-rewrite) under load, by
#    scenario 6's method: one Portico, a listener per chain, each chain in pairs with the
#    0-plugin chain. Every request carries a bearer token, an API key and a header
#    that header-rewrite removes, the baseline's too.

# The JWKS and one token per algorithm, minted now by proxy/examples/bench_tokens.rs; then each
# chain's request headers.
fp_tokens() {
    local out name value v
    out=$("$BENCH_TOKENS") || die "$BENCH_TOKENS failed"
    while IFS='=' read -r name value; do
        case $name in
            JWKS) FP_JWKS=$value ;;
            TOKEN_*) FP_TOKEN[${name#TOKEN_}]=$value ;;
        esac
    done <<<"$out"
    [[ -n $FP_JWKS && -n ${FP_TOKEN[HS256]:-} && -n ${FP_TOKEN[RS256]:-} && -n ${FP_TOKEN[ES256]:-} ]] ||
        die "$BENCH_TOKENS printed no JWKS or not the three tokens: ${out:0:200}"
    for v in "${FP_VARIANTS[@]}"; do
        FP_HEADERS[$v]="authorization: Bearer ${FP_TOKEN[${FP_ALG[$v]}]}
x-api-key: $FP_API_KEY
x-debug: 1"
    done
}

start_firstparty() {
    local dir=$TMP/portico-firstparty v alg temp cache jwt rl key hr
    mkdir -p "$dir/config"   # the configuration alone in its directory, which Portico watches
    # The plugins' configurations, as bench/micro/first_party.rs has them (the JWKS as JSON text).
    jwt="issuer: \"https://idp.test\", audiences: [api], jwks: '$FP_JWKS'"
    rl="{ rate: 1000000000, per: 1s, key: client_ip }"
    key="{ type: api_key, keys: [{ name: bench, sha256: $(printf %s "$FP_API_KEY" | sha256sum | awk '{ print $1 }') }] }"
    hr='{ request: { set: { x-request-host: "{request.host}" }, remove: [x-debug] }, response: { set: { strict-transport-security: "max-age=63072000" }, remove: [server] } }'
    {
        echo "listeners:"
        for v in "${FP_VARIANTS[@]}"; do
            echo "  - name: chain-$v"
            echo "    address: \"127.0.0.1:${FP_PORT[$v]}\""
            if [[ -n ${FP_CHAIN[$v]} ]]; then echo "    plugins: [${FP_CHAIN[$v]}]"; fi
        done
        cat <<YAML
admin:
  address: "127.0.0.1:$FP_ADMIN"
access_log: false
upstreams:
  backend:
    endpoints: ["127.0.0.1:$BACKEND_PORT"]
plugins:
YAML
        for alg in hs256 rs256 es256; do
            for temp in warm cold; do
                cache=10000
                if [[ $temp == cold ]]; then cache=0; fi
                echo "  jwt-$alg-$temp: { module: \"$FP_WASM_DIR/jwt.wasm\", config: { $jwt, cache_size: $cache } }"
            done
        done
        cat <<YAML
  rate-limit: { module: "$FP_WASM_DIR/rate-limit.wasm", config: $rl }
  auth-api-key: { module: "$FP_WASM_DIR/auth.wasm", config: $key }
  header-rewrite: { module: "$FP_WASM_DIR/header-rewrite.wasm", config: $hr }
  c4-jwt: { module: "$FP_WASM_DIR/jwt.wasm", config: { $jwt, cache_size: 10000 } }
  c4-rate-limit: { module: "$FP_WASM_DIR/rate-limit.wasm", config: $rl }
  c4-auth: { module: "$FP_WASM_DIR/auth.wasm", config: $key }
  c4-header-rewrite: { module: "$FP_WASM_DIR/header-rewrite.wasm", config: $hr }
routes:
  - name: all
    paths: [{ type: Prefix, value: / }]
    upstream: backend
YAML
    } >"$dir/config/portico.yaml"
    start_bg "$dir/portico" env PORTICO_WORKERS=1 RUST_LOG="${RUST_LOG:-warn}" \
        PORTICO_PLUGIN_CACHE="$dir/plugin-cache" \
        taskset -c "$PROXY_CPU" "$PORTICO_BIN" run --config "$dir/config/portico.yaml"
    TARGET_PID[firstparty]=$BG_PID
    wait_until 60 "portico (first-party plugins) /ready" http_ok "http://127.0.0.1:$FP_ADMIN/ready"
}

plugin_counter() {   # plugin_counter ADMIN_PORT ENTRY NAME: portico_plugin_counter's value (0 if absent)
    curl -sf --max-time 2 "http://127.0.0.1:$1/metrics" |
        awk -v p="plugin=\"$2\"" -v n="name=\"$3\"" \
            '/^portico_plugin_counter\{/ && index($0, p) && index($0, n) { s += $NF } END { print s + 0 }'
}

fp_fail() { note firstparty "$1: $2 (not measured)"; }   # fp_fail V WHY

# fp_check V: chain V answers its request through its plugins, and they really run; notes why
# not and fails otherwise.
fp_check() {
    local v=$1 url="http://127.0.0.1:${FP_PORT[$1]}" kinds=" ${FP_KINDS[$1]} " body code echo
    local head=$TMP/s7.$1.sanity.head before after
    local host="" debug=1 key=$FP_API_KEY name=""
    header_args "${FP_HEADERS[$v]}"
    body=$(curl -sS --max-time 5 -D "$head" "${HDR[@]}" "$url/" 2>&1) || true
    [[ $body == hello ]] || { fp_fail "$v" "GET / answered '${body:0:80}', not 'hello'"; return 1; }
    # header-rewrite removes the backend's Server header and adds HSTS; without it both stay as
    # they are (which shows the check can tell).
    if [[ $kinds == *" hr "* ]]; then
        ! grep -qi '^server:' "$head" || { fp_fail "$v" "the response still has Server"; return 1; }
        grep -qi '^strict-transport-security:' "$head" || { fp_fail "$v" "the response has no HSTS"; return 1; }
        host=127.0.0.1:${FP_PORT[$v]} debug=""
    else
        grep -qi '^server:' "$head" || { fp_fail "$v" "the response lost the backend's Server header"; return 1; }
        ! grep -qi '^strict-transport-security:' "$head" || { fp_fail "$v" "the response has HSTS"; return 1; }
    fi
    # What the backend received: header-rewrite's x-request-host and x-debug removed; auth's
    # key removed and the key's name added.
    if [[ $kinds == *" key "* ]]; then key="" name=bench; fi
    echo="x-request-host=$host x-debug=$debug x-api-key=$key x-api-key-name=$name"
    body=$(curl -sS --max-time 5 "${HDR[@]}" "$url/fp-echo" 2>&1) || true
    [[ $body == "$echo" ]] || { fp_fail "$v" "/fp-echo answered '${body:0:160}', not '$echo'"; return 1; }
    if [[ $kinds == *" jwt "* ]]; then
        header_args "$(grep -vi '^authorization:' <<<"${FP_HEADERS[$v]}")"
        code=$(curl -s --max-time 5 -o /dev/null -w '%{http_code}' "${HDR[@]}" "$url/") || true
        [[ $code == 401 ]] || { fp_fail "$v" "a request without the token answered $code, not 401"; return 1; }
    fi
    if [[ $kinds == *" key "* ]]; then
        header_args "$(grep -vi '^x-api-key:' <<<"${FP_HEADERS[$v]}")"
        code=$(curl -s --max-time 5 -o /dev/null -w '%{http_code}' "${HDR[@]}" "$url/") || true
        [[ $code == 401 ]] || { fp_fail "$v" "a request without the API key answered $code, not 401"; return 1; }
    fi
    if [[ $kinds == *" rl "* ]]; then
        # The limiter counts what it lets through.
        header_args "${FP_HEADERS[$v]}"
        before=$(plugin_counter "$FP_ADMIN" "${FP_RL_ENTRY[$v]}" requests_allowed)
        curl -sf --max-time 5 -o /dev/null "${HDR[@]}" "$url/" || true
        after=$(plugin_counter "$FP_ADMIN" "${FP_RL_ENTRY[$v]}" requests_allowed)
        (( after > before )) ||
            { fp_fail "$v" "rate-limit's requests_allowed did not move ($before, then $after)"; return 1; }
    fi
}

# The chains that pass fp_check, into FP_MEASURED; nothing if the baseline fails.
fp_sanity() {
    local v
    FP_MEASURED=()
    for v in "${FP_VARIANTS[@]}"; do
        if fp_check "$v"; then FP_MEASURED+=("$v"); elif [[ $v == none ]]; then return 1; fi
    done
}

s7_firstparty() {
    local v
    chain_rounds s7 firstparty FP_MEASURED FP_PORT FP_HEADERS
    for v in "${FP_MEASURED[@]}"; do
        if [[ $v != none ]]; then chain_delta s7 "$v" none; fi
    done
    R[s7.failures]=$(plugin_failures "$FP_ADMIN")
    if [[ ${R[s7.failures]} != 0 ]]; then
        note firstparty "the plugins failed ${R[s7.failures]} times (portico_plugin_failures_total)"
    fi
}

# The in-process numbers: bench/micro/first_party.rs (the executable build_firstparty built,
# as `cargo bench` would run it), the cases of FP_CRITERION_CASES only, on the proxy's core
# after the load. R[s7.c.<slug of the case>.{mean,lo,hi}] in µs: criterion's mean and its
# confidence interval, from target/criterion/<group>/<case>/new/estimates.json (a file older
# than this run is not used); R[s7.c.other_pct]: how much of that core other processes took.
fp_criterion() {
    local c f k0 k1 home="$ROOT/target/criterion"
    local dir="$home/first-party plugins"
    local -a args c0 c1
    [[ $CRITERION == 1 ]] || return 0
    read -ra args <<<"$CRITERION_ARGS"
    log "firstparty: criterion (cargo bench -p portico --bench first_party -- --noplot $CRITERION_ARGS), on CPU $PROXY_CPU"
    touch "$TMP/criterion.start"
    read -ra c0 < <(core_ticks "$PROXY_CPU"); k0=$(children_ticks)
    (cd "$ROOT" && CRITERION_HOME=$home taskset -c "$PROXY_CPU" "$FP_CRITERION_EXE" --bench \
        --noplot "${args[@]}" "$FP_CRITERION_FILTER") >"$TMP/criterion.txt" 2>&1 ||
        note firstparty "the criterion bench first_party exited with status $?: $(tail -n2 "$TMP/criterion.txt" | tr '\n' ' ')"
    read -ra c1 < <(core_ticks "$PROXY_CPU"); k1=$(children_ticks)
    # The core's busy time minus the bench's own (it ran there alone): what others took.
    R[s7.c.other_pct]=$(calc %.0f "(f = 100 * (${c1[0]} - ${c0[0]} - ($k1 - $k0)) / (${c1[1]} - ${c0[1]} + 0.001)) > 0 ? f : 0")
    if (( ${R[s7.c.other_pct]} > NOISE_PCT )); then
        NOISY[firstparty]="${NOISY[firstparty]:-}${NOISY[firstparty]:+, }criterion ${R[s7.c.other_pct]}% of CPU $PROXY_CPU"
        log "firstparty: criterion: other processes took ${R[s7.c.other_pct]}% of CPU $PROXY_CPU: noisy run"
    fi
    for c in "${FP_CRITERION_CASES[@]}"; do
        f=$dir/$c/new/estimates.json
        if [[ -f $f && $f -nt $TMP/criterion.start ]]; then
            read -r "R[s7.c.$(slug "$c").mean]" "R[s7.c.$(slug "$c").lo]" "R[s7.c.$(slug "$c").hi]" < <(
                python3 -c 'import json, sys
m = json.load(open(sys.argv[1]))["mean"]
ci = m["confidence_interval"]
print("%.3f %.3f %.3f" % (m["point_estimate"] / 1e3, ci["lower_bound"] / 1e3, ci["upper_bound"] / 1e3))' "$f")
        else
            note firstparty "criterion gave no estimate for '$c'"
        fi
    done
}

slug() { echo "${1//[^A-Za-z0-9]/_}"; }   # "jwt RS256 cold" -> jwt_RS256_cold

run_firstparty() {
    log "== firstparty (scenario 7: Portico with the first-party plugins)"
    fp_tokens
    if ! start_firstparty; then
        note firstparty "did not start or become ready: $(tail -n3 "$TMP/portico-firstparty/portico.log" 2>/dev/null | tr '\n' ' ')"
        stop_target firstparty
        return 0
    fi
    if fp_sanity; then
        log "firstparty: measuring ${FP_MEASURED[*]} (each chain answers through its plugins, and they run)"
        s7_firstparty
        alive firstparty || note firstparty "the process exited during the run"
    fi
    stop_target firstparty
    fp_criterion
}

run_target() {
    local t=$1
    log "== $t"
    if ! start_target "$t"; then
        note "$t" "did not start or become ready: $(tail -n3 "$TMP/$t"*/*.log 2>/dev/null | tr '\n' ' ')"
        stop_target "$t"
        return 0
    fi
    if ! sanity_check "$t"; then stop_target "$t"; return 0; fi
    if [[ $t != direct ]]; then
        sleep 1   # settle before the idle reading
        want 5 && s5_idle "$t"
        want 4 && { log "$t: scenario 4 (upstream connections, cold then warm pool)"; s4_upstream "$t"; }
    fi
    want 1 && { log "$t: scenario 1 (HTTP/1.1 keep-alive)"; s1_http1 "$t"; }
    want 2 && { log "$t: scenario 2 (HTTP/2 over TLS)"; s2_h2 "$t"; }
    if [[ $t != direct ]]; then
        want 3 && { log "$t: scenario 3 (TLS full handshakes)"; s3_handshakes "$t"; }
        want 5 && { log "$t: scenario 5 ($IDLE_CONNS idle connections)"; s5_conns "$t"; }
        alive "$t" || note "$t" "the process exited during the run"
    fi
    stop_target "$t"
}

# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
v() { local x=${R[$1]:-}; echo "${x:-—}"; }
ratio() {   # ratio SCENARIO METRIC TARGET BASE -> "1.23×" of TARGET over BASE
    local a=${R[$1.$3.$2]:-} b=${R[$1.$4.$2]:-}
    if [[ -n $a && -n $b ]] && awk "BEGIN { exit !($b > 0) }"; then calc '%.2f×' "$a / $b"; else echo "—"; fi
}
mib() { local kb=${R[$1]:-}; if [[ -n $kb ]]; then calc %.1f "$kb / 1024"; else echo "—"; fi; }
targets_for() {   # targets that ran (in order), optionally without direct
    local t
    for t in $PROXIES; do echo "$t"; done
    [[ $DIRECT == 1 && ${1:-} != noproxyless ]] && echo direct
    return 0
}
verdict() {   # verdict OK-EXPR -> MET / NOT MET / not measured
    if [[ -z $1 ]]; then echo "not measured"; elif awk "BEGIN { exit !($1) }"; then echo "**MET**"; else echo "**NOT MET**"; fi
}

# The report is docs/benchmarks.md: a title, then one generated block per group of scenarios
# (scenarios 1-5: "load"; scenario 6: "plugins"; scenario 7: "firstparty") between marker
# comments, then whatever else the file holds (the criterion numbers). A run regenerates the
# blocks of the scenarios it ran and keeps the rest of the file as it was, so `SCENARIOS=6` does
# not erase scenarios 1-5.
REPORT_BLOCKS="load plugins firstparty"   # their order in the file
REPORT_TITLE='# Benchmarks

Written by [bench/run.sh](../bench/run.sh) (method: [bench/README.md](../bench/README.md)), except
the criterion micro-benchmarks at the end. Each generated block names the command and the date
that produced it. A run replaces only the blocks of the scenarios it ran (scenarios 1-5: Portico
vs nginx vs HAProxy; scenario 6: plugin chains; scenario 7: the first-party plugins) and keeps
the rest of this file.'

run_cmd() {
    local cmd="bash bench/run.sh"
    ((${#SET_KNOBS[@]})) && cmd="${SET_KNOBS[*]} $cmd"
    echo "$cmd"
}

# Scenarios 1-5: Portico vs nginx vs HAProxy.
report_load() {
    local t cmd cpu_model h1 h1_rounds h2 hs hs_rounds reuse rss
    cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    cmd=$(run_cmd)
    {
        cat <<EOF
Produced by \`$cmd\` (method: [bench/README.md](../bench/README.md)).

- Date: $(date -u '+%Y-%m-%d %H:%M UTC')
- Machine: $(nproc) cores, $cpu_model, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, Linux ${VERSIONS[kernel]}
- Layout: proxy under test pinned to CPU $PROXY_CPU (one worker/thread); backend nginx and load generators pinned to CPU $LOAD_CPU; all traffic on 127.0.0.1
- Versions: portico ${VERSIONS[portico]:-(not run)}; nginx ${VERSIONS[nginx]}; HAProxy ${VERSIONS[haproxy]}; wrk ${VERSIONS[wrk]}; ${VERSIONS[h2load]}; ${VERSIONS[openssl]}; ${VERSIONS[python3]}
- Settings: DURATION=$DURATION, WARMUP=$WARMUP, CONNECTIONS=$CONNECTIONS, UPSTREAM_DURATION=$UPSTREAM_DURATION, IDLE_CONNS=$IDLE_CONNS, HANDSHAKE_CLIENTS=$HANDSHAKE_CLIENTS, TLS_KEY=$TLS_KEY, FORWARD_HEADERS=$FORWARD_HEADERS, scenarios: $SCENARIOS

**Proxy CPU µs per request** is the proxy's utime+stime (all its processes and threads, from
/proc/PID/stat) during the measured run divided by the requests completed. The load generator
shares one core with the backend, so requests/s mostly measures that core; CPU per request is
the number that tells the proxies apart. "× nginx" / "× haproxy" divide a row by nginx's /
HAProxy's row (lower is better for CPU, latency and memory). "Other processes %" is the CPU
(in % of one core) that went to anything but the proxy, the backend and the load generator
during the run; above $NOISE_PCT % the run is listed as noisy.

## Targets (issue 2)

| target | measured | result |
|---|---|---|
EOF
        round_ratio s1 portico nginx; h1=$RATIO h1_rounds=$RATIO_ROUNDS
        h2=$( [[ -n ${R[s2.portico.cpu_us]:-} && -n ${R[s2.nginx.cpu_us]:-} ]] && calc %.2f "${R[s2.portico.cpu_us]} / ${R[s2.nginx.cpu_us]}" || true)
        round_ratio s3 nginx portico; hs=$RATIO hs_rounds=$RATIO_ROUNDS
        reuse=${R[s4.portico.warm.reused_pct]:-}
        rss=${R[s5.portico.idle_rss_kb]:-}
        echo "| Portico CPU per request ≤ 1.1× nginx's (HTTP/1.1, scenario 1$h1_rounds) | ${h1:-—}${h1:+×} | $(verdict "${h1:+$h1 <= 1.1}") |"
        echo "| Portico CPU per request ≤ 1.1× nginx's (HTTP/2 + TLS, scenario 2) | ${h2:-—}${h2:+×} | $(verdict "${h2:+$h2 <= 1.1}") |"
        echo "| Portico TLS handshakes per core ≥ 1.4× nginx's (scenario 3$hs_rounds) | ${hs:-—}${hs:+×} | $(verdict "${hs:+$hs >= 1.4}") |"
        echo "| ≥ 99.9% of Portico's requests on reused upstream connections (scenario 4, warm) | ${reuse:-—}${reuse:+%} | $(verdict "${reuse:+$reuse >= 99.9}") |"
        echo "| Portico idle RSS < 20 MB (scenario 5) | $(if [[ -n $rss ]]; then calc '%.1f MB' "$rss * 1024 / 1e6"; else echo —; fi) | $(verdict "${rss:+$rss * 1024 < 20e6}") |"
        echo
        echo "Handshakes per core compares 10⁶ / (proxy CPU µs per handshake); MB = 10⁶ bytes (VmRSS)."
        if ((${#NOISY[@]})); then
            echo
            echo "**Warning: other processes used the CPU during ${#NOISY[@]} of the targets' runs (see the end);" \
                 "those numbers are noisy. Re-run on a quiet machine before drawing conclusions.**"
        fi

        if want 1; then
            cat <<EOF

## 1. HTTP/1.1 keep-alive, small body

\`wrk -t1 -c$CONNECTIONS -d$DURATION --latency\` after a $WARMUP warm-up; body \`hello\\n\` (6 bytes). $(rounds_method s1 "CPU per request (by req/s for direct)")

| target | req/s | p50 ms | p99 ms | errors | proxy CPU % | **proxy CPU µs/req** | per round | × nginx | × haproxy | load core busy % | other processes % |
|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|
EOF
            for t in $(targets_for); do
                echo "| $t | $(v s1.$t.rps) | $(v s1.$t.p50_ms) | $(v s1.$t.p99_ms) | $(v s1.$t.errors) | $(v s1.$t.cpu_pct) | **$(v s1.$t.cpu_us)** | $(v s1.$t.rounds) | $(ratio s1 cpu_us "$t" nginx) | $(ratio s1 cpu_us "$t" haproxy) | $(v s1.$t.load_core_pct) | $(v s1.$t.other_pct) |"
            done
        fi
        if want 2; then
            cat <<EOF

## 2. HTTP/2 over TLS

\`h2load -c10 -m10 -D $DURATION\` (ALPN h2, TLS to the proxy, HTTP/1.1 keep-alive to the backend) after a $WARMUP warm-up; latency percentiles from h2load's per-request log.

| target | req/s | mean ms | p50 ms | p99 ms | errors | proxy CPU % | **proxy CPU µs/req** | × nginx | × haproxy | load core busy % | other processes % |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
EOF
            for t in $(targets_for); do
                echo "| $t | $(v s2.$t.rps) | $(v s2.$t.mean_ms) | $(v s2.$t.p50_ms) | $(v s2.$t.p99_ms) | $(v s2.$t.errors) | $(v s2.$t.cpu_pct) | **$(v s2.$t.cpu_us)** | $(ratio s2 cpu_us "$t" nginx) | $(ratio s2 cpu_us "$t" haproxy) | $(v s2.$t.load_core_pct) | $(v s2.$t.other_pct) |"
            done
        fi
        if want 3; then
            cat <<EOF

## 3. TLS full handshakes

$HANDSHAKE_CLIENTS parallel \`openssl s_time -new -www PATH -time $(secs_of "$DURATION")\` (no SNI): every connection is a full handshake (no session ID, no ticket offered), one HTTP/1.0 \`GET /\` with a \`Host\` header, then the server closes. Handshakes per core = 10⁶ / CPU µs per handshake (the proxy core's capacity; the client core is the bottleneck for handshakes/s). Certificate: $([[ $TLS_KEY == rsa ]] && echo "RSA 2048" || echo "ECDSA P-256"). $(rounds_method s3 "CPU per handshake")

| proxy | negotiated | handshakes | handshakes/s | proxy CPU % | **proxy CPU µs/handshake** | per round | handshakes per core | × nginx | × haproxy | load core busy % | other processes % |
|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|
EOF
            for t in $(targets_for noproxyless); do
                echo "| $t | $(v tls.$t) | $(v s3.$t.handshakes) | $(v s3.$t.hs_per_s) | $(v s3.$t.cpu_pct) | **$(v s3.$t.cpu_us)** | $(v s3.$t.rounds) | $(v s3.$t.hs_per_core) | $(ratio s3 hs_per_core "$t" nginx) | $(ratio s3 hs_per_core "$t" haproxy) | $(v s3.$t.load_core_pct) | $(v s3.$t.other_pct) |"
            done
        fi
        if want 4; then
            cat <<EOF

## 4. Upstream connections

\`wrk -t1 -c$CONNECTIONS -d$UPSTREAM_DURATION\` twice: "cold" is the first load after the proxy starts (its upstream pool fills), "warm" the same load right after (steady state). Upstream connections opened are counted by the backend's \`stub_status\` accepts, upstream requests by its request counter.

| proxy | cold: upstream requests | cold: connections opened | cold: per 10k requests | warm: upstream requests | warm: connections opened | warm: per 10k requests | **warm: requests on reused connections** |
|---|---:|---:|---:|---:|---:|---:|---:|
EOF
            for t in $(targets_for noproxyless); do
                echo "| $t | $(v s4.$t.cold.requests) | $(v s4.$t.cold.opened) | $(v s4.$t.cold.per_10k) | $(v s4.$t.warm.requests) | $(v s4.$t.warm.opened) | $(v s4.$t.warm.per_10k) | **$(v s4.$t.warm.reused_pct)%** |"
            done
        fi
        if want 5; then
            cat <<EOF

## 5. Memory

Idle: VmRSS (and PSS, which does not double-count pages shared between nginx's master and worker) summed over the proxy's processes after start, before any load. Per connection: VmRSS with $IDLE_CONNS idle HTTP/1.1 keep-alive connections open (one \`GET /\` served on each, \`bench/idle_conns.py\`) minus VmRSS just before opening them, divided by the connections open.

| proxy | processes | idle RSS MiB | idle PSS MiB | × nginx | idle connections | RSS MiB with them | **KiB per idle connection** | × nginx | × haproxy |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|
EOF
            for t in $(targets_for noproxyless); do
                echo "| $t | $(v s5.$t.processes) | $(mib s5.$t.idle_rss_kb) | $(mib s5.$t.idle_pss_kb) | $(ratio s5 idle_rss_kb "$t" nginx) | $(v s5.$t.conns) | $(mib s5.$t.loaded_rss_kb) | **$(v s5.$t.per_conn_kib)** | $(ratio s5 per_conn_kib "$t" nginx) | $(ratio s5 per_conn_kib "$t" haproxy) |"
            done
        fi
        if ((${#NOTES[@]} + ${#NOISY[@]})); then
            echo
            echo "## Problems seen during the run"
            echo
            for t in $(targets_for); do
                if [[ -n ${NOTES[$t]:-} ]]; then echo "- $t: ${NOTES[$t]}"; fi
                if [[ -n ${NOISY[$t]:-} ]]; then
                    echo "- $t: noisy runs, other processes took this share of a core: ${NOISY[$t]}"
                fi
            done
        fi
    }
}

# Scenario 6: plugin chains.
report_plugins() {
    local v d4 d5 d5all cpu_model
    cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    d4=${R[s6.p4-none.delta]:-} d5=${R[s6.h5-h0.delta]:-} d5all=${R[s6.h5-none.delta]:-}
    cat <<EOF
## 6. Plugin chains (Portico only)

Produced by \`$(run_cmd)\` (method: [bench/README.md](../bench/README.md#scenarios)).

- Date: $(date -u '+%Y-%m-%d %H:%M UTC')
- Machine: $(nproc) cores, $cpu_model, Linux ${VERSIONS[kernel]}; Portico pinned to CPU $PROXY_CPU (one worker), backend nginx and wrk pinned to CPU $LOAD_CPU
- Versions: ${VERSIONS[portico]:-portico (unknown)}; plugin \`tests/plugins/rw\` built with the public \`proxy-wasm\` crate 0.2.5 by \`scripts/build-test-plugins.sh\`; wrk ${VERSIONS[wrk]}
- Settings: PLUGIN_DURATION=$PLUGIN_DURATION per run, WARMUP=$WARMUP per chain, CONNECTIONS=$CONNECTIONS, PLUGIN_ROUNDS=$PLUGIN_ROUNDS

Scenario 1's load — \`wrk -t1 -c$CONNECTIONS -d$PLUGIN_DURATION --latency\`, HTTP/1.1 keep-alive, body \`hello\\n\` — with one more request header, \`x-rw-in: 1\`, on every chain including the baseline. One Portico serves all chains, a listener each, same route and upstream. **Every chain is measured in pairs with the 0-plugin chain**: $PLUGIN_ROUNDS rounds, in each of which every other chain runs once right before or right after a run of the baseline (alternating from round to round; the chains' order rotated), because this machine's speed drifts by more than a plugin costs over the minutes a round takes, but hardly over the seconds of a pair. The plugin is \`rw\` ([tests/plugins/README.md](../tests/plugins/README.md)): \`on_http_request_headers\` makes N header hostcalls, alternating get \`x-rw-in\` and set \`x-rw-<i>\`; its other callbacks are the SDK's defaults, but each plugin still gets every phase (context create, request headers, response headers, response body, log, done, delete). Before measuring, every chain's plugins were shown to run: the backend echoed the headers they wrote. A row's proxy CPU µs/req is the median of its rounds (each listed under "per round"; the baseline's round is the median of its runs in that round); **Δ** is the median over the rounds of (this chain − the baseline run of its pair), and "Δ range" the smallest and largest of those per-round differences: the error bar. Five hostcalls against none is the difference of the two chains' per-round differences. Requests, req/s, CPU % and busy % are over all runs; p50/p99 the mean of the runs'; "other processes %" the worst run's.

| chain | requests | req/s | p50 ms | p99 ms | errors | proxy CPU % | **proxy CPU µs/req** | per round | **Δ vs 0 plugins, µs** | Δ range | load core busy % | other processes % |
|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|---:|---:|
EOF
    for v in "${PLUGIN_VARIANTS[@]}"; do
        echo "| ${PLUGIN_LABEL[$v]} | $(v s6.$v.requests) | $(v s6.$v.rps) | $(v s6.$v.p50_ms) | $(v s6.$v.p99_ms) | $(v s6.$v.errors) | $(v s6.$v.cpu_pct) | **$(v s6.$v.cpu_us)** | $(v s6.$v.rounds) | $(if [[ $v == none ]]; then echo "(baseline)"; else echo "**$(v s6.$v-none.delta)**"; fi) | $(v s6.$v-none.spread) | $(v s6.$v.load_core_pct) | $(v s6.$v.other_pct) |"
    done
    cat <<EOF

### Targets (plugin overhead)

| target | measured | result |
|---|---|---|
| a 4-plugin chain adds ≤ 6 µs of proxy CPU per request (4 plugins − 0 plugins) | ${d4:-—}${d4:+ µs} (range ${R[s6.p4-none.spread]:-—}) | $(delta_verdict s6.p4-none 6) |
| stretch: a 4-plugin chain adds ≤ 3 µs | ${d4:-—}${d4:+ µs} | $(delta_verdict s6.p4-none 3) |
| one plugin's five hostcalls add ≤ 2 µs (1 plugin with 5 hostcalls − the same plugin with 0) | ${d5:-—}${d5:+ µs} (range ${R[s6.h5-h0.spread]:-—}) | $(delta_verdict s6.h5-h0 2) |
| stricter reading: one plugin with five hostcalls, the plugin included, adds ≤ 2 µs (5 hostcalls − 0 plugins) | ${d5all:-—}${d5all:+ µs} (range ${R[s6.h5-none.spread]:-—}) | $(delta_verdict s6.h5-none 2) |

EOF
    echo "Derived: per plugin in the 4-chain $(if [[ -n $d4 ]]; then calc '%.2f µs' "$d4 / 4"; else echo —; fi);" \
        "a plugin that makes no hostcall $(v s6.h0-none.delta) µs;" \
        "per hostcall $(if [[ -n $d5 ]]; then calc '%.2f µs' "$d5 / 5"; else echo —; fi) ((5 hostcalls − 0) / 5)." \
        "CPU is counted in clock ticks of $(calc %.0f "1000 / $CLK_TCK") ms, about 0.01 µs/req over one run; the spread between rounds, not the tick, is the uncertainty." \
        "Plugin failures during the run (portico_plugin_failures_total): $(v s6.failures)."
    if [[ -n ${NOISY[plugins]:-} ]]; then
        echo
        echo "**Warning: other processes used the CPU during some of these runs; the numbers are noisy. Re-run on a quiet machine before drawing conclusions.**"
    fi
    if [[ -n ${NOTES[plugins]:-} || -n ${NOISY[plugins]:-} ]]; then
        echo
        echo "### Problems seen during scenario 6"
        echo
        if [[ -n ${NOTES[plugins]:-} ]]; then echo "- ${NOTES[plugins]}"; fi
        if [[ -n ${NOISY[plugins]:-} ]]; then
            echo "- noisy runs, other processes took this share of a core: ${NOISY[plugins]}"
        fi
    fi
}

# Scenario 7: the first-party plugins.
report_firstparty() {
    local v m c cpu_model d4 sizes="" us
    cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    d4=${R[s7.chain4-none.delta]:-}
    for m in "${FP_MODULES[@]}" jwt-fallback; do
        sizes+="${sizes:+, }\`$m.wasm\` $(stat -c %s "$FP_WASM_DIR/$m.wasm" 2>/dev/null || echo '?') bytes"
    done
    sizes+=" (\`jwt-fallback.wasm\`: jwt built with the SDK's \`crypto-fallback\`, for hosts without Portico's verifier; not measured here)"
    cat <<EOT
## 7. First-party plugins (Portico only)

Produced by \`$(run_cmd)\` (method: [bench/README.md](../bench/README.md#scenarios)).

- Date: $(date -u '+%Y-%m-%d %H:%M UTC')
- Machine: $(nproc) cores, $cpu_model, Linux ${VERSIONS[kernel]}; Portico pinned to CPU $PROXY_CPU (one worker), backend nginx and wrk pinned to CPU $LOAD_CPU
- Versions: ${VERSIONS[portico]:-portico (unknown)}; plugins from \`plugins/\` built by \`scripts/build-plugins.sh\` (profile \`plugin\`): $sizes; wrk ${VERSIONS[wrk]}
- Settings: PLUGIN_DURATION=$PLUGIN_DURATION per run, WARMUP=$WARMUP per chain, CONNECTIONS=$CONNECTIONS, PLUGIN_ROUNDS=$PLUGIN_ROUNDS$([[ $CRITERION == 1 ]] && echo ", criterion: \`$CRITERION_ARGS\`")

Scenario 6's method with the plugins of \`plugins/\`: scenario 1's load — \`wrk -t1 -c$CONNECTIONS -d$PLUGIN_DURATION --latency\`, HTTP/1.1 keep-alive, body \`hello\\n\` — on one Portico with a listener per chain, same route and upstream, every chain measured in pairs with the 0-plugin chain over $PLUGIN_ROUNDS rounds. **Every chain's request, the baseline's too, carries three more headers**: \`authorization: Bearer <token>\` (the RS256 token, except on the HS256 and ES256 jwt chains, which get their algorithm's: ${#FP_TOKEN[HS256]}, ${#FP_TOKEN[RS256]} and ${#FP_TOKEN[ES256]} bytes for HS256, RS256, ES256), \`x-api-key: <the key>\` and \`x-debug: 1\`. The tokens are minted at the start of the run by \`proxy/examples/bench_tokens.rs\` with the jwt plugin's test keys (issuer \`https://idp.test\`, audience \`api\`, valid for a day). The plugins are configured as in [bench/micro/first_party.rs](../bench/micro/first_party.rs):

- jwt: \`issuer: https://idp.test\`, \`audiences: [api]\`, an inline JWKS of an RSA 2048, an EC P-256 and an HMAC key; \`cache_size: 10000\` (warm: the request repeats one token, verified once and then found in the cache) or \`cache_size: 0\` (cold: every request verifies the signature, with Portico's native \`portico.verify_signature\`);
- rate-limit: \`rate: 1000000000, per: 1s, key: client_ip\` (never refuses; every request updates the client's bucket);
- auth: \`type: api_key\`, one key (by its SHA-256), in \`x-api-key\`; it strips the key and sets \`x-api-key-name\`;
- header-rewrite: request \`set: { x-request-host: "{request.host}" }\`, \`remove: [x-debug]\`; response \`set: { strict-transport-security: ... }\`, \`remove: [server]\`;
- chain of 4: jwt (RS256, warm) + rate-limit + auth api_key + header-rewrite, in that order, entries of their own.

Before measuring, each chain answered \`hello\` through its plugins, and they were shown to run: requests without the token (jwt) or without the key (auth) got 401, the backend saw what auth and header-rewrite changed, the response lost \`server\` and gained HSTS exactly where header-rewrite runs, and rate-limit's \`requests_allowed\` counter moved. A chain that failed is listed under the problems and not measured. Columns as in scenario 6: proxy CPU µs/req is the median of the rounds; **Δ** the median over the rounds of (this chain − the baseline run of its pair), "Δ range" the smallest and largest of those per-round differences.

| chain | token | requests | req/s | p50 ms | p99 ms | errors | proxy CPU % | **proxy CPU µs/req** | per round | **Δ vs 0 plugins, µs** | Δ range | load core busy % | other processes % |
|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|---:|---:|
EOT
    for v in "${FP_VARIANTS[@]}"; do
        echo "| ${FP_LABEL[$v]} | ${FP_ALG[$v]} | $(v "s7.$v.requests") | $(v "s7.$v.rps") | $(v "s7.$v.p50_ms") | $(v "s7.$v.p99_ms") | $(v "s7.$v.errors") | $(v "s7.$v.cpu_pct") | **$(v "s7.$v.cpu_us")** | $(v "s7.$v.rounds") | $(if [[ $v == none ]]; then echo "(baseline)"; else echo "**$(v "s7.$v-none.delta")**"; fi) | $(v "s7.$v-none.spread") | $(v "s7.$v.load_core_pct") | $(v "s7.$v.other_pct") |"
    done
    cat <<EOT

Plugin failures during the run (portico_plugin_failures_total): $(v s7.failures).

### Targets (first-party plugins)

| target | measured | result |
|---|---|---|
| the warm 4-plugin chain (jwt RS256 warm + rate-limit + auth api_key + header-rewrite) adds ≤ 10 µs of proxy CPU per request | ${d4:-—}${d4:+ µs} (range ${R[s7.chain4-none.spread]:-—}) | $(delta_verdict s7.chain4-none 10) |
EOT
    for c in RS256 ES256; do
        echo "| $c cold: Δ vs native verification cost | $(fp_native_line "$c") | $(fp_native_ratio "$c") |"
    done
    if [[ $CRITERION == 1 ]]; then
        cat <<EOT

In process ([bench/micro/first_party.rs](../bench/micro/first_party.rs), \`cargo bench -p portico --bench first_party -- --noplot $CRITERION_ARGS\`, these cases only, pinned to CPU $PROXY_CPU after the load, while other processes took $(v s7.c.other_pct) % of that core): one request's stream through the chain (\`Chain::start\`, request and response headers, the drop that ends the contexts) on a current-thread runtime, no network; "native" is \`jsonwebtoken::decode\` (aws-lc-rs) of the same token, its key parsed once. Criterion's mean with its confidence interval:

| case | time per iteration |
|---|---:|
EOT
        for c in "${FP_CRITERION_CASES[@]}"; do
            us=$(slug "$c")
            if [[ -n ${R[s7.c.$us.mean]:-} ]]; then
                echo "| $c | ${R[s7.c.$us.mean]} µs [${R[s7.c.$us.lo]}, ${R[s7.c.$us.hi]}] |"
            else
                echo "| $c | — |"
            fi
        done
    fi
    if [[ -n ${NOISY[firstparty]:-} ]]; then
        echo
        echo "**Warning: other processes used the CPU during some of these runs; the numbers are noisy. Re-run on a quiet machine before drawing conclusions.**"
    fi
    if [[ -n ${NOTES[firstparty]:-} || -n ${NOISY[firstparty]:-} ]]; then
        echo
        echo "### Problems seen during scenario 7"
        echo
        if [[ -n ${NOTES[firstparty]:-} ]]; then echo "- ${NOTES[firstparty]}"; fi
        if [[ -n ${NOISY[firstparty]:-} ]]; then
            echo "- noisy runs, other processes took this share of a core: ${NOISY[firstparty]}"
        fi
    fi
}

# fp_native_line ALG: the cold jwt chain's Δ under load, and in process the cold jwt stream
# beside the native decode of the same token.
fp_native_line() {
    local alg=$1 lc d jwt native
    lc=$(tr '[:upper:]' '[:lower:]' <<<"$alg")
    d=${R[s7.jwt-$lc-cold-none.delta]:-}
    jwt=${R[s7.c.jwt_${alg}_cold.mean]:-} native=${R[s7.c.native_$alg.mean]:-}
    printf 'under load: Δ %s (range %s); in process: jwt %s cold %s, native %s %s' \
        "${d:-—}${d:+ µs}" "${R[s7.jwt-$lc-cold-none.spread]:-—}" \
        "$alg" "${jwt:-—}${jwt:+ µs}" "$alg" "${native:-—}${native:+ µs}"
    if [[ -n $d && -n $native ]]; then
        printf '; Δ under load − native: %s µs' "$(calc %+.2f "$d - $native")"
    fi
}
fp_native_ratio() {   # fp_native_ratio ALG: jwt ALG cold in process ÷ native ALG
    local jwt=${R[s7.c.jwt_${1}_cold.mean]:-} native=${R[s7.c.native_$1.mean]:-}
    if [[ -n $jwt && -n $native ]] && awk "BEGIN { exit !($native > 0) }"; then
        local verdict="NOT MET"
        awk "BEGIN { exit !($jwt / $native <= 1.1) }" && verdict="MET"
        echo "jwt cold in process ÷ native: $(calc '%.2f×' "$jwt / $native") (target ≤ 1.1×): **$verdict**"
    else
        echo "not measured"
    fi
}

# delta_verdict KEY LIMIT (KEY: S.V-BASE): MET / NOT MET on the median difference; when the
# per-round range reaches across LIMIT, the verdict says the run could not separate the two.
delta_verdict() {
    local d=${R[$1.delta]:-} range=${R[$1.spread]:-} lo hi
    [[ -n $d ]] || { echo "not measured"; return 0; }
    read -r lo _ hi <<<"$range"
    if awk "BEGIN { exit !($lo <= $2 && $hi > $2) }"; then
        echo "$(verdict "$d <= $2") (inconclusive: the rounds range from $lo to $hi µs, across the limit)"
    else
        verdict "$d <= $2"
    fi
}

# Regenerates the blocks this run produced ($TMP/report.NAME.md) in OUTPUT and keeps the rest.
# A block missing from the file goes where REPORT_BLOCKS orders it: right before the next block
# the file has, or right after the previous one, or else at the end.
write_report() {
    local -a blocks=()
    if want_any 1 2 3 4 5; then report_load >"$TMP/report.load.md"; blocks+=(load); fi
    if want 6 && with_portico; then report_plugins >"$TMP/report.plugins.md"; blocks+=(plugins); fi
    if want 7 && with_portico; then report_firstparty >"$TMP/report.firstparty.md"; blocks+=(firstparty); fi
    if ((${#blocks[@]} == 0)); then log "no scenario ran: $OUTPUT left as it was"; return 0; fi
    mkdir -p "$(dirname "$OUTPUT")"
    if [[ ! -s $OUTPUT ]]; then
        printf '%s\n' "$REPORT_TITLE" >"$OUTPUT"
    elif ! grep -q '^<!-- bench/run.sh:' "$OUTPUT"; then
        # Written before the blocks existed, all of it by scenarios 1-5: make it the load block.
        { printf '%s\n\n%s\n' "$REPORT_TITLE" "<!-- bench/run.sh:load begin -->"
          sed '1{/^# /d}' "$OUTPUT"
          printf '\n%s\n' "<!-- bench/run.sh:load end -->"; } >"$TMP/report.old.md"
        cat "$TMP/report.old.md" >"$OUTPUT"
    fi
    awk -v dir="$TMP" -v fresh="${blocks[*]}" -v known="$REPORT_BLOCKS" '
        function emit(name,   line, f) {
            f = dir "/report." name ".md"
            print "<!-- bench/run.sh:" name " begin -->"
            print ""
            while ((getline line < f) > 0) print line
            close(f)
            print ""
            print "<!-- bench/run.sh:" name " end -->"
            done[name] = 1
        }
        function marker(line, kind) {   # the block name of a begin/end marker line, else ""
            if (line !~ ("^<!-- bench/run.sh:[a-z]+ " kind " -->")) return ""
            sub(/^<!-- bench\/run.sh:/, "", line); sub(/ .*/, "", line)
            return line
        }
        function missing(name) { return want[name] && !present[name] && !done[name] }
        BEGIN {
            n = split(fresh, f, " "); for (i = 1; i <= n; i++) want[f[i]] = 1
            k = split(known, order, " "); for (i = 1; i <= k; i++) rank[order[i]] = i
        }
        NR == FNR { if ((m = marker($0, "begin")) != "") present[m] = 1; next }   # first pass
        (m = marker($0, "begin")) != "" {
            # Missing blocks that come before this one.
            for (i = 1; i < rank[m]; i++) if (missing(order[i])) { emit(order[i]); print "" }
            if (want[m]) { emit(m); skipping = 1 } else print
            next
        }
        (m = marker($0, "end")) != "" {
            if (!skipping) print
            skipping = 0
            # Missing blocks that come after this one, up to the next block the file has.
            if (m in rank)
                for (i = rank[m] + 1; i <= k && !present[order[i]]; i++)
                    if (missing(order[i])) { print ""; emit(order[i]) }
            next
        }
        skipping { next }
        { print }
        END { for (i = 1; i <= n; i++) if (!done[f[i]]) { print ""; emit(f[i]) } }
    ' "$OUTPUT" "$OUTPUT" >"$TMP/report.new.md"
    cat "$TMP/report.new.md" >"$OUTPUT"
    log "wrote $OUTPUT (regenerated: ${blocks[*]}; the rest kept)"
}

print_summary() {
    local t v
    if want_any 1 2 3 4 5; then
        for t in $(targets_for); do
            log "$(printf '%-8s s1 %6s rps %6s µs/req | s2 %6s rps %6s µs/req | s3 %6s µs/hs | s4 %5s%% reused | s5 idle %6s kB %6s KiB/conn' \
                "$t" "$(v s1.$t.rps)" "$(v s1.$t.cpu_us)" "$(v s2.$t.rps)" "$(v s2.$t.cpu_us)" \
                "$(v s3.$t.cpu_us)" "$(v s4.$t.warm.reused_pct)" "$(v s5.$t.idle_rss_kb)" "$(v s5.$t.per_conn_kib)")"
        done
    fi
    if want 6 && with_portico; then
        for v in "${PLUGIN_VARIANTS[@]}"; do
            log "$(printf 's6 %-38s %6s rps %7s µs/req  Δ %6s µs' "${PLUGIN_LABEL[$v]}" \
                "$(v s6.$v.rps)" "$(v s6.$v.cpu_us)" "$(v s6.$v-none.delta)")"
        done
        log "s6 5 hostcalls − 0 hostcalls: $(v s6.h5-h0.delta) µs"
    fi
    if want 7 && with_portico; then
        for v in "${FP_VARIANTS[@]}"; do
            log "$(printf 's7 %-16s %6s rps %7s µs/req  Δ %6s µs' "$v" \
                "$(v "s7.$v.rps")" "$(v "s7.$v.cpu_us")" "$(v "s7.$v-none.delta")")"
        done
        log "s7 chain4 Δ ≤ 10 µs: $(delta_verdict s7.chain4-none 10); RS256 cold: $(fp_native_ratio RS256); ES256 cold: $(fp_native_ratio ES256)"
    fi
}

# ---------------------------------------------------------------------------------------------
main() {
    local t
    if (( $(nproc) < 2 )); then
        log "fewer than 2 cores: backend and load generator share CPU $PROXY_CPU"
        LOAD_CPU=$PROXY_CPU LOAD=(taskset -c "$PROXY_CPU")
    fi
    if want 6 && ! with_portico; then log "scenario 6 (plugin chains) needs portico in PROXIES: skipped"; fi
    if want 7 && ! with_portico; then log "scenario 7 (first-party plugins) needs portico in PROXIES: skipped"; fi
    install_deps
    resolve_portico
    raise_fd_limit
    check_ports
    TMP=$(mktemp -d -t portico-bench.XXXXXX)
    build_plugins
    build_firstparty
    printf '%s\n' "$WRK_LUA" >"$TMP/bench.lua"
    make_certs
    collect_versions
    start_backend
    # Scenarios 1-5 compare the proxies (each started fresh); 6 and 7 are Portico with plugins.
    if want_any 1 2 3 4 5; then
        for t in $PROXIES; do run_target "$t"; done
        if [[ $DIRECT == 1 ]]; then run_target direct; fi
        more_rounds   # scenarios 1 and 3: their further rounds
    fi
    if want 6 && with_portico; then run_plugins; fi
    if want 7 && with_portico; then run_firstparty; fi
    write_report
    print_summary
}

main "$@"
