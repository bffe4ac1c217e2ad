#!/usr/bin/env python3
"""Turns scripts/bench results into a table on stdout and docs/benchmarks.md.

    report.py RESULTS.tsv [--doc docs/benchmarks.md --charts docs/benchmarks]

With --doc, the results of the sections measured now replace those sections in
CHARTS/results.tsv (the committed raw numbers), so `scripts/bench --only migrate`
refreshes one section and keeps the others. Each section keeps the machine state,
versions and command of the run that measured it (CHARTS/runs.json).
"""
import json
import os
import statistics
import subprocess
import sys
from collections import OrderedDict, defaultdict

SECTIONS = ["migrate", "migrate-small", "verify", "pool-select1", "pool-point", "shard", "shard-fanout",
            "cache-get", "cache-set", "cache-l1"]
METRICS = OrderedDict([
    ("wall_s", ("wall time", "s", "{:.1f}")),
    ("plan_s", ("planning", "s", "{:.1f}")),
    ("data_s", ("data phase", "s", "{:.1f}")),
    ("rows_per_s", ("rows/s", "", "{:,.0f}")),
    ("peak_rss_mib", ("peak RSS", "MiB", "{:,.0f}")),
    ("rows_loaded", ("rows loaded", "", "{:,.0f}")),
    ("qps", ("queries/s", "", "{:,.0f}")),
    ("ops_per_s", ("ops/s", "", "{:,.0f}")),
    ("ops_per_cpu_s", ("ops per CPU second", "", "{:,.0f}")),
    ("p50_us", ("p50", "µs", "{:,.0f}")),
    ("p99_us", ("p99", "µs", "{:,.0f}")),
    ("ns_per_call", ("per call", "ns", "{:,.1f}")),
    ("overhead_pct", ("overhead", "%", "{:.1f}")),
    ("overhead_us", ("overhead", "µs", "{:,.0f}")),
    ("hit_rate_pct", ("L1 hit rate", "%", "{:.1f}")),
])
# The metric each chart shows, and whether smaller is better.
CHART = {
    "migrate": ("wall_s", True),
    "verify": ("wall_s", True),
    "pool-select1": ("qps", False),
    "pool-point": ("qps", False),
    "shard": ("ns_per_call", True),
    "shard-fanout": ("overhead_us", True),
    "cache-get": ("ops_per_s", False),
    "cache-set": ("ops_per_s", False),
    "cache-l1": ("ops_per_s", False),
}
FIELDS = ["section", "contender", "metric", "run", "value", "unit", "load1", "note", "time"]


def read_rows(path):
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            parts = line.split("\t")
            parts += [""] * (len(FIELDS) - len(parts))
            rows.append(dict(zip(FIELDS, parts)))
    return rows


def write_rows(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        f.write("#" + "\t".join(FIELDS) + "\n")
        for r in rows:
            f.write("\t".join(r.get(k, "") for k in FIELDS) + "\n")


def sh(cmd):
    try:
        out = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=20)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except Exception:  # noqa: BLE001 - a missing tool is reported as "?"
        return "?"


def machine():
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "cpu": model,
        "kernel": sh("uname -sr"),
        "os": sh(". /etc/os-release && echo \"$PRETTY_NAME\""),
        "versions": {
            "postgres (server)": os.environ.get("BENCH_PG_VERSION", "?"),
            "pgloader": sh("dpkg-query -W -f='${Version}' pgloader 2>/dev/null")
            + " (Debian; `pgloader --version`: " + sh("pgloader --version").replace('pgloader version ', '').strip('"') + ")",
            "pgbouncer": sh("pgbouncer --version"),
            "redis-benchmark": sh("redis-benchmark --version"),
            "sqlite3": " ".join(sh("sqlite3 --version").split()[:1]),
            "rustc": sh("rustc --version"),
        },
    }


def aggregate(rows):
    """(section, contender) -> metric -> {median, min, max, n, unit, loads}; plus notes."""
    agg = OrderedDict()
    notes = defaultdict(list)
    per_run = []
    for r in rows:
        key = (r["section"], r["contender"])
        agg.setdefault(key, OrderedDict())
        if r["metric"] == "-":
            notes[key].append(r["note"])
            continue
        if r["metric"] == "failed":
            notes[key].append(f"run {r['run']} failed (exit {r['value']}); {r['note']}")
            continue
        try:
            v = float(r["value"])
        except ValueError:
            continue
        m = agg[key].setdefault(r["metric"], {"values": [], "loads": [], "unit": r["unit"]})
        m["values"].append(v)
        m["loads"].append(r["load1"])
        if r["metric"] in ("wall_s", "qps", "ops_per_s", "ns_per_call", "overhead_us"):
            per_run.append(r)
    for metrics in agg.values():
        for m in metrics.values():
            vs = m["values"]
            m.update(median=statistics.median(vs), min=min(vs), max=max(vs), n=len(vs))
    return agg, notes, per_run


