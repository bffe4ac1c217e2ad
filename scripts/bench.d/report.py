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
import tomllib
from collections import OrderedDict, defaultdict

# The metrics, sections and goals: crates/dbtool-bench/targets.toml, the one data file.
TARGETS_FILE = os.environ.get("BENCH_TARGETS") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "crates", "dbtool-bench", "targets.toml")
with open(TARGETS_FILE, "rb") as _f:
    TARGETS = tomllib.load(_f)
SECTIONS = [s["name"] for s in TARGETS["section"]]
SCENARIO_OF = {s["name"]: s["scenario"] for s in TARGETS["section"]}
SECTION = {s["name"]: s for s in TARGETS["section"]}
METRICS = OrderedDict((k, (m["label"], m["unit"], m["format"])) for k, m in TARGETS["metrics"].items())
# The metric each chart shows, and whether smaller is better.
CHART = {s["name"]: (s["chart"], s["lower_is_better"]) for s in TARGETS["section"] if "chart" in s}
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
        if r["metric"] == CHART.get(r["section"], ("wall_s",))[0]:
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


def unit_of(metric):
    label, unit, _ = METRICS.get(metric, (metric, "", "{:.2f}"))
    return unit or label


def human(metric, v, bound=False):
    """A goal's number: millions as M; a bound without needless decimals."""
    if abs(v) >= 1e6:
        return f"{v / 1e6:g}M" if bound else f"{v / 1e6:.2f}M"
    if bound and float(v).is_integer():
        return f"{int(v):,}"
    return fmt(metric, v)


def targets(agg):
    """The goals of targets.toml whose section has rows: (what, goal, measured, verdict, from)."""
    out = []
    present = {k[0] for k in agg}
    for g in TARGETS["goal"]:
        if g["section"] not in present:
            continue
        metric = g["metric"]
        x = med(agg, g["section"], g["contender"], metric)
        bound, le = (g["max"], True) if "max" in g else (g["min"], False)
        if "vs" in g:
            y = med(agg, g.get("vs_section", g["section"]), g["vs"], metric)
            value = x / y if x is not None and y else None
            goal = ("≤ " if le else "≥ ") + f"{bound:.2f}×"
            shown = None if value is None else f"{value:.2f}× ({fmt(metric, x)} vs {fmt(metric, y)} {unit_of(metric)})"
        else:
            value = x
            goal = ("≤ " if le else "≥ ") + f"{human(metric, bound, True)} {unit_of(metric)}"
            shown = None if value is None else f"{human(metric, value)} {unit_of(metric)}"
        if value is None:
            out.append((g["what"], goal, "not measured", "—", g["from"]))
        else:
            ok = value <= bound if le else value >= bound
            out.append((g["what"], goal, shown, "**met**" if ok else "**missed**", g["from"]))
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
    if args[0] == "--scenarios":
        print(" ".join(OrderedDict.fromkeys(SCENARIO_OF.values())))
        return
    if args[0] == "--sections":
        print(" ".join(n for n, sc in SCENARIO_OF.items() if sc == args[1]))
        return
    results = args[0]
    doc = charts = None
    if "--doc" in args:
        doc = args[args.index("--doc") + 1]
    if "--charts" in args:
        charts = args[args.index("--charts") + 1]
    new = read_rows(results)
    # The scenarios that ran now: all their sections are replaced, also those that
    # printed nothing this time (a section a scenario no longer has goes away).
    ran = set(filter(None, os.environ.get("BENCH_ONLY", "").split(","))) or {
        SCENARIO_OF.get(r["section"]) for r in new}
    measured = [s for s in SECTIONS if SCENARIO_OF[s] in ran]
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
        "large_scale": os.environ.get("BENCH_LARGE_SCALE", "?"),
        "large_rows": os.environ.get("BENCH_LARGE_ROWS", "?"),
        "file_mb": f"{os.path.getsize(os.environ['BENCH_DB']) / 1e6:.1f}" if os.environ.get("BENCH_DB") else "?",
        "large_file_mb": f"{os.path.getsize(os.environ['BENCH_LARGE_DB']) / 1e6:.1f}"
        if os.environ.get("BENCH_LARGE_DB") else "?",
        "machine": machine(),
    }
    if charts:
        os.makedirs(charts, exist_ok=True)
        store = os.path.join(charts, "results.tsv")
        # Stored rows of sections no longer declared in targets.toml are dropped.
        rows = [r for r in read_rows(store) if r["section"] in SECTION and r["section"] not in measured] + new
        write_rows(store, rows)
        runs_path = os.path.join(charts, "runs.json")
        if os.path.exists(runs_path):
            with open(runs_path, encoding="utf-8") as f:
                runs = json.load(f)
        runs = {s: m for s, m in runs.items() if s in SECTION and s not in measured}
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
        write_doc(doc, charts, agg, notes, per_run, runs, rows)


def known(v):
    return v not in (None, "", "?")


def source_line(section, meta):
    """Which sample file a migrate section ran on, when the run recorded it."""
    size = SECTION[section].get("size")
    if size == "bench" and str(meta.get("rows", "?")).isdigit():
        return f"scale {meta.get('scale')}: {int(meta['rows']):,} rows, {meta.get('file_mb')} MB"
    if size == "large" and str(meta.get("large_rows", "?")).isdigit():
        return f"scale {meta.get('large_scale')}: {int(meta['large_rows']):,} rows, {meta.get('large_file_mb')} MB"
    if size == "small" and str(meta.get("small_rows", "?")).isdigit():
        return f"scale {meta.get('small_scale')}: {int(meta['small_rows']):,} rows"
    return None


