"""Turn pytest-benchmark JSON into the markdown tables of bench/RESULTS.md.

    pytest bench/ --benchmark-only --benchmark-json=bench/out.json
    python bench/report.py bench/out.json [more.json ...] [--out bench/RESULTS.md]

Figures are medians. GB/s = the bytes the op must move (benchmark.extra_info["bytes"]) / median.
"% copy" = that GB/s as a fraction of the copy bandwidth measured in the same run on the same
shape (a clone moving exactly the shape's memory-floor bytes). "x floor" = median / time of that
copy, i.e. how far the op is from reading the feature map once and writing both erased copies.
Speed-up columns are t(other) / t(this row): above 1 means this row is faster.
Rows that were not measured (no GPU, missing optional package) say "not measured"; nothing is
invented. Goals are those of issue 6 (CPU) and issue 3 (GPU).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

ANM_IMPLS = ["released", "eager", "compile", "fused", "fused-nochecks", "fused-ops",
             "fused-triton", "fused-cuda", "tv-randerase", "kornia-randerase"]
ERASE_IMPLS = ["eager", "compile", "fused", "fused-triton", "fused-cuda"]
TRAIN_MODELS = ["small_cnn", "preact_resnet18"]
SHAPE_ORDER = ["cifar-B128", "cifar-B512", "imagenet-B64", "imagenet-B256"]
GPU_CONFIGS = [("cuda", "fp32"), ("cuda", "bf16")]


def load(paths: List[str]):
    benches, meta = [], None
    for p in paths:
        with open(p) as f:
            data = json.load(f)
        meta = meta or data
        benches.extend(data.get("benchmarks", []))
    return benches, meta


def fmt_t(sec: Optional[float]) -> str:
    if sec is None:
        return "not measured"
    if sec >= 1.0:
        return f"{sec:.2f} s"
    if sec >= 1e-3:
        return f"{sec * 1e3:.3f} ms"
    return f"{sec * 1e6:.1f} us"


def fmt_x(v: Optional[float], digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}x"


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None or b == 0 else a / b


def index(benches):
    """(op, device, dtype, shape, impl[, model]) -> (median seconds, extra_info)."""
    idx: Dict[Tuple, Tuple[float, dict]] = {}
    for b in benches:
        e = b.get("extra_info", {})
        key = (e.get("op"), e.get("device"), e.get("dtype"), e.get("shape"), e.get("impl"),
               e.get("model"))
        idx[key] = (b["stats"]["median"], e)
    return idx


def shapes_present(idx, op, device, dtype):
    names = {k[3] for k in idx if k[0] == op and k[1] == device and k[2] == dtype}
    ordered = [s for s in SHAPE_ORDER if s in names]
    return ordered + sorted(names - set(ordered))


def get(idx, op, device, dtype, shape, impl, model=None):
    v = idx.get((op, device, dtype, shape, impl, model))
    return (None, None) if v is None else v


def copy_bw(idx, device, dtype, shape) -> Tuple[Optional[float], Optional[float]]:
    t, e = get(idx, "copy", device, dtype, shape, "clone")
    if t is None:
        return None, None
    return t, e["bytes"] / t


def anm_table(idx, device, dtype, out: List[str]):
    for shape in shapes_present(idx, "anm_mask", device, dtype):
        t_copy, bw = copy_bw(idx, device, dtype, shape)
        base = {impl: get(idx, "anm_mask", device, dtype, shape, impl)[0]
                for impl in ("released", "eager", "compile")}
        any_e = next(e for k, (t, e) in idx.items()
                     if k[0] == "anm_mask" and k[1:4] == (device, dtype, shape))
        out.append(f"\n**anm_mask, {device} {dtype}, {shape}** (x {any_e['C']}x{any_e['H']}x"
                   f"{any_e['W']}, fmap {any_e['K']}x{any_e['h']}x{any_e['w']}; copy of the "
                   f"floor bytes: {fmt_t(t_copy)}, "
                   f"{'-' if bw is None else f'{bw / 1e9:.1f} GB/s'})\n")
        out.append("| implementation | median | GB/s | % copy BW | x floor | vs released | "
                   "vs eager | vs compile |")
        out.append("|---|---|---|---|---|---|---|---|")
        for impl in ANM_IMPLS:
            t, e = get(idx, "anm_mask", device, dtype, shape, impl)
            if t is None:
                if impl in ("fused-triton", "fused-cuda") and device == "cpu":
                    continue
                out.append(f"| {impl} | not measured | | | | | | |")
                continue
            gbs = e["bytes"] / t
            frac = "-" if bw is None else f"{100 * gbs / bw:.0f}%"
            out.append(f"| {impl} | {fmt_t(t)} | {gbs / 1e9:.1f} | {frac} | "
                       f"{fmt_x(ratio(t, t_copy), 2)} | {fmt_x(ratio(base['released'], t))} | "
                       f"{fmt_x(ratio(base['eager'], t))} | {fmt_x(ratio(base['compile'], t))} |")


def erase_table(idx, device, dtype, out: List[str]):
    for op, title in (("erase_fwd", "erase_and_modulate forward"),
                      ("erase_bwd", "erase_and_modulate backward")):
        shapes = shapes_present(idx, op, device, dtype)
        if not shapes:
            continue
        out.append(f"\n**{title}, {device} {dtype}** (bytes: read + write of the image batches)\n")
        out.append("| shape | implementation | median | GB/s | % copy BW | vs eager | vs compile |")
        out.append("|---|---|---|---|---|---|---|")
        for shape in shapes:
            _, bw = copy_bw(idx, device, dtype, shape)
            t_e = get(idx, op, device, dtype, shape, "eager")[0]
            t_c = get(idx, op, device, dtype, shape, "compile")[0]
            for impl in ERASE_IMPLS:
                t, e = get(idx, op, device, dtype, shape, impl)
                if t is None:
                    if impl in ("fused-triton", "fused-cuda") and device == "cpu":
                        continue
                    out.append(f"| {shape} | {impl} | not measured | | | | |")
                    continue
                gbs = e["bytes"] / t
                frac = "-" if bw is None else f"{100 * gbs / bw:.0f}%"
                out.append(f"| {shape} | {impl} | {fmt_t(t)} | {gbs / 1e9:.1f} | {frac} | "
                           f"{fmt_x(ratio(t_e, t))} | {fmt_x(ratio(t_c, t))} |")


def train_table(idx, out: List[str]):
    rows = [(k, v) for k, v in idx.items() if k[0] == "train_step"]
    if not rows:
        out.append("\nTraining step: not measured.")
        return
    shape = rows[0][0][3]
    out.append(f"\n**Training step, cpu fp32, {shape} (plain CE over 3B images vs ANM)**\n")
    out.append("| model | CE step (3B images) | ANM step (anm_fast.masked_forward) | "
               "released composition | ANM / CE | released / CE |")
    out.append("|---|---|---|---|---|---|")
    for model in TRAIN_MODELS:
        t = {v: get(idx, "train_step", "cpu", "fp32", shape, v, model)[0]
             for v in ("ce", "anm", "released")}
        out.append(f"| {model} | {fmt_t(t['ce'])} | {fmt_t(t['anm'])} | {fmt_t(t['released'])} "
                   f"| {fmt_x(ratio(t['anm'], t['ce']), 3)} | "
                   f"{fmt_x(ratio(t['released'], t['ce']), 3)} |")


def goals(idx, out: List[str]):
    out.append("\n**Goals (issue 6, CPU; CIFAR shapes B=512, fp32)**\n")
    out.append("| goal | measured | status |")
    out.append("|---|---|---|")
    shape = "cifar-B512"

    def line(name, value, ok, fmt):
        status = "not measured" if value is None else ("met" if ok(value) else "MISSED")
        out.append(f"| {name} | {'-' if value is None else fmt(value)} | {status} |")

    t_f = get(idx, "anm_mask", "cpu", "fp32", shape, "fused")[0]
    t_r = get(idx, "anm_mask", "cpu", "fp32", shape, "released")[0]
    t_e = get(idx, "anm_mask", "cpu", "fp32", shape, "eager")[0]
    t_copy = copy_bw(idx, "cpu", "fp32", shape)[0]
    warn = None
    line("fused anm_mask >= 30x faster than released", ratio(t_r, t_f), lambda v: v >= 30,
         lambda v: f"{v:.1f}x")
    line("fused anm_mask >= 4x faster than eager reference", ratio(t_e, t_f), lambda v: v >= 4,
         lambda v: f"{v:.2f}x")
    floor = ratio(t_f, t_copy)
    if floor is not None and floor < 1.0:
        # Faster than a plain copy of fewer bytes: the copy itself was slowed down (typically a
        # multi-threaded clone on a loaded machine), so no verdict can be drawn from this run.
        out.append(f"| fused anm_mask within 1.5x of the memory floor | {floor:.2f}x floor | "
                   f"no verdict: the copy ran slower than the op (loaded machine) |")
        warn = ("\n> Warning: in this run a plain copy of fewer bytes ran slower than the fused op: "
                "load from other processes distorted the timings, so none of the statuses in this "
                "section is evidence either way.")
    else:
        line("fused anm_mask within 1.5x of the memory floor", floor, lambda v: v <= 1.5,
             lambda v: f"{v:.2f}x floor")
    for model in TRAIN_MODELS:
        rows = [k for k in idx if k[0] == "train_step" and k[5] == model]
        s = rows[0][3] if rows else None
        ce = get(idx, "train_step", "cpu", "fp32", s, "ce", model)[0]
        anm = get(idx, "train_step", "cpu", "fp32", s, "anm", model)[0]
        line(f"training step ANM / CE <= 1.15 ({model}, {s})", ratio(anm, ce),
             lambda v: v <= 1.15, lambda v: f"{v:.3f}x")
    if warn:
        out.append(warn)


def machine(meta) -> List[str]:
    mi = meta.get("machine_info", {}) if meta else {}
    cpu = mi.get("cpu", {}) or {}
    brand = cpu.get("brand_raw") or mi.get("processor") or "?"
    lines = [f"- date: {meta.get('datetime', '?') if meta else '?'}",
             f"- machine: {mi.get('node', '?')}, {brand}, {cpu.get('count', '?')} logical cores, "
             f"{mi.get('system', '?')} {mi.get('release', '')}",
             f"- python {mi.get('python_version', '?')}"]
    timers = sorted({b.get("options", {}).get("timer", "?") for b in (meta or {}).get(
        "benchmarks", [])})
    if timers:
        lines.append(f"- timer: {', '.join(timers)}")
    ci = meta.get("commit_info", {}) if meta else {}
    if ci:
        lines.append(f"- commit: {ci.get('id', '?')[:10]} ({ci.get('branch', '?')}"
                     f"{', dirty' if ci.get('dirty') else ''})")
    return lines


GPU_GOAL_SHAPES = ["cifar-B512", "imagenet-B256"]


def gpu_goals(idx, out: List[str]):
    """Issue 3's speed goals (stated for an H100) for every CUDA dtype in the run: the public
    anm_mask ("fused", the backend "auto" picked) against the released procedure, the eager
    reference and torch.compile of it, and the erase pass's share of the copy bandwidth."""
    dtypes = sorted({k[2] for k in idx if k[1] == "cuda"})
    if not dtypes:
        out.append("\n**Goals (issue 3, GPU)**: not measured (no GPU in this run).")
        return
    out.append("\n**Goals (issue 3, GPU; the card is named in the machine lines above)**\n")
    out.append("| goal | dtype | shape | measured | status |")
    out.append("|---|---|---|---|---|")
    for dtype in dtypes:
        for shape in GPU_GOAL_SHAPES:
            t = {impl: get(idx, "anm_mask", "cuda", dtype, shape, impl)[0]
                 for impl in ("fused", "released", "eager", "compile")}
            for name, other, need in (("anm_mask >= 1000x faster than released", "released",
                                       1000), ("anm_mask >= 5x faster than eager", "eager", 5),
                                      ("anm_mask >= 2x faster than torch.compile", "compile", 2)):
                v = ratio(t[other], t["fused"])
                status = "not measured" if v is None else ("met" if v >= need else "MISSED")
                out.append(f"| {name} | {dtype} | {shape} | {fmt_x(v)} | {status} |")
            t_erase, e = get(idx, "erase_fwd", "cuda", dtype, shape, "fused")
            _, bw = copy_bw(idx, "cuda", dtype, shape)
            share = None if t_erase is None or not bw else (e["bytes"] / t_erase) / bw
            status = "not measured" if share is None else ("met" if share >= 0.7 else "MISSED")
            shown = "-" if share is None else f"{100 * share:.0f}% of copy BW"
            out.append(f"| erase pass >= 70% of copy bandwidth | {dtype} | {shape} | {shown} | "
                       f"{status} |")


