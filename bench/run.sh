#!/usr/bin/env bash
# shellcheck disable=SC2317  # cleanup and its helpers run from traps
# meterway benchmark: one command, one machine, one run.
#   bash bench/run.sh        (full run: about 25 min with the defaults)
#
# Measures, in this order and in the same run:
#   startup  start to first 200 and idle RSS (measure_startup.py, STARTUP_RUNS
#            cold starts) of the floor and of meterway
#   direct   the harness's mock upstream alone (baseline for "added p50")
#   floor    the pass-through floor, variant a of floor/variants.sh
#            (floor/asgi_raw.py on uvicorn), 1 worker
#   meterway `meterway serve --config bench/config.yaml`, 1 worker
#   keyed    meterway again, with Redis (BENCH_REDIS_URL) and a virtual key
#            carrying a budget and rpm/tpm/parallel limits too high to refuse
#            anything: every request reserves and settles in Redis and adds
#            its cost to the key's spend in the store: the ledger on PostgreSQL
#            (a database of its own on BENCH_PG_URL, dropped after; SQLite in
#            OUT_DIR when PostgreSQL cannot be reached)
#   litellm  only with RUN_LITELLM=1 and a LiteLLM venv: the harness's
#            run_litellm.sh (startup + load), 1 worker
# then bench/report.py prints the table and writes it to <out>/report.md.
#
# The harness is shared/bench beside the repo (SHARED_BENCH overrides it); it
# is called in place, never copied.  Load settings are the harness's BENCH_*
# variables (BENCH_DURATION 15, BENCH_REPEATS 3, BENCH_WARMUP 3,
# BENCH_CONCURRENCY 1,16,64, BENCH_SCENARIOS chat,stream,embed, BENCH_CLIENT,
# BENCH_MAX_REQUESTS, ...).  Other knobs (defaults):
#   OUT_DIR=bench/out/<UTC stamp>   MW_VENV=/tmp/mwvenv
#   METERWAY_BIN=$MW_VENV/bin/meterway  FLOOR_PYTHON=$MW_VENV/bin/python
#   BENCH_VENV=/tmp/bench-venv (mock)   LITELLM_VENV=/tmp/litellm-venv
#   MOCK_PORT=18090 MW_PORT=18100 FLOOR_PORT=18101
#   LITELLM_PORT=18102 LITELLM_MOCK_PORT=18091 (run_litellm.sh starts its own mock)
#   MW_CONFIG=bench/config.yaml (bench/config-routed.yaml: three deployments, retries, fallbacks)
#   STARTUP_RUNS=3  RUN_LITELLM=0  STEPS="startup direct floor meterway keyed litellm report"
#   BENCH_REDIS_URL=redis://127.0.0.1:6379/0 (keyed; a new key each run, so runs never share counters)
#   BENCH_PG_URL=postgresql://postgres@127.0.0.1:5432 (keyed: the ledger's server; "" for SQLite)
#   PYTHON=python3 (runs the stdlib-only harness scripts and report.py)
# Missing wrk or mock venv: runs the harness's setup.sh with WITH_LITELLM=0
# (SKIP_SETUP=1 to never do that; run_bench.py then falls back to pyload).
#
# All traffic is on 127.0.0.1.  Every process started here is stopped by its
# PID on exit; every load run is bounded by BENCH_DURATION and BENCH_MAX_REQUESTS.
# Exit status: 0, or 1 if a meterway scenario probe failed (see the report).
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$BENCH_DIR/.." && pwd)"
SHARED_BENCH="${SHARED_BENCH:-$REPO_ROOT/../shared/bench}"
if [ ! -f "$SHARED_BENCH/run_bench.py" ]; then
  echo "run.sh: benchmark harness not found at $SHARED_BENCH (set SHARED_BENCH)" >&2
  exit 2
fi
SHARED_BENCH="$(cd "$SHARED_BENCH" && pwd)"
export SHARED_BENCH

