#!/usr/bin/env python3
"""Markdown report of one bench/run.sh run (stdlib only).

usage: report.py OUT_DIR [--shared-bench DIR] [--reference DIR]

OUT_DIR is a bench/out/<UTC stamp>/ folder written by bench/run.sh:
  direct/summary.json      mock upstream alone        (run_bench.py)
  floor/summary.json       pass-through floor (a)     (run_bench.py)
  floor/startup.json       its cold starts            (measure_startup.py)
  meterway/summary.json    meterway, 1 worker
  meterway/startup.json
  keyed/summary.json       meterway with a virtual key, budget and limits in Redis (optional)
  litellm/                 only with RUN_LITELLM=1: run_litellm.sh's folder
                           (litellm/summary.json, startup.json)
  run.json                 host, versions and settings of the run

The reference column comes from the harness's stored same-machine-kind run
(results/samerun-20261123T2108Z: mock direct, floor (a) and LiteLLM in one
session).  The meterway/LiteLLM multiple is
  (meterway RPS / floor RPS, this run) x (floor RPS / LiteLLM RPS, that run),
i.e. the floor is the yardstick carried from that run to this one.

Prints the report to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
REF_NAME = "samerun-20261123T2108Z"
REF_LABEL = "LiteLLM (2026-11-23 same-machine-kind run)"
SCENARIOS = ("chat", "stream", "embed")

# Targets for meterway (1 worker, this machine kind)
T_RPS_PCT_OF_FLOOR = 75.0  # RPS as % of the floor's, at c=64, each scenario
T_ADDED_P50_MS = 0.3  # added p50 over mock direct, at c=1, each scenario
T_CPU_MS_PER_REQ = 0.15  # gateway CPU per request, at c=64, each scenario
T_IDLE_RSS_MB = 60.0
T_START_S = 0.7


# ------------------------------------------------------------------ loading
def read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def index(summary) -> dict:
    """run_bench.py summary -> {(scenario, concurrency): aggregated row}."""
    if not summary:
        return {}
    return {(r["scenario"], int(r["concurrency"])): r for r in summary.get("results", [])}


def _num(text: str):
    try:
        return float(text)
    except ValueError:
        return None


def parse_comparison_md(path: str) -> dict[str, dict]:
    """Rows of a compare.py table, by target label: {label: {(scenario, conc): row}}."""
    out: dict[str, dict] = {}
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    header: list[str] | None = None
    for line in lines:
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "target":
            header = cells
            continue
        if header is None or "scenario" not in header or len(cells) != len(header) or set(cells[0]) <= set("-: "):
            continue
        row = dict(zip(header, cells, strict=True))
        rec = {
            "scenario": row["scenario"],
            "concurrency": int(row["conc"]),
            "rps": _num(row.get("RPS", "")),
            "p50_ms": _num(row.get("p50 ms", "")),
            "p99_ms": _num(row.get("p99 ms", "")),
        }
        out.setdefault(row["target"], {})[(rec["scenario"], rec["concurrency"])] = rec
    return out


def load_reference(ref_dir: str):
    """(litellm index, floor index, litellm meta, litellm version) of the stored run."""
    s_ll = read_json(os.path.join(ref_dir, "litellm", "summary.json"))
    ll, fl = index(s_ll), index(read_json(os.path.join(ref_dir, "floor-a", "summary.json")))
    if not ll or not fl:  # fall back to the table in comparison.md
        rows = parse_comparison_md(os.path.join(ref_dir, "comparison.md"))
        ll = ll or next((v for k, v in rows.items() if k.startswith("litellm")), {})
        fl = fl or next((v for k, v in rows.items() if k.startswith("floor")), {})
    version = ""
    try:
        with open(os.path.join(ref_dir, "versions.txt")) as f:
            for line in f:
                if line.lower().startswith("version:"):
                    version = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return ll, fl, (s_ll or {}).get("meta", {}), version


# ------------------------------------------------------------------ formatting
def g(row, key):
    return None if not row else row.get(key)


def f_rps(x) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def f_ms(x) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}"


def f_num(x, nd: int = 1) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def f_pct(x) -> str:
    return "-" if x is None else f"{x:.1f} %"


def f_mult(x) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}x" if x >= 10 else f"{x:.1f}x"


def ratio(a, b):
    return a / b if (a is not None and b) else None


def sub(a, b):
    return a - b if (a is not None and b is not None) else None


def trio(*xs, fmt=f_ms) -> str:
    return " / ".join(fmt(x) for x in xs)


def check(value, limit: float, higher_is_better: bool) -> str:
    if value is None:
        return "not measured"
    ok = value >= limit if higher_is_better else value <= limit
    return "met" if ok else "not met"


def cell_order(k):
    return (SCENARIOS.index(k[0]) if k[0] in SCENARIOS else len(SCENARIOS), k[0], k[1])


# ------------------------------------------------------------------ report
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument(
        "--shared-bench",
        default=os.environ.get("SHARED_BENCH") or os.path.join(os.path.dirname(HERE), "..", "shared", "bench"),
        help="the shared harness (default: $SHARED_BENCH or <repo>/../shared/bench)",
    )
    ap.add_argument("--reference", default="", help=f"default: <shared-bench>/results/{REF_NAME}")
    a = ap.parse_args()
    od = a.out_dir
    if not os.path.isdir(od):
        print(f"report.py: no such folder: {od}", file=sys.stderr)
        return 2
    ref_dir = a.reference or os.path.join(a.shared_bench, "results", REF_NAME)

    run = read_json(os.path.join(od, "run.json")) or {}
    s_direct = read_json(os.path.join(od, "direct", "summary.json"))
    s_floor = read_json(os.path.join(od, "floor", "summary.json"))
    s_mw = read_json(os.path.join(od, "meterway", "summary.json"))
    s_ll = read_json(os.path.join(od, "litellm", "litellm", "summary.json"))
    s_keyed = read_json(os.path.join(od, "keyed", "summary.json"))
    st_floor = read_json(os.path.join(od, "floor", "startup.json"))
    st_mw = read_json(os.path.join(od, "meterway", "startup.json"))
    st_ll = read_json(os.path.join(od, "litellm", "startup.json"))
    D, F, M, L = index(s_direct), index(s_floor), index(s_mw), index(s_ll)
    ref_ll, ref_fl, ref_meta, ref_version = load_reference(ref_dir)

    meta = next((s["meta"] for s in (s_mw, s_floor, s_direct) if s), None)
    if meta is None:  # no load results: show the settings the run was started with
        b = run.get("bench") or {}
        meta = {
            "client": b.get("BENCH_CLIENT") or "wrk",
            "duration_s": _num(b.get("BENCH_DURATION") or ""),
            "repeats": b.get("BENCH_REPEATS", "?"),
            "warmup_s": _num(b.get("BENCH_WARMUP") or ""),
        }
    cells = sorted({k for idx in (D, F, M) for k in idx}, key=cell_order)

    o: list[str] = []
    w = o.append
    w(f"# meterway benchmark, {run.get('stamp_utc') or os.path.basename(os.path.abspath(od))}")
    w("")
    host = run.get("host") or meta.get("host") or {}
    cpu = f" ({host['cpu']})" if host.get("cpu") else ""
    load = f", load average at start {' '.join(host['loadavg_at_start'])}" if host.get("loadavg_at_start") else ""
    w(
        f"Host: {host.get('ncpu', '?')} CPU{cpu}, kernel {host.get('kernel', '?')}{load}. "
        f"Load: {meta.get('wrk_version', meta.get('client', '?'))}, {f_num(meta.get('duration_s'), 0)} s x "
        f"{meta.get('repeats', '?')} runs per cell (+{f_num(meta.get('warmup_s'), 0)} s warm-up), medians shown; "
        "1 worker per gateway; all on 127.0.0.1 against the harness's mock upstream."
    )
    if run.get("meterway"):
        w("")
        w(
            f"Versions: {run['meterway']}; floor = the harness's `floor/asgi_raw.py` on uvicorn "
            "(variant a of `floor/variants.sh`)."
        )
    w("")

    # ---- main table
    ref_col = bool(ref_ll and ref_fl)
    head = [
        "scenario",
        "conc",
        "RPS direct",
        "RPS floor",
        "RPS meterway",
        "meterway % of floor",
        "p50 ms direct / floor / meterway",
        "p99 ms direct / floor / meterway",
        "added p50 ms vs direct: floor / meterway",
        "CPU ms/req floor / meterway",
        "peak RSS MB floor / meterway",
        "meterway errors / requests",
    ]
    if L:
        head += ["LiteLLM (this run) RPS", "meterway / LiteLLM (this run)"]
    if ref_col:
        head += [f"{REF_LABEL} RPS", "meterway / LiteLLM (via floor)"]
    w("| " + " | ".join(head) + " |")
    w("|---|" + "---:|" * (len(head) - 1))
    for k in cells:
        d, f, m = D.get(k), F.get(k), M.get(k)
        pct = ratio(g(m, "rps"), g(f, "rps"))
        row = [
            k[0],
            str(k[1]),
            f_rps(g(d, "rps")),
            f_rps(g(f, "rps")),
            f_rps(g(m, "rps")),
            f_pct(pct * 100 if pct is not None else None),
            trio(g(d, "p50_ms"), g(f, "p50_ms"), g(m, "p50_ms")),
            trio(g(d, "p99_ms"), g(f, "p99_ms"), g(m, "p99_ms")),
            trio(sub(g(f, "p50_ms"), g(d, "p50_ms")), sub(g(m, "p50_ms"), g(d, "p50_ms"))),
            trio(g(f, "gateway_cpu_ms_per_req"), g(m, "gateway_cpu_ms_per_req"), fmt=lambda x: f_num(x, 3)),
            trio(g(f, "gateway_peak_rss_mb"), g(m, "gateway_peak_rss_mb"), fmt=f_num),
            f"{m['errors_total']} / {m['requests_total']}" if m else "-",
        ]
        if L:
            ll = L.get(k)
            row += [f_rps(g(ll, "rps")), f_mult(ratio(g(m, "rps"), g(ll, "rps")))]
        if ref_col:
            rl, rf = ref_ll.get(k), ref_fl.get(k)
            ref_ratio = ratio(g(rf, "rps"), g(rl, "rps"))
            mult = pct * ref_ratio if (pct is not None and ref_ratio is not None) else None
            row += [f_rps(g(rl, "rps")), f_mult(mult)]
        w("| " + " | ".join(row) + " |")
    w("")
    if ref_col:
        ratios = ", ".join(
            f"{k[0]} c={k[1]} {f_mult(ratio(ref_fl[k]['rps'], ref_ll[k]['rps']))}"
            for k in sorted(ref_ll, key=cell_order)
            if k in ref_fl
        )
        ref_concs = ",".join(str(c) for c in sorted({k[1] for k in ref_ll}))
        ref_load = (
            f"{f_num(ref_meta.get('duration_s'), 0)} s x {ref_meta.get('repeats', '?')} run per cell, "
            if ref_meta
            else ""
        )
        w(
            "How the multiple is computed: *meterway / LiteLLM (via floor)* = (meterway RPS / floor RPS, this run) "
            f"x (floor RPS / LiteLLM RPS, {REF_LABEL.split('(', 1)[1].rstrip(')')}, the harness's "
            f"`results/{os.path.basename(os.path.normpath(ref_dir))}`). LiteLLM{' ' + ref_version if ref_version else ''}"
            + (
                " was also measured in this run (the columns marked *this run*); the stored run carries the"
                " comparison over through the floor, measured in both. "
                if s_ll
                else " was not run in this run: the floor, measured in both runs, carries the comparison over. "
            )
            + f'Floor / LiteLLM in that run: {ratios}. The "{REF_LABEL} RPS" column is LiteLLM\'s figure as '
            f"measured there ({ref_load}concurrency {ref_concs} only), not on this run's machine state."
        )
    else:
        w(f"(Reference run {ref_dir} not found: no LiteLLM reference column.)")
    w("")

    # ---- keyed: a virtual key with budget and limits counted in Redis
    K = index(s_keyed)
    if K:
        store_file = os.path.join(od, "keyed-db", "store")
        store = Path(store_file).read_text().strip() if os.path.exists(store_file) else "sqlite"
        ledger_on = "PostgreSQL" if store.startswith("postgres") else "SQLite"
        w("With a virtual key (budget, rpm, tpm and parallel limits, all counted in Redis, spend written")
        w(f"to the store; the ledger on {ledger_on}) against the master key (no limits, the ledger on SQLite)")
        w("and the floor, same run:")
        w("")
        w(
            "| scenario | conc | RPS floor / master key / virtual key | virtual key % of floor | p50 ms master / virtual | "
            "added p50 ms by the key | CPU ms/req master / virtual | virtual key errors / requests |"
        )
        w("|---|---:|---:|---:|---:|---:|---:|---:|")
        for k in sorted(K, key=cell_order):
            f, m, kk = F.get(k), M.get(k), K.get(k)
            pct = ratio(g(kk, "rps"), g(f, "rps"))
            w(
                f"| {k[0]} | {k[1]} | {f_rps(g(f, 'rps'))} / {f_rps(g(m, 'rps'))} / {f_rps(g(kk, 'rps'))} "
                f"| {f_pct(pct * 100 if pct is not None else None)} "
                f"| {trio(g(m, 'p50_ms'), g(kk, 'p50_ms'))} | {f_ms(sub(g(kk, 'p50_ms'), g(m, 'p50_ms')))} "
                f"| {trio(g(m, 'gateway_cpu_ms_per_req'), g(kk, 'gateway_cpu_ms_per_req'), fmt=lambda x: f_num(x, 3))} "
                f"| {kk['errors_total']} / {kk['requests_total']} |"
            )
        w("")

    # ---- startup
    w("| target | start to first 200, median s (runs) | idle RSS MB, median |")
    w("|---|---:|---:|")
    for label, st in (("floor (a)", st_floor), ("meterway", st_mw), ("LiteLLM (this run)", st_ll)):
        if st is None:
            if label != "LiteLLM (this run)":
                w(f"| {label} | not measured | - |")
            continue
        runs = ", ".join(str(r.get("ready_s")) for r in st.get("runs", []))
        w(f"| {label} | {st.get('median_ready_s')} ({runs}) | {st.get('median_idle_rss_mb')} |")
    w("")

    # ---- targets
    w("## Targets (meterway, 1 worker)")
    w("")
    w("| target | figure | status |")
    w("|---|---|---|")
    for sc in SCENARIOS:
        m, f = M.get((sc, 64)), F.get((sc, 64))
        pct = ratio(g(m, "rps"), g(f, "rps"))
        pct100 = pct * 100 if pct is not None else None
        fig = (
            f"{f_pct(pct100)} of floor ({f_rps(m['rps'])} vs {f_rps(f['rps'])} RPS)"
            if m and f and pct is not None
            else None
        )
        w(
            f"| {sc} c=64: RPS >= {T_RPS_PCT_OF_FLOOR:g} % of floor | {fig or 'not measured'} "
            f"| {check(pct100, T_RPS_PCT_OF_FLOOR, True)} |"
        )
    for sc in SCENARIOS:
        m, d = M.get((sc, 1)), D.get((sc, 1))
        added = sub(g(m, "p50_ms"), g(d, "p50_ms"))
        fig = f"{f_ms(added)} ms (p50 {f_ms(m['p50_ms'])} vs direct {f_ms(d['p50_ms'])})" if m and d else None
        w(
            f"| {sc} c=1: added p50 <= {T_ADDED_P50_MS:g} ms | {fig or 'not measured'} "
            f"| {check(added, T_ADDED_P50_MS, False)} |"
        )
    for sc in SCENARIOS:
        cpu_ms = g(M.get((sc, 64)), "gateway_cpu_ms_per_req")
        fig = f"{f_num(cpu_ms, 3)} ms/req" if cpu_ms is not None else None
        w(
            f"| {sc} c=64: CPU <= {T_CPU_MS_PER_REQ:g} ms/req | {fig or 'not measured'} "
            f"| {check(cpu_ms, T_CPU_MS_PER_REQ, False)} |"
        )
    rss = g(st_mw, "median_idle_rss_mb")
    fig = f"{rss} MB" if rss is not None else None
    w(f"| idle RSS <= {T_IDLE_RSS_MB:g} MB | {fig or 'not measured'} | {check(rss, T_IDLE_RSS_MB, False)} |")
    ready = g(st_mw, "median_ready_s")
    fig = f"{ready} s" if ready is not None else None
    w(f"| start to first 200 <= {T_START_S:g} s | {fig or 'not measured'} | {check(ready, T_START_S, False)} |")
    w("")

    # ---- probes, errors, caps
    notes = []
    targets = (("mock direct", s_direct), ("floor", s_floor), ("meterway", s_mw), ("LiteLLM (this run)", s_ll))
    for label, s in targets:
        if not s:
            if label != "LiteLLM (this run)":
                notes.append(f"- {label}: no results (step skipped or failed; see its .out file)")
            continue
        for sc, p in (s.get("probes") or {}).items():
            if not p.get("ok"):
                notes.append(f"- {label}: probe **{sc} FAILED**: `{json.dumps(p)[:600]}`")
        for r in s.get("results", []):
            where = f"- {label}: {r['scenario']} c={r['concurrency']}:"
            if r.get("errors_total"):
                notes.append(f"{where} {r['errors_total']} errors in {r['requests_total']} requests")
            if r.get("failed_runs"):
                notes.append(f"{where} {r['failed_runs']} run(s) failed")
            if r.get("capped_runs"):
                notes.append(f"{where} {r['capped_runs']} run(s) hit BENCH_MAX_REQUESTS")
    if notes:
        w("Probes and errors:")
        w("")
        o.extend(notes)
    else:
        w("Probes and errors: every probe answered well formed with usage; no load errors.")
    w("")
    w(
        "How to read: RPS = completed requests per second over a closed loop of `conc` keep-alive connections; "
        "p50/p99 = latency per request (streams: to the last byte); added p50 = p50 minus mock-direct p50 at the "
        "same scenario and concurrency; CPU ms/req = user+system CPU of the gateway's process tree per request "
        "(the contention-independent figure); peak RSS = gateway tree RSS sampled every 0.2 s during the runs; "
        "startup = process start to the first 200 on its health URL, idle RSS 2 s later. The load generator, "
        "mock and gateway share this machine's cores: compare within one run only."
    )
    print("\n".join(o))
    return 0


if __name__ == "__main__":
    sys.exit(main())