def fmt(metric, v):
    spec = METRICS.get(metric, (metric, "", "{:.2f}"))
    return spec[2].format(v)


def cell(metric, m):
    if m is None:
        return "–"
    s = fmt(metric, m["median"])
    if m["n"] > 1 and m["max"] != m["min"]:
        s += f" ({fmt(metric, m['min'])}–{fmt(metric, m['max'])})"
    return s


def med(agg, section, contender, metric):
    m = agg.get((section, contender), {}).get(metric)
    return None if m is None else m["median"]


def targets(agg):
    """The targets the issues set, each with the measured value and a verdict."""
    out = []

    def add(name, target, value, ok, how):
        if value is None:
            out.append((name, target, "not measured", "—", how))
        else:
            out.append((name, target, value, "**met**" if ok else "**missed**", how))

    if not any(k[0].startswith("migrate") for k in agg):
        return targets_rest(agg, out, add)
    d, p = med(agg, "migrate", "dbtool", "wall_s"), med(agg, "migrate", "pgloader", "wall_s")
    r = d / p if d and p else None
    add("migrate wall time vs pgloader", "≤ 0.40×", None if r is None else f"{r:.2f}× ({d:.1f} s vs {p:.1f} s)",
        r is not None and r <= 0.4, "issue 4")
    dd, c = med(agg, "migrate", "dbtool", "data_s"), med(agg, "migrate", "ceiling", "data_s")
    r = dd / c if dd and c else None
    add("migrate data phase vs COPY ceiling", "≤ 1.30×", None if r is None else f"{r:.2f}× ({dd:.1f} s vs {c:.1f} s)",
        r is not None and r <= 1.3, "issue 4")
    for sec, label in (("migrate", "benchmark size"), ("migrate-small", "quarter size")):
        m = med(agg, sec, "dbtool", "peak_rss_mib")
        add(f"migrate peak memory, {label}", "≤ 256 MiB", None if m is None else f"{m:.0f} MiB",
            m is not None and m <= 256, "issue 4")
    return targets_rest(agg, out, add)


def targets_rest(agg, out, add):
    """The targets of verify, pool, shard and cache (each only when measured)."""
    v, mg = med(agg, "verify", "dbtool verify", "wall_s"), med(agg, "verify", "dbtool migrate", "wall_s")
    if v is not None or any(k[0] == "verify" for k in agg):
        r = v / mg if v and mg else None
        add("verify wall time vs the migration's", "≤ 0.50×",
            None if r is None else f"{r:.2f}× ({v:.1f} s vs {mg:.1f} s)", r is not None and r <= 0.5, "issue 5")

    def ratio(section, a, b, metric, target, name, how, higher=True, show=None):
        x, y = med(agg, section, a, metric), med(agg, section, b, metric)
        if not any(k[0] == section for k in agg):
            return
        r = x / y if x and y else None
        ok = r is not None and (r >= target if higher else r <= target)
        add(name, ("≥ " if higher else "≤ ") + f"{target:.2f}×",
            None if r is None else f"{r:.2f}× ({fmt(metric, x)} vs {fmt(metric, y)}{show or ''})", ok, how)

    ratio("pool-select1", "dbtool RwPool::read()", "deadpool-postgres", "qps", 0.95,
          "pool: RwPool::read() SELECT 1 vs bare deadpool", "issue 6", show=" queries/s")
    ratio("pool-select1", "dbtool RwPool::read()", "pgbouncer (transaction)", "qps", 1.0,
          "pool: RwPool::read() SELECT 1 vs pgbouncer", "issue 6 (should beat it)", show=" queries/s")
    ratio("pool-point", "dbtool RwPool::read()", "pgbouncer (transaction)", "qps", 1.0,
          "pool: RwPool::read() point select vs pgbouncer", "issue 6 (should beat it)", show=" queries/s")
    if any(k[0] == "shard" for k in agg):
        ns = med(agg, "shard", "dbtool shard_of (buckets)", "ns_per_call")
        add("shard: shard_of (buckets scheme)", "< 100 ns", None if ns is None else f"{ns:.1f} ns",
            ns is not None and ns < 100, "issue 7")
    if any(k[0] == "shard-fanout" for k in agg):
        o = med(agg, "shard-fanout", "dbtool Router::all", "overhead_us")
        add("shard: fan-out over 4 shards, added over the slowest shard", "< 1 ms",
            None if o is None else f"{o / 1000:.3f} ms", o is not None and o < 1000, "issue 7")
    ratio("cache-get", "dbtool Cache::get", "fred GET + serde_json", "ops_per_s", 0.8,
          "cache: Cache::get vs raw fred (1 KB JSON)", "issue 8", show=" ops/s")
    if any(k[0] == "cache-l1" for k in agg):
        # "On one core": per second of the benchmark thread's CPU time, so a
        # machine busy with other work does not count against the L1.
        for name in ("dbtool Cache::get_arc (L1 hit)", "dbtool Cache::get (L1 hit)"):
            l1 = med(agg, "cache-l1", name, "ops_per_cpu_s")
            if l1 is None:
                continue
            what = name.replace("dbtool ", "").replace(" (L1 hit)", "")
            add(f"cache: L1 hits on one core ({what})", "≥ 5M/s", f"{l1 / 1e6:.2f}M/s",
                l1 >= 5e6, "issue 8")
    return out