def render(paths: List[str], title: Optional[str] = None) -> str:
    benches, meta = load(paths)
    idx = index(benches)
    out: List[str] = []
    out.append("# Benchmark results" + (f": {title}" if title else ""))
    out.append("")
    out.append("Generated by `python bench/report.py` from pytest-benchmark JSON "
               "(`pytest bench/ --benchmark-only --benchmark-json=...`). Medians.")
    out.append("")
    out.extend(machine(meta))
    extras = [b.get("extra_info", {}) for b in benches]
    if extras:
        e0 = extras[0]
        loads = [e.get("loadavg_1m") for e in extras if e.get("loadavg_1m") is not None]
        out.append(f"- torch {e0.get('torch', '?')}, {e0.get('threads', '?')} threads, "
                   f"smoke={e0.get('smoke')}")
        if loads:
            out.append(f"- 1-minute load average during the run: {min(loads):.1f} to "
                       f"{max(loads):.1f} (other processes share the cores; see notes)")
        res = {e.get("resizer") for e in extras if e.get("resizer")}
        if res:
            out.append(f"- released port resizes with: {', '.join(sorted(res))}")
    goals(idx, out)
    gpu_goals(idx, out)
    out.append("\n## anm_mask (stages 1-3)")
    devices = sorted({(k[1], k[2]) for k in idx if k[0] == "anm_mask"})
    for device, dtype in devices:
        anm_table(idx, device, dtype, out)
    for device, dtype in GPU_CONFIGS:
        if (device, dtype) not in devices:
            out.append(f"\n**anm_mask, {device} {dtype}**: not measured (no GPU in this run).")
    out.append("\n## erase_and_modulate forward / backward")
    for device, dtype in sorted({(k[1], k[2]) for k in idx if k[0] in ("erase_fwd", "erase_bwd")}):
        erase_table(idx, device, dtype, out)
    for device, dtype in GPU_CONFIGS:
        if (device, dtype) not in devices:
            out.append(f"\n**erase_and_modulate, {device} {dtype}**: not measured (no GPU in "
                       f"this run).")
    out.append("\n## Training step")
    train_table(idx, out)
    return "\n".join(out) + "\n"


