#!/usr/bin/env python3
"""Rewrites the generated summary at the top of BENCHMARKS.md.

Reads benches/targets.toml (which figures, and their targets), criterion's
medians (target/criterion/<id>/new/estimates.json) and the JSON results of
non-criterion benches (target/bench-results/<file>.json: {"key": {"value":
number, "unit": "ms" | "us" | "MiB" | "/s" | ...}}), and replaces what is
between the `<!-- bench-report:begin -->` and `<!-- bench-report:end -->`
markers with a table: each figure's median, when it was measured, its
target and whether it is met; and the machine, versions and date.

Run by scripts/bench.sh after the benches; alone, it reports whatever
results are on disk. A figure with no result on disk (a fresh clone, a
bench not run this time) keeps its row from the table being replaced, with
that row's date; one never measured at all says so.
"""

import datetime
import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- bench-report:begin -->", "<!-- bench-report:end -->"
SCALE = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0}


def parse_quantity(text):
    """'25 us' -> (2.5e-05, 'time'); '300 MiB' -> (300, 'MiB')."""
    number, unit = re.fullmatch(r"\s*([0-9.]+)\s*(\S+)\s*", text).groups()
    if unit in SCALE:
        return float(number) * SCALE[unit], "time"
    return float(number), unit


def show_time(seconds):
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if abs(seconds) >= scale:
            return f"{seconds / scale:.3g} {unit}" if abs(seconds / scale) >= 100 else f"{seconds / scale:.2f} {unit}"
    return f"{seconds / 1e-9:.0f} ns"


def show(value, unit):
    return show_time(value) if unit == "time" else f"{value:,.1f} {unit}"


def measured(figure_id):
    """(value, unit, date) of a figure, or None."""
    if ":" in figure_id:
        file, key = figure_id.split(":", 1)
        path = ROOT / "target" / "bench-results" / f"{file}.json"
        if not path.exists():
            return None
        entry = json.loads(path.read_text()).get(key)
        if entry is None:
            return None
        unit = entry["unit"]
        value = float(entry["value"])
        if unit in SCALE:
            value, unit = value * SCALE[unit], "time"
        return value, unit, path.stat().st_mtime
    path = ROOT / "target" / "criterion" / figure_id / "new" / "estimates.json"
    if not path.exists():
        return None
    median = json.loads(path.read_text())["median"]["point_estimate"]
    return median * 1e-9, "time", path.stat().st_mtime


def judge(figure):
    """(median text, target text, verdict) of one figure."""
    got = measured(figure["id"])
    if got is None:
        return "not measured here", target_text(figure), "—"
    value, unit, when = got
    day = datetime.date.fromtimestamp(when).isoformat()
    if "max_over" in figure:
        base = measured(figure["max_over"])
        if base is None:
            return f"{show(value, unit)} ({day})", target_text(figure), "— (no baseline)"
        if abs(when - base[2]) > 3600:
            # A difference of two runs an hour apart says nothing.
            return (f"{show(value, unit)} ({day})", target_text(figure),
                    "— (the baseline is from another run: run both)")
        by, _ = parse_quantity(figure["by"])
        over = value - base[0]
        verdict = "**met**" if over <= by else "not met"
        return (f"{show(value, unit)}, {'+' if over >= 0 else '−'}{show(abs(over), unit)} over it ({day})",
                target_text(figure), verdict)
    verdict = "—"
    if "max" in figure:
        limit, _ = parse_quantity(figure["max"])
        verdict = "**met**" if value <= limit else "not met"
    elif "min" in figure:
        limit, _ = parse_quantity(figure["min"])
        verdict = "**met**" if value >= limit else "not met"
    return f"{show(value, unit)} ({day})", target_text(figure), verdict


def target_text(figure):
    if "max_over" in figure:
        return f"≤ `{figure['max_over']}` + {figure['by']}"
    if "max" in figure:
        return f"≤ {figure['max']}"
    if "min" in figure:
        return f"≥ {figure['min']}"
    return "(none)"


def command_output(*argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "not installed"


def machine():
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kib = int(next(l for l in open("/proc/meminfo") if l.startswith("MemTotal")).split()[1])
        memory = f", {kib / 1024 / 1024:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    lock = (ROOT / "Cargo.lock").read_text()
    wasmtime = re.search(r'name = "wasmtime"\nversion = "([^"]+)"', lock)
    claude = command_output(str(ROOT / "harnesses/node_modules/.bin/claude"), "--version")
    opencode = command_output(str(ROOT / "harnesses/node_modules/.bin/opencode"), "--version")
    return (f"{os.cpu_count()} × {cpu}{memory}, Linux {platform.release()}; "
            f"{command_output('rustc', '--version')}; wasmtime {wasmtime.group(1) if wasmtime else '?'}; "
            f"claude {claude.split()[0] if claude and claude != 'not installed' else 'not installed'}; "
            f"opencode {opencode or '?'}")


def earlier_rows(text):
    """{figure name: (median, verdict)} of the summary table in `text`."""
    if BEGIN not in text or END not in text:
        return {}
    rows = {}
    for line in text[text.index(BEGIN):text.index(END)].splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if len(cells) == 6 and cells[1] not in ("median (measured)", "---:", "not measured here"):
            rows[cells[0]] = (cells[1], cells[3])
    return rows


def main():
    targets = tomllib.loads((ROOT / "benches" / "targets.toml").read_text())["figure"]
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text()
    earlier = earlier_rows(text)
    rows = ["| figure | median (measured) | target | | bench | issue |",
            "| --- | ---: | --- | --- | --- | ---: |"]
    for figure in targets:
        median, target, verdict = judge(figure)
        if measured(figure["id"]) is None and figure["name"] in earlier:
            # Not run here this time: the figure and date it had.
            median, verdict = earlier[figure["name"]]
        rows.append(f"| {figure['name']} | {median} | {target} | {verdict} | "
                    f"`cargo bench --bench {figure['bench']}` | {figure.get('issue', '')} |")
    today = datetime.date.today().isoformat()
    section = "\n".join([
        BEGIN,
        f"Generated by `scripts/bench.sh` on {today} — {machine()}. Medians; the date",
        "in each row is when that figure was last measured (a row whose bench did not",
        "run this time keeps its earlier figure, from the machine of that run). The",
        "sections below explain each figure; `benches/targets.toml` holds the targets.",
        "",
        *rows,
        END,
    ])
    if BEGIN in text and END in text:
        start, end = text.index(BEGIN), text.index(END) + len(END)
        text = text[:start] + section + text[end:]
    else:
        # After the title and the first paragraph.
        head, _, rest = text.partition("\n\n")
        text = f"{head}\n\n{section}\n\n{rest}"
    path.write_text(text)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