def svg_chart(section, agg, path):
    metric, lower_better = CHART[section]
    bars = [(c, m[metric]) for (s, c), m in agg.items() if s == section and metric in m]
    if not bars:
        return False
    label, unit, _ = METRICS[metric]
    width, left, bar_h, gap, top = 720, 170, 26, 12, 44
    height = top + len(bars) * (bar_h + gap) + 30
    vmax = max(b[1]["max"] for b in bars) * 1.15 or 1
    scale = (width - left - 90) / vmax
    esc = lambda s: s.replace("&", "&amp;").replace("<", "&lt;")  # noqa: E731
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="13">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="10" y="22" font-size="15" font-weight="bold">{esc(section)}: {esc(label)}'
        f'{" (" + unit + ")" if unit else ""}, median of runs, whiskers min–max; '
        f'{"shorter" if lower_better else "longer"} is better</text>',
    ]
    for i, (name, m) in enumerate(bars):
        y = top + i * (bar_h + gap)
        w = max(1, m["median"] * scale)
        color = "#2b6cb0" if name.startswith("dbtool") else "#a0aec0"
        parts.append(f'<text x="{left - 8}" y="{y + bar_h * 0.68}" text-anchor="end">{esc(name)}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{color}"/>')
        x0, x1 = left + m["min"] * scale, left + m["max"] * scale
        yc = y + bar_h / 2
        parts.append(f'<line x1="{x0:.1f}" y1="{yc}" x2="{x1:.1f}" y2="{yc}" stroke="black"/>')
        for x in (x0, x1):
            parts.append(f'<line x1="{x:.1f}" y1="{yc - 6}" x2="{x:.1f}" y2="{yc + 6}" stroke="black"/>')
        parts.append(f'<text x="{left + max(w, m["max"] * scale) + 6:.1f}" y="{y + bar_h * 0.68}">{fmt(metric, m["median"])}</text>')
    parts.append("</svg>")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts) + "\n")
    return True


def section_table(section, agg, notes):
    keys = [k for k in agg if k[0] == section]
    if not keys:
        return []
    metrics = [m for m in METRICS if any(m in agg[k] for k in keys)]
    lines = []
    header = ["contender", "runs"] + [METRICS[m][0] + (f" ({METRICS[m][1]})" if METRICS[m][1] else "") for m in metrics] + ["load (1 min)"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["--:"] * (len(header) - 2) + ["---"]) + "|")
    for k in keys:
        ms = agg[k]
        if not ms:
            lines.append(f"| {k[1]} | 0 | " + " | ".join(["–"] * len(metrics)) + " | not measured: "
                         + "; ".join(notes.get(k, [])) + " |")
            continue
        n = max(m["n"] for m in ms.values())
        loads = next(iter(ms.values()))["loads"]
        lines.append(f"| {k[1]} | {n} | " + " | ".join(cell(m, ms.get(m)) for m in metrics)
                     + " | " + " / ".join(loads) + " |")
    for k in keys:
        if agg[k] and notes.get(k):
            lines.append("")
            lines.append(f"{k[1]}: " + "; ".join(notes[k]))
    return lines


