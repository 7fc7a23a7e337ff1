"""Keep the figures of a pytest-benchmark run that bench/report.py needs, as one named run in a
small JSON file (bench/results.json is the committed one; the raw JSON is not committed).

    pytest bench/ --benchmark-only --benchmark-json=/tmp/run.json
    python bench/summarize.py /tmp/run.json [more.json ...] --run cpu-2threads \
        --title "CPU, 2 threads, wall clock" --into bench/results.json

Several JSON files given together become one run (say, the op benchmarks and the training step
measured one after the other under the same conditions). A run already in the file under that
name is replaced; other runs stay. Kept per timing: what was timed (op, impl, device, dtype,
shape, model), its median in seconds, the bytes it must move and a ratio the benchmark measured
itself (if any); per run: the conditions
RESULTS.md prints (date, machine, timer, threads, load, commit).
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Dict, List

# ratio: only where the benchmark measured one itself (floor_ratio: fused / copy in interleaved
# pairs), else null
COLUMNS = ["op", "impl", "device", "dtype", "shape", "model", "median_s", "bytes", "ratio"]


def _machine(meta: dict) -> str:
    mi = meta.get("machine_info", {})
    cpu = mi.get("cpu", {}) or {}
    brand = cpu.get("brand_raw") or mi.get("processor") or "?"
    return (f"{mi.get('node', '?')}, {brand}, {cpu.get('count', '?')} logical cores, "
            f"{mi.get('system', '?')} {mi.get('release', '')}").strip()


def summarize(paths: List[str], title: str) -> dict:
    """One run: the conditions of the first file, the timings of all of them."""
    files = []
    for p in paths:
        with open(p) as f:
            files.append(json.load(f))
    meta = files[0]
    benches = [b for data in files for b in data.get("benchmarks", [])]
    extras = [b.get("extra_info", {}) for b in benches]
    ci = meta.get("commit_info", {})
    loads = [e["loadavg_1m"] for e in extras if e.get("loadavg_1m") is not None]
    shapes: Dict[str, str] = {}
    for e in extras:
        if "K" in e and e.get("shape") not in shapes:
            shapes[e["shape"]] = f"x {e['C']}x{e['H']}x{e['W']}, fmap {e['K']}x{e['h']}x{e['w']}"
    e0 = extras[0] if extras else {}
    run = {
        "title": title,
        "date": meta.get("datetime", "?"),
        "machine": _machine(meta),
        "python": meta.get("machine_info", {}).get("python_version", "?"),
        "timer": ", ".join(sorted({b.get("options", {}).get("timer", "?")
                                   for b in meta.get("benchmarks", [])})),
        "commit": (f"{ci.get('id', '?')[:10]} ({ci.get('branch', '?')}"
                   f"{', dirty' if ci.get('dirty') else ''})") if ci else None,
        "torch": e0.get("torch", "?"),
        "threads": e0.get("threads"),
        "smoke": e0.get("smoke"),
        "gpu": next((e["gpu"] for e in extras if e.get("gpu")), None),
        "load_1m": [round(min(loads), 3), round(max(loads), 3)] if loads else None,
        "released_resizer": ", ".join(sorted({e["resizer"] for e in extras if e.get("resizer")}))
                            or None,
        "shapes": shapes,
        "timings": [[e.get("op"), e.get("impl"), e.get("device"), e.get("dtype"), e.get("shape"),
                     e.get("model"), b["stats"]["median"], e.get("bytes"), e.get("ratio")]
                    for b, e in zip(benches, extras)],
    }
    return run


def dumps(summary: dict) -> str:
    """JSON with one timing per line, so that a re-measured figure is a one-line diff."""
    lines = ["{", f'  "columns": {json.dumps(COLUMNS)},', '  "runs": {']
    names = list(summary["runs"])
    for i, name in enumerate(names):
        run = dict(summary["runs"][name])
        timings = run.pop("timings")
        lines.append(f"    {json.dumps(name)}: {{")
        for key, value in run.items():
            lines.append(f"      {json.dumps(key)}: {json.dumps(value)},")
        lines.append('      "timings": [')
        lines.extend(f"        {json.dumps(t)}{',' if j < len(timings) - 1 else ''}"
                     for j, t in enumerate(timings))
        lines.append("      ]")
        lines.append("    }" + ("," if i < len(names) - 1 else ""))
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", nargs="+", help="pytest-benchmark JSON file(s) of one run")
    ap.add_argument("--run", required=True, help="the run's name, e.g. cpu-2threads")
    ap.add_argument("--title", default="", help="the run's conditions, for RESULTS.md's heading")
    ap.add_argument("--into", required=True, help="summary file to add the run to (created if "
                                                 "missing)")
    args = ap.parse_args(argv)
    summary = {"columns": COLUMNS, "runs": {}}
    if os.path.exists(args.into):
        with open(args.into) as f:
            summary = json.load(f)
    summary["runs"][args.run] = summarize(args.json, args.title)
    tmp = args.into + ".tmp"
    with open(tmp, "w") as f:
        f.write(dumps(summary))
    os.replace(tmp, args.into)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