def measured_line(section, meta, rows):
    """When and how a section was measured: the run's date, command, build and load."""
    times = sorted(r["time"] for r in rows if r["section"] == section and r.get("time"))
    day = meta.get("started") if known(meta.get("started")) else (times[0][:10] if times else None)
    if not day:
        return None
    parts = [f"Measured {day}"]
    if known(meta.get("git")):
        parts.append(f" at `{meta['git']}`")
    if known(meta.get("profile")):
        parts.append(f" ({meta['profile']} build)")
    if known(meta.get("command")):
        parts.append(f" with `{meta['command']}`")
    if known(meta.get("load_start")) and known(meta.get("load_end")):
        parts.append(f"; load average {meta['load_start']} at the start, {meta['load_end']} at the end")
    parts.append(".")
    return "".join(parts)


def write_doc(doc, charts, agg, notes, per_run, runs, rows):
    sections = [s for s in SECTIONS if any(k[0] == s for k in agg)]
    rel = os.path.relpath(charts, os.path.dirname(doc)) if charts else None
    L = []
    L.append("# Benchmarks")
    L.append("")
    L.append("<!-- Generated by scripts/bench (scripts/bench.d/report.py); edit the prose in "
             "scripts/bench.d/notes.md and the goals in crates/dbtool-bench/targets.toml, not here. -->")
    L.append("")
    L.append("dbtool measured side by side with the tool a user would otherwise pick, on one machine, in one "
             "command. Contenders alternate (the order rotates every run) and repeat; each cell is the **median**, "
             "with the spread (min–max) in brackets. The machine is shared and noisy, so the 1-minute load average "
             "is recorded next to every run: read the ratios, not the absolute times.")
    L.append("")
    L.append("Regenerate everything (about 35 minutes at the benchmark sizes):")
    L.append("")
    L.append("```sh\nscripts/bench                 # every scenario; migrate at ~1.1M and ~2.2M rows, 3 runs each\n"
             "scripts/bench --only migrate  # one scenario; the others keep their last numbers\n"
             "scripts/bench --quick         # a small version of everything (CI; writes no doc)\n```")
    L.append("")
    t = targets(agg)
    if t:
        L.append("## Targets")
        L.append("")
        L.append("Goals and where they come from: `crates/dbtool-bench/targets.toml`.")
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
        if SECTION[s].get("about"):
            L.append(SECTION[s]["about"])
            L.append("")
        src = source_line(s, meta)
        if src:
            L.append(f"Source: the sample forums.db at {src}.")
            L.append("")
        if charts and s in CHART and svg_chart(s, agg, os.path.join(charts, f"{s}.svg")):
            L.append(f"![{s}]({rel}/{s}.svg)")
            L.append("")
        L.extend(section_table(s, agg, notes))
        L.append("")
        line = measured_line(s, meta, rows)
        if line:
            L.append(line)
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
        "- **dbtool**: `dbtool migrate --from forums.db --to URL --report r.json` (release build), its progress "
        "lines stamped with the seconds since start (`scripts/bench.d/stamp`): planning is \"planning\" to "
        "\"creating the target\", the data phase \"loading rows\" to \"finishing\", the finish phase from "
        "there to the end.\n"
        "- **pgloader**: a `.load` file `WITH include drop, create tables, create indexes, reset sequences, "
        "foreign keys, prefetch rows = 10000, batch rows = 10000`, run as `pgloader --dynamic-space-size 4096` "
        "(its defaults run out of heap on this file). Script: `scripts/bench.d/pgloader-load`.\n"
        "- **COPY ceiling**: `sqlite3 -csv` of each table piped into `psql -c \"\\copy t FROM STDIN csv\"`, one "
        "table after another, biggest first, into typed tables with no keys, indexes or constraints (blobs "
        "exported as hex). It is the data phase only, so it is compared with dbtool's data phase. Script: "
        "`scripts/bench.d/ceiling-load`.\n"
        "- **Physical floor**: the least time the target's own work can take on this server. Once per size, "
        "dbtool's migrated target is exported (pg_dump of the schema, a binary COPY file per table); each run "
        "then loads a fresh copy one step at a time on one connection, so that each step has the server to "
        "itself, and times each: the server-side binary COPY of every table, every primary and unique key, "
        "every index, every foreign key (added `NOT VALID`, then validated, as dbtool does). The floor is "
        "max(longest chain, all steps / cores): a table's chain is its COPY, its keys, its longest index build "
        "and its foreign-key validations one after another (the lock modes forbid more overlap on one table), "
        "a validation not before the referenced table's data and keys; with full overlap the cores are never "
        "idle. Parallel maintenance workers are off while measuring, so a step's time is one core's work. "
        "Left out: reading SQLite and encoding rows (the tool's own CPU, on the same cores), ANALYZE, "
        "sequence values; no tool reaches the floor, so the goal is a ratio above 1. Script: "
        "`scripts/bench.d/floor`.\n"
        "- **Wall time and peak memory** come from `/usr/bin/time -v` (elapsed, maximum resident set size of "
        "the largest process of the run). rows/s = source rows / wall time. *rows loaded* counts the rows in "
        "the target afterwards, so a contender that drops rows shows it.\n"
        "- **Runs**: each contender runs `--runs` times (3 by default), the order rotating every run, at the "
        "benchmark size (`--scale`, 11 by default: `dbtool sample --scale 11`, what `DEMO_SCALE=11` makes) "
        "and at twice its rows (migrate-large).")
    L.append("")
    with open(doc, "w", encoding="utf-8") as f:
        f.write("\n".join(L))


if __name__ == "__main__":
    main()