def stdout_table(agg, notes, sections):
    print()
    print(f"{'section':<14}{'contender':<30}{'metric':<14}{'median':>14}{'min':>12}{'max':>12}{'runs':>6}")
    for (s, c), ms in agg.items():
        if s not in sections:
            continue
        if not ms:
            print(f"{s:<14}{c:<30}not measured: {'; '.join(notes.get((s, c), []))}")
        for metric, m in ms.items():
            print(f"{s:<14}{c:<30}{metric:<14}{fmt(metric, m['median']):>14}{fmt(metric, m['min']):>12}"
                  f"{fmt(metric, m['max']):>12}{m['n']:>6}")
    t = targets(agg)
    if t:
        print()
        for name, target, value, verdict, _ in t:
            print(f"{name:<40} target {target:<10} measured {value}  {verdict.strip('*')}")
    print()


def main():
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    results = args[0]
    doc = charts = None
    if "--doc" in args:
        doc = args[args.index("--doc") + 1]
    if "--charts" in args:
        charts = args[args.index("--charts") + 1]
    new = read_rows(results)
    measured = sorted({r["section"] for r in new})
    rows = new
    runs = {}
    env_meta = {
        "command": os.environ.get("BENCH_CMD", "?"),
        "started": os.environ.get("BENCH_STARTED", "?"),
        "elapsed_s": os.environ.get("BENCH_ELAPSED", "?"),
        "load_start": os.environ.get("BENCH_LOAD_START", "?"),
        "load_end": os.environ.get("BENCH_LOAD_END", "?"),
        "git": os.environ.get("BENCH_GIT", "?"),
        "profile": os.environ.get("BENCH_PROFILE", "?"),
        "scale": os.environ.get("BENCH_SCALE", "?"),
        "rows": os.environ.get("BENCH_ROWS", "?"),
        "small_scale": os.environ.get("BENCH_SMALL_SCALE", "?"),
        "small_rows": os.environ.get("BENCH_SMALL_ROWS", "?"),
        "file_mb": f"{os.path.getsize(os.environ['BENCH_DB']) / 1e6:.1f}" if os.environ.get("BENCH_DB") else "?",
        "machine": machine(),
    }
    if charts:
        os.makedirs(charts, exist_ok=True)
        store = os.path.join(charts, "results.tsv")
        rows = [r for r in read_rows(store) if r["section"] not in measured] + new
        write_rows(store, rows)
        runs_path = os.path.join(charts, "runs.json")
        if os.path.exists(runs_path):
            with open(runs_path, encoding="utf-8") as f:
                runs = json.load(f)
        for s in measured:
            runs[s] = env_meta
        with open(runs_path, "w", encoding="utf-8") as f:
            json.dump(runs, f, indent=2, ensure_ascii=False)
            f.write("\n")
    else:
        runs = {s: env_meta for s in measured}
    agg, notes, per_run = aggregate(rows)
    stdout_table(agg, notes, measured)
    if doc:
        write_doc(doc, charts, agg, notes, per_run, runs)