PY=${PYTHON:-python3}
MW_VENV=${MW_VENV:-/tmp/mwvenv}
METERWAY_BIN=${METERWAY_BIN:-$MW_VENV/bin/meterway}
FLOOR_PYTHON=${FLOOR_PYTHON:-$MW_VENV/bin/python}
BENCH_VENV=${BENCH_VENV:-/tmp/bench-venv}
LITELLM_VENV=${LITELLM_VENV:-/tmp/litellm-venv}
MOCK_PORT=${MOCK_PORT:-18090}
MW_PORT=${MW_PORT:-18100}
FLOOR_PORT=${FLOOR_PORT:-18101}
LITELLM_PORT=${LITELLM_PORT:-18102}
LITELLM_MOCK_PORT=${LITELLM_MOCK_PORT:-18091}
STARTUP_RUNS=${STARTUP_RUNS:-3}
RUN_LITELLM=${RUN_LITELLM:-0}
SKIP_SETUP=${SKIP_SETUP:-0}
STEPS=${STEPS:-startup direct floor meterway keyed litellm report}
BENCH_REDIS_URL=${BENCH_REDIS_URL:-redis://127.0.0.1:6379/0}
BENCH_PG_URL=${BENCH_PG_URL-postgresql://postgres@127.0.0.1:5432}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT_DIR=${OUT_DIR:-$BENCH_DIR/out/$STAMP}

# Load settings: the harness's variables and defaults, exported for run_bench.py.
export BENCH_DURATION=${BENCH_DURATION:-15} BENCH_REPEATS=${BENCH_REPEATS:-3}
export BENCH_WARMUP=${BENCH_WARMUP:-3} BENCH_PAUSE=${BENCH_PAUSE:-1}
export BENCH_CONCURRENCY=${BENCH_CONCURRENCY:-1,16,64}
export BENCH_SCENARIOS=${BENCH_SCENARIOS:-chat,stream,embed}
export BENCH_MAX_REQUESTS=${BENCH_MAX_REQUESTS:-3000000}
export MOCK_PORT MOCK_API_BASE="http://127.0.0.1:$MOCK_PORT/v1"
export PYTHONDONTWRITEBYTECODE=1  # leave no __pycache__ in the shared harness
# run_bench.py reads these from the environment; this script passes them as flags.
unset BENCH_OUT BENCH_PIDS BENCH_UPSTREAM_PIDS BENCH_BASE_URL BENCH_LABEL BENCH_API_KEY

has() { case " $STEPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
log() { echo "== $(date -u +%T) $*"; }

# ------------------------------------------------------------ processes
MOCK_PID="" GW_PID="" STEP_PID=""
stop_pid() {  # stop one process this script started, by PID: TERM, then KILL after 30 s
  local pid=$1
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  kill -KILL "$pid" 2>/dev/null || true
}
tree_pids() {  # a PID and its descendants, parents first (found by parent PID)
  local p
  echo "$1"
  for p in $(ps -o pid= --ppid "$1" 2>/dev/null || true); do tree_pids "$p"; done
}
stop_tree() {  # a step and whatever it started (e.g. the gateway measure_startup.py runs)
  local p pids
  [ -n "$1" ] || return 0
  pids=$(tree_pids "$1")
  for p in $pids; do stop_pid "$p"; done
}
cleanup() {
  stop_tree "$STEP_PID"; STEP_PID=""
  stop_pid "$GW_PID"; GW_PID=""
  stop_pid "$MOCK_PID"; MOCK_PID=""
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM

# run_step LOGFILE CMD...: run a foreground step as a child whose PID the trap
# knows, output shown and appended to LOGFILE; returns the step's exit code.
run_step() {
  local logf=$1 rc=0; shift
  "$@" > >(tee -a "$logf") 2>&1 &
  STEP_PID=$!
  wait "$STEP_PID" || rc=$?
  STEP_PID=""
  return "$rc"
}
wait_200() {  # URL TIMEOUT_S
  local url=$1 t=${2:-60} i=0
  while [ "$i" -lt $((t * 20)) ]; do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$url" || true)" = 200 ] && return 0
    sleep 0.05; i=$((i + 1))
  done
  echo "run.sh: timeout waiting for $url" >&2
  return 1
}
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ------------------------------------------------------------ checks and setup
if [ ! -x "$METERWAY_BIN" ]; then
  echo "run.sh: no meterway at $METERWAY_BIN (set MW_VENV or METERWAY_BIN)" >&2; exit 2
fi
if ! "$FLOOR_PYTHON" -c 'import uvicorn, uvloop, httptools, aiohttp, msgspec, orjson' 2>/dev/null; then
  echo "run.sh: $FLOOR_PYTHON lacks uvicorn[standard]/aiohttp/msgspec/orjson/uvloop (set FLOOR_PYTHON)" >&2
  exit 2
fi
command -v curl >/dev/null || { echo "run.sh: curl is needed" >&2; exit 2; }
if { ! command -v wrk >/dev/null || [ ! -x "$BENCH_VENV/bin/python" ]; } && [ "$SKIP_SETUP" != 1 ]; then
  log "setup: wrk or $BENCH_VENV missing -> $SHARED_BENCH/setup.sh (WITH_LITELLM=0)"
  WITH_LITELLM=0 BENCH_VENV="$BENCH_VENV" bash "$SHARED_BENCH/setup.sh" \
    || echo "run.sh: setup.sh failed; going on with what is there" >&2
fi
command -v wrk >/dev/null || echo "run.sh: no wrk: run_bench.py falls back to loadgen/pyload.py (slower client)" >&2
PY_MOCK="$BENCH_VENV/bin/python"
[ -x "$PY_MOCK" ] || { PY_MOCK=$PY; echo "run.sh: no $BENCH_VENV: mock runs on $PY" >&2; }

litellm_on=0
if [ "$RUN_LITELLM" = 1 ] && has litellm; then
  if [ -x "$LITELLM_VENV/bin/litellm" ]; then litellm_on=1
  else echo "run.sh: RUN_LITELLM=1 but no $LITELLM_VENV/bin/litellm: LiteLLM skipped" >&2; fi
fi
ports="$MOCK_PORT $MW_PORT $FLOOR_PORT"
[ "$litellm_on" = 1 ] && ports="$ports $LITELLM_PORT $LITELLM_MOCK_PORT"
for p in $ports; do
  if port_busy "$p"; then echo "run.sh: port $p on 127.0.0.1 is in use (see *_PORT knobs)" >&2; exit 2; fi
done

# ------------------------------------------------------------ commands
MW_CMD=("$METERWAY_BIN" serve --config "${MW_CONFIG:-$BENCH_DIR/config.yaml}" --host 127.0.0.1 --port "$MW_PORT"
        --workers 1 --log-level warning)
MW_HEALTH="http://127.0.0.1:$MW_PORT/health/live"
# The floor's command comes from the harness's floor/variants.sh (variant a),
# with this run's port and python.
# shellcheck disable=SC2034  # read by variants.sh
FLOOR_DIR="$SHARED_BENCH/floor"
FLOOR_VENV=/floor-venv-placeholder
# shellcheck source=/dev/null
source "$SHARED_BENCH/floor/variants.sh"
port_of() { echo "$FLOOR_PORT"; }
FLOOR_CMD=$(cmd_of a-uvicorn-raw-aiohttp)
FLOOR_CMD=${FLOOR_CMD/#"$FLOOR_VENV/bin/python"/$FLOOR_PYTHON}
case $FLOOR_CMD in
  "$FLOOR_PYTHON -m uvicorn "*asgi_raw:app*) ;;
  *) echo "run.sh: unexpected floor command from variants.sh: $FLOOR_CMD" >&2; exit 2 ;;
esac
FLOOR_HEALTH="http://127.0.0.1:$FLOOR_PORT/health"
export GATEWAY_KEY=sk-bench  # the floor's bearer key, as meterway's master key

# ------------------------------------------------------------ the run
n_sc=$(awk -F, '{print NF}' <<<"$BENCH_SCENARIOS")
n_c=$(awk -F, '{print NF}' <<<"$BENCH_CONCURRENCY")
targets=0
for t in direct floor meterway; do has "$t" && targets=$((targets + 1)); done
[ "$litellm_on" = 1 ] && targets=$((targets + 1))
est=$(awk -v s="$n_sc" -v c="$n_c" -v d="$BENCH_DURATION" -v r="$BENCH_REPEATS" -v w="$BENCH_WARMUP" \
          -v p="$BENCH_PAUSE" -v t="$targets" -v sr="$STARTUP_RUNS" -v l="$litellm_on" \
          'BEGIN { ww = (w > 0) ? ((w < 1 ? 1 : w) + p) : 0;
                   printf "%.0f", (s * c * (ww + r * (d + p)) * t + sr * 2 * 4 + l * sr * 20) / 60 + 0.5 }')
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
log "meterway bench -> $OUT_DIR (about $est min: $BENCH_SCENARIOS x c=$BENCH_CONCURRENCY," \
    "${BENCH_DURATION}s x $BENCH_REPEATS + ${BENCH_WARMUP}s warm-up, $targets targets)"

BENCH_DIR="$BENCH_DIR" OUT_DIR="$OUT_DIR" METERWAY_BIN="$METERWAY_BIN" FLOOR_PYTHON="$FLOOR_PYTHON" \
PY_MOCK="$PY_MOCK" FLOOR_CMD="$FLOOR_CMD" MW_CMD="${MW_CMD[*]}" STAMP="$STAMP" \
LITELLM_ON="$litellm_on" "$PY" - <<'EOF'
import json, os, platform, shutil, subprocess
def out(cmd):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        return (p.stdout + p.stderr).strip().splitlines()[0] if (p.stdout + p.stderr).strip() else ""
    except Exception as e:
        return "? (%s)" % e
def versions(py, pkgs):
    code = ("import importlib.metadata as m, platform\nprint('python', platform.python_version())\n"
            "for p in %r:\n    try: print(p, m.version(p))\n    except Exception: print(p, '-')" % (pkgs,))
    try:
        return subprocess.run([py, "-c", code], capture_output=True, text=True, timeout=60).stdout.split("\n")[:-1]
    except Exception as e:
        return ["? (%s)" % e]
e = os.environ
root = os.path.dirname(e["BENCH_DIR"])
strip = lambda s: s.replace(e["SHARED_BENCH"] + "/", "<shared/bench>/").replace(root + "/", "<repo>/")
cpu = ""
with open("/proc/cpuinfo") as f:
    for line in f:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip(); break
with open("/proc/meminfo") as f:
    mem_gib = round(int(f.readline().split()[1]) / 2**20, 1)
run = {
    "stamp_utc": e["STAMP"],
    "host": {"ncpu": os.cpu_count(), "cpu": cpu, "mem_gib": mem_gib, "kernel": platform.release(),
             "loadavg_at_start": open("/proc/loadavg").read().split()[:3]},
    "bench": {k: e.get(k) for k in ("BENCH_DURATION", "BENCH_REPEATS", "BENCH_WARMUP", "BENCH_PAUSE",
                                     "BENCH_CONCURRENCY", "BENCH_SCENARIOS", "BENCH_MAX_REQUESTS",
                                     "BENCH_CLIENT", "BENCH_WRK_THREADS")},
    "wrk": out(["wrk", "--version"]) if shutil.which("wrk") else None,
    "meterway": out([e["METERWAY_BIN"], "--version"]),
    "meterway_python": versions(os.path.join(os.path.dirname(e["METERWAY_BIN"]), "python"),
                                ["uvicorn", "uvloop", "httptools", "aiohttp", "msgspec", "orjson"]),
    "floor_python": versions(e["FLOOR_PYTHON"], ["uvicorn", "uvloop", "httptools", "aiohttp", "msgspec", "orjson"]),
    "mock_python": versions(e["PY_MOCK"], ["uvloop", "orjson"]),
    "commands": {"meterway": strip(e["MW_CMD"]), "floor": strip(e["FLOOR_CMD"])},
    "litellm": e["LITELLM_ON"] == "1",
}
with open(os.path.join(e["OUT_DIR"], "run.json"), "w") as f:
    json.dump(run, f, indent=2)
EOF

"$PY_MOCK" "$SHARED_BENCH/mock_upstream.py" >> "$OUT_DIR/mock.log" 2>&1 &
MOCK_PID=$!
wait_200 "http://127.0.0.1:$MOCK_PORT/health" 20

if has startup; then
  mkdir -p "$OUT_DIR/floor" "$OUT_DIR/meterway"
  log "startup: floor (a), $STARTUP_RUNS cold starts"
  run_step "$OUT_DIR/startup.out" "$PY" "$SHARED_BENCH/measure_startup.py" --health-url "$FLOOR_HEALTH" \
    --runs "$STARTUP_RUNS" --json-out "$OUT_DIR/floor/startup.json" --log "$OUT_DIR/floor-startup.log" \
    -- bash -c "exec $FLOOR_CMD" || echo "run.sh: floor startup measurement failed" >&2
  log "startup: meterway, $STARTUP_RUNS cold starts"
  run_step "$OUT_DIR/startup.out" "$PY" "$SHARED_BENCH/measure_startup.py" --health-url "$MW_HEALTH" \
    --runs "$STARTUP_RUNS" --json-out "$OUT_DIR/meterway/startup.json" --log "$OUT_DIR/meterway-startup.log" \
    -- "${MW_CMD[@]}" || echo "run.sh: meterway startup measurement failed" >&2
fi

if has direct; then
  log "load: mock direct"
  run_step "$OUT_DIR/direct.out" "$PY" "$SHARED_BENCH/run_bench.py" --base-url "$MOCK_API_BASE" --key "" \
    --label mock-direct --upstream-pid "$MOCK_PID" --out "$OUT_DIR/direct" \
    || echo "run.sh: mock-direct run_bench rc=$?" >&2
fi

if has floor; then
  log "load: floor (a) $FLOOR_CMD"
  bash -c "exec $FLOOR_CMD" >> "$OUT_DIR/floor.log" 2>&1 &
  GW_PID=$!
  wait_200 "$FLOOR_HEALTH" 60
  run_step "$OUT_DIR/floor.out" "$PY" "$SHARED_BENCH/run_bench.py" \
    --base-url "http://127.0.0.1:$FLOOR_PORT/v1" --key sk-bench --label floor-a \
    --pid "$GW_PID" --upstream-pid "$MOCK_PID" --out "$OUT_DIR/floor" \
    || echo "run.sh: floor run_bench rc=$?" >&2
  stop_pid "$GW_PID"; GW_PID=""
fi

mw_rc=0
if has meterway; then
  log "load: meterway ${MW_CMD[*]}"
  # its own database in the run's folder: never one left by another run (or another version's schema)
  mkdir -p "$OUT_DIR/meterway-db"
  DATABASE_URL="sqlite:///$OUT_DIR/meterway-db/meterway.db" "${MW_CMD[@]}" >> "$OUT_DIR/meterway.log" 2>&1 &
  GW_PID=$!
  if wait_200 "$MW_HEALTH" 60; then
    run_step "$OUT_DIR/meterway.out" "$PY" "$SHARED_BENCH/run_bench.py" \
      --base-url "http://127.0.0.1:$MW_PORT/v1" --key sk-bench --label meterway \
      --pid "$GW_PID" --upstream-pid "$MOCK_PID" --out "$OUT_DIR/meterway" || mw_rc=$?
    [ "$mw_rc" = 0 ] || echo "run.sh: meterway run_bench rc=$mw_rc (a probe failed: see the report)" >&2
  else
    mw_rc=1
    echo "run.sh: meterway did not come up; its log:" >&2
    tail -n 30 "$OUT_DIR/meterway.log" >&2 || true
  fi
  stop_pid "$GW_PID"; GW_PID=""
fi

if has keyed; then
  mkdir -p "$OUT_DIR/keyed-db"
  KEYED_DB_URL="sqlite:///$OUT_DIR/keyed-db/meterway.db"
  KEYED_PG_DB="meterway_bench_$(echo "$STAMP" | tr 'A-Z' 'a-z')"
  if [ -n "$BENCH_PG_URL" ] && psql "$BENCH_PG_URL/postgres" -qAtc "CREATE DATABASE $KEYED_PG_DB" >/dev/null 2>&1; then
    KEYED_DB_URL="$BENCH_PG_URL/$KEYED_PG_DB"
  else
    KEYED_PG_DB=""
    echo "run.sh: PostgreSQL ($BENCH_PG_URL) not reachable: the keyed step writes its ledger to SQLite" >&2
  fi
  echo "$KEYED_DB_URL" | sed 's/^\([a-z+]*\):.*/\1/' > "$OUT_DIR/keyed-db/store"
  log "load: meterway with a virtual key, limits and budget in Redis ($BENCH_REDIS_URL), ledger on $(cat "$OUT_DIR/keyed-db/store")"
  DATABASE_URL="$KEYED_DB_URL" REDIS_URL="$BENCH_REDIS_URL" \
    "${MW_CMD[@]}" >> "$OUT_DIR/meterway-keyed.log" 2>&1 &
  GW_PID=$!
  if wait_200 "http://127.0.0.1:$MW_PORT/health/ready" 60; then
    KEYED_KEY=$(curl -s -X POST "http://127.0.0.1:$MW_PORT/key/generate" -H "Authorization: Bearer sk-bench" \
      -H 'Content-Type: application/json' \
      -d '{"key_alias": "bench", "max_budget": 1000000, "budget_duration": "30d", "rpm_limit": 100000000,
           "tpm_limit": 2000000000, "max_parallel_requests": 100000}' \
      | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["key"])')
    run_step "$OUT_DIR/keyed.out" "$PY" "$SHARED_BENCH/run_bench.py" \
      --base-url "http://127.0.0.1:$MW_PORT/v1" --key "$KEYED_KEY" --label meterway-keyed \
      --pid "$GW_PID" --upstream-pid "$MOCK_PID" --out "$OUT_DIR/keyed" || mw_rc=$?
    curl -s "http://127.0.0.1:$MW_PORT/key/info?key=$KEYED_KEY" -H "Authorization: Bearer sk-bench" \
      > "$OUT_DIR/keyed/key-info.json" || true
  else
    mw_rc=1
    echo "run.sh: meterway (keyed) did not become ready; its log:" >&2
    tail -n 30 "$OUT_DIR/meterway-keyed.log" >&2 || true
  fi
  stop_pid "$GW_PID"; GW_PID=""
  if [ -n "$KEYED_PG_DB" ]; then
    psql "$BENCH_PG_URL/postgres" -qAtc "DROP DATABASE IF EXISTS $KEYED_PG_DB WITH (FORCE)" >/dev/null 2>&1 || true
  fi
fi

if [ "$litellm_on" = 1 ]; then
  log "LiteLLM: $SHARED_BENCH/run_litellm.sh (startup + load; its own mock on $LITELLM_MOCK_PORT)"
  run_step "$OUT_DIR/litellm.out" env RESULTS="$OUT_DIR/litellm" STEPS="startup load" \
    MOCK_PORT="$LITELLM_MOCK_PORT" LITELLM_PORT="$LITELLM_PORT" NUM_WORKERS=1 \
    LITELLM_VENV="$LITELLM_VENV" BENCH_VENV="$BENCH_VENV" STARTUP_RUNS="$STARTUP_RUNS" \
    bash "$SHARED_BENCH/run_litellm.sh" || echo "run.sh: run_litellm.sh rc=$?" >&2
fi

stop_pid "$MOCK_PID"; MOCK_PID=""

if has report; then
  log "report"
  "$PY" "$BENCH_DIR/report.py" "$OUT_DIR" > "$OUT_DIR/report.md"
  cat "$OUT_DIR/report.md"
fi
log "done; results in $OUT_DIR"
exit "$mw_rc"