HEADLINE_ROWS = [("released", "released per-image procedure (port, OpenCV resize)"),
                 ("eager", "eager vectorised PyTorch (the reference)"),
                 ("compile", "`torch.compile` of the reference"),
                 ("fused", "**`anm_fast.anm_mask`**"),
                 ("fused-ops", "the fused operator called directly"),
                 ("copy", "copy of the bytes that must move (memory floor)")]


def headline(one_core: str, two_cores: str, shape: str = "cifar-B512") -> str:
    """README's headline table: anm_mask at `shape` (CPU fp32) from a 1-thread CPU-time run and
    a 2-thread wall-clock run, each implementation's median and its speed-up over the released
    procedure measured in the same run."""
    runs = [index(load([one_core])[0]), index(load([two_cores])[0])]
    lines = ["| implementation | 1 core (CPU time) | vs released | 2 cores (wall clock) | "
             "vs released |", "|---|---|---|---|---|"]
    for impl, label in HEADLINE_ROWS:
        cells = []
        for idx in runs:
            if impl == "copy":
                t = get(idx, "copy", "cpu", "fp32", shape, "clone")[0]
                cells += [fmt_t(t), ""]
                continue
            t = get(idx, "anm_mask", "cpu", "fp32", shape, impl)[0]
            released = get(idx, "anm_mask", "cpu", "fp32", shape, "released")[0]
            x = fmt_x(ratio(released, t))
            cells += [fmt_t(t), "1x" if impl == "released" and t is not None else x]
        if impl == "fused":
            cells = [f"**{c}**" if c else c for c in cells]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def pick_backends(paths: List[str]) -> Dict[str, dict]:
    """Per GPU model in the runs: which of the Triton and compiled CUDA backends was faster,
    by the geometric mean of t(triton) / t(cuda) over every (op, shape, dtype) both ran."""
    benches, _ = load(paths)
    pairs: Dict[Tuple, Dict[str, float]] = defaultdict(dict)
    for b in benches:
        e = b.get("extra_info", {})
        backend = {"fused-triton": "triton", "fused-cuda": "cuda"}.get(e.get("impl"))
        if e.get("device") != "cuda" or backend is None or not e.get("gpu"):
            continue
        key = (e["gpu"], e.get("op"), e.get("shape"), e.get("dtype"))
        pairs[key][backend] = b["stats"]["median"]
    out: Dict[str, dict] = {}
    for gpu in sorted({k[0] for k in pairs}):
        logs = [math.log(v["triton"] / v["cuda"]) for k, v in pairs.items()
                if k[0] == gpu and "triton" in v and "cuda" in v and v["cuda"] > 0]
        if not logs:
            continue
        ratio_ = math.exp(sum(logs) / len(logs))
        out[gpu] = {"faster": "triton" if ratio_ < 1 else "cuda",
                    "triton_over_cuda_geomean": round(ratio_, 4), "pairs": len(logs)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", nargs="+", help="pytest-benchmark JSON file(s)")
    ap.add_argument("--out", help="write the markdown here instead of stdout")
    ap.add_argument("--notes", help="markdown file appended after the tables (conditions, "
                                    "analysis; keep figures in the generated tables)")
    ap.add_argument("--title", help="heading suffix, e.g. the run's conditions")
    ap.add_argument("--headline", action="store_true",
                    help="print README's headline table instead: give the 1-thread CPU-time JSON "
                         "then the 2-thread wall-clock JSON")
    ap.add_argument("--pick-backend", action="store_true",
                    help="print, per GPU model in the JSON, whether the triton or the cuda "
                         "backend was faster (for bench/RESULTS.md; the library's choice is a "
                         "fixed priority, anm_fast/backend.py)")
    args = ap.parse_args(argv)
    if args.pick_backend:
        picks = pick_backends(args.json)
        if not picks:
            ap.error("no GPU run with both fused-triton and fused-cuda timings in these files")
        for gpu, entry in picks.items():
            print(f"{gpu}: {entry['faster']} (t_triton / t_cuda geometric mean "
                  f"{entry['triton_over_cuda_geomean']} over {entry['pairs']} timings)")
        return 0
    if args.headline:
        if len(args.json) != 2:
            ap.error("--headline takes two JSON files: the 1-thread run, then the 2-thread run")
        sys.stdout.write(headline(*args.json))
        return 0
    text = render(args.json, args.title)
    if args.notes:
        with open(args.notes) as f:
            text += "\n" + f.read()
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