def write_doc(doc, charts, agg, notes, per_run, runs):
    sections = [s for s in SECTIONS if any(k[0] == s for k in agg)]
    rel = os.path.relpath(charts, os.path.dirname(doc)) if charts else None
    L = []
    L.append("# Benchmarks")
    L.append("")
    L.append("<!-- Generated by scripts/bench (scripts/bench.d/report.py); edit the prose in "
             "scripts/bench.d/notes.md, not here. -->")
    L.append("")
    L.append("dbtool measured side by side with the tool a user would otherwise pick, on one machine, in one "
             "command. Contenders alternate (the order rotates every run) and repeat; each cell is the **median**, "
             "with the spread (min–max) in brackets. The machine is shared and noisy, so the 1-minute load average "
             "is recorded next to every run: read the ratios, not the absolute times.")
    L.append("")
    L.append("Regenerate everything (about 25 minutes at the benchmark size):")
    L.append("")
    L.append("```sh\nscripts/bench                 # all sections, ~1.1M-row forums.db, 3 runs each\n"
             "scripts/bench --only migrate  # one section; the others keep their last numbers\n"
             "scripts/bench --quick         # a small version of everything in < 2 minutes (CI; writes no doc)\n```")
    L.append("")
    t = targets(agg)
    if t:
        L.append("## Targets")
        L.append("")
        L.append("| what | target | measured (medians) | verdict | from |")
        L.append("|---|---|---|---|---|")
        for name, target, value, verdict, how in t:
            L.append(f"| {name} | {target} | {value} | {verdict} | {how} |")
        L.append("")
    notes_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "notes.md")
    if os.path.exists(notes_path):
        with open(notes_path, encoding="utf-8") as f:
            L.append(f.read().rstrip())
        L.append("")
    for s in sections:
        meta = runs.get(s, {})
        L.append(f"## {s}")
        L.append("")
        if s.startswith("migrate"):
            size = (f"scale {meta.get('scale')}: {int(meta['rows']):,} rows, {meta.get('file_mb')} MB"
                    if s == "migrate" and meta.get("rows", "?").isdigit() else
                    f"scale {meta.get('small_scale')}: {int(meta['small_rows']):,} rows"
                    if meta.get("small_rows", "?").isdigit() else "")
            if size:
                L.append(f"Source: the sample forums.db at {size}.")
                L.append("")
        if charts and s in CHART and svg_chart(s, agg, os.path.join(charts, f"{s}.svg")):
            L.append(f"![{s}]({rel}/{s}.svg)")
            L.append("")
        L.extend(section_table(s, agg, notes))
        L.append("")
        if meta:
            L.append(f"Measured {meta.get('started')} at `{meta.get('git')}` ({meta.get('profile')} build) with "
                     f"`{meta.get('command')}`; load average {meta.get('load_start')} at the start, "
                     f"{meta.get('load_end')} at the end.")
            L.append("")
    L.append("## Every run")
    L.append("")
    L.append("| section | contender | run | metric | value | load (1 min) | at |")
    L.append("|---|---|--:|---|--:|--:|---|")
    for r in per_run:
        L.append(f"| {r['section']} | {r['contender']} | {r['run']} | {r['metric']} | "
                 f"{fmt(r['metric'], float(r['value']))} | {r['load1']} | {r['time']} |")
    L.append("")
    m = next(iter(runs.values()), {}).get("machine") if runs else None
    if m:
        L.append("## Machine and versions")
        L.append("")
        L.append(f"- {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB memory, {m['os']}, {m['kernel']}")
        for k, v in m["versions"].items():
            L.append(f"- {k}: {v}")
        L.append("")
    L.append("## Method")
    L.append("")
    L.append(
        "- **Server**: a PostgreSQL started by the harness (initdb in a temp dir, as the `postgres` user when root) "
        "with bulk-load settings: `fsync=off`, `full_page_writes=off`, `synchronous_commit=off`, "
        "`shared_buffers=1GB`, `maintenance_work_mem=512MB`, `max_wal_size=8GB`, autovacuum off. Every contender "
        "loads into a fresh database on this same server; a `CHECKPOINT` runs before each run so one contender's "
        "writes are not billed to the next.\n"
        "- **dbtool**: `dbtool --quiet migrate --from forums.db --to URL --report r.json` (release build); its data "
        "phase comes from the report.\n"
        "- **pgloader**: a `.load` file `WITH include drop, create tables, create indexes, reset sequences, "
        "foreign keys, prefetch rows = 10000, batch rows = 10000`, run as `pgloader --dynamic-space-size 4096` "
        "(its defaults run out of heap on this file). Script: `scripts/bench.d/pgloader-load`.\n"
        "- **COPY ceiling**: `sqlite3 -csv` of each table piped into `psql -c \"\\copy t FROM STDIN csv\"`, one "
        "table after another, biggest first, into typed tables with no keys, indexes or constraints (blobs "
        "exported as hex). It is the data phase only, so it is compared with dbtool's data phase. Script: "
        "`scripts/bench.d/ceiling-load`.\n"
        "- **Wall time and peak memory** come from `/usr/bin/time -v` (elapsed, maximum resident set size of "
        "the largest process of the run). rows/s = source rows / wall time. *rows loaded* counts the rows in "
        "the target afterwards, so a contender that drops rows shows it.\n"
        "- **Runs**: each contender runs `--runs` times (3 by default), the order rotating every run; then "
        "one run of each at a quarter of the size for peak memory at a second size.")
    L.append("")
    with open(doc, "w", encoding="utf-8") as f:
        f.write("\n".join(L))


if __name__ == "__main__":
    main()
