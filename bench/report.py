"""Render the benchmark summary (bench/results.json, written by bench/summarize.py) as markdown:
bench/RESULTS.md, the README's performance table and the figures table of
docs/PERFORMANCE_GOALS.md. It prints figures only: what a figure must reach is in that doc.

    python bench/report.py                                # RESULTS.md to stdout
    python bench/report.py --results bench/RESULTS.md --readme README.md \
        --goals docs/PERFORMANCE_GOALS.md                 # what bench/regenerate_results.sh does

Figures are medians. GB/s = the bytes the op must move / median. "% copy BW" = that GB/s over the
GB/s of a clone moving the shape's memory-floor bytes in the same run; "x floor" = median / that
clone's median. "vs X" = t(X) / t(this row): above 1 means this row is faster. A figure that is
not in the summary is printed as "not measured"; nothing is invented.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from typing import Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ANM_IMPLS = ["released", "eager", "compile", "fused", "fused-nochecks", "fused-ops",
             "fused-triton", "fused-cuda", "tv-randerase", "kornia-randerase"]
ERASE_IMPLS = ["eager", "compile", "fused", "fused-triton", "fused-cuda"]
GPU_ONLY_IMPLS = ("fused-triton", "fused-cuda")
TRAIN_MODELS = ["small_cnn", "preact_resnet18"]
SHAPE_ORDER = ["cifar-B128", "cifar-B512", "imagenet-B64", "imagenet-B256"]
HEADLINE_SHAPE = "cifar-B512"
HEADLINE_RUNS = ("cpu-1thread", "cpu-2threads")   # README: 1 core CPU time, 2 cores wall clock


class Run:
    """One run of the summary, its timings looked up by what was timed."""

    def __init__(self, name: str, entry: dict, columns: List[str]):
        self.name, self.info = name, entry
        self.t: Dict[Tuple, Tuple[float, Optional[int]]] = {}
        self.ratios: Dict[Tuple, float] = {}
        for row in entry["timings"]:
            r = dict(zip(columns, row))
            key = (r["op"], r["device"], r["dtype"], r["shape"], r["impl"], r["model"])
            self.t[key] = (r["median_s"], r["bytes"])
            if r.get("ratio") is not None:
                self.ratios[key] = r["ratio"]

    def time(self, op, device, dtype, shape, impl, model=None) -> Optional[float]:
        return self.t.get((op, device, dtype, shape, impl, model), (None, None))[0]

    def nbytes(self, op, device, dtype, shape, impl, model=None) -> Optional[int]:
        return self.t.get((op, device, dtype, shape, impl, model), (None, None))[1]

    def ratio(self, op, device, dtype, shape, impl, model=None) -> Optional[float]:
        """A ratio the benchmark measured itself (floor_ratio), None where it did not."""
        return self.ratios.get((op, device, dtype, shape, impl, model))

    def copy(self, device, dtype, shape) -> Tuple[Optional[float], Optional[float]]:
        """Median and GB/s of the clone of the shape's memory-floor bytes."""
        t = self.time("copy", device, dtype, shape, "clone")
        return (None, None) if t is None else (t, self.nbytes("copy", device, dtype, shape,
                                                              "clone") / t)

    def shapes(self, op, device, dtype) -> List[str]:
        names = {k[3] for k in self.t if k[0] == op and k[1] == device and k[2] == dtype}
        return [s for s in SHAPE_ORDER if s in names] + sorted(names - set(SHAPE_ORDER))

    def configs(self, *ops) -> List[Tuple[str, str]]:
        return sorted({(k[1], k[2]) for k in self.t if k[0] in ops})


def load(path: str) -> List[Run]:
    with open(path) as f:
        summary = json.load(f)
    return [Run(name, entry, summary["columns"]) for name, entry in summary["runs"].items()]


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


def bandwidth(nbytes, t, copy_bw) -> Tuple[str, str]:
    gbs = nbytes / t
    return f"{gbs / 1e9:.1f}", "-" if copy_bw is None else f"{100 * gbs / copy_bw:.0f}%"


# ------------------------------------------------------------------------------ RESULTS.md
def conditions(run: Run) -> List[str]:
    i = run.info
    lines = [f"- date: {i['date']}", f"- machine: {i['machine']}"]
    if i.get("gpu"):
        lines.append(f"- GPU: {i['gpu']}")
    lines += [f"- python {i['python']}", f"- timer: {i['timer']}"]
    if i.get("commit"):
        lines.append(f"- commit: {i['commit']}")
    lines.append(f"- torch {i['torch']}, {i['threads']} threads, smoke={i['smoke']}")
    if i.get("load_1m"):
        lo, hi = i["load_1m"]
        lines.append(f"- 1-minute load average during the run: {lo:.1f} to {hi:.1f} (other "
                     f"processes share the cores; see notes)")
    if i.get("released_resizer"):
        lines.append(f"- released port resizes with: {i['released_resizer']}")
    return lines


def anm_tables(run: Run, device: str, dtype: str, out: List[str]):
    for shape in run.shapes("anm_mask", device, dtype):
        t_copy, bw = run.copy(device, dtype, shape)
        base = {impl: run.time("anm_mask", device, dtype, shape, impl)
                for impl in ("released", "eager", "compile")}
        out.append(f"\n**anm_mask, {device} {dtype}, {shape}** ({run.info['shapes'][shape]}; "
                   f"copy of the floor bytes: {fmt_t(t_copy)}, "
                   f"{'-' if bw is None else f'{bw / 1e9:.1f} GB/s'})\n")
        out.append("| implementation | median | GB/s | % copy BW | x floor | vs released | "
                   "vs eager | vs compile |")
        out.append("|---|---|---|---|---|---|---|---|")
        for impl in ANM_IMPLS:
            t = run.time("anm_mask", device, dtype, shape, impl)
            if t is None:
                if impl not in GPU_ONLY_IMPLS or device != "cpu":
                    out.append(f"| {impl} | not measured | | | | | | |")
                continue
            gbs, frac = bandwidth(run.nbytes("anm_mask", device, dtype, shape, impl), t, bw)
            out.append(f"| {impl} | {fmt_t(t)} | {gbs} | {frac} | "
                       f"{fmt_x(ratio(t, t_copy), 2)} | {fmt_x(ratio(base['released'], t))} | "
                       f"{fmt_x(ratio(base['eager'], t))} | {fmt_x(ratio(base['compile'], t))} |")
        paired = run.ratio("floor_ratio", device, dtype, shape, "fused")
        if paired is not None:
            out.append(f"\n`fused` over the copy timed in interleaved pairs (median of the pairs' "
                       f"ratios): {fmt_x(paired, 2)}")


def erase_tables(run: Run, device: str, dtype: str, out: List[str]):
    for op, title in (("erase_fwd", "erase_and_modulate forward"),
                      ("erase_bwd", "erase_and_modulate backward")):
        shapes = run.shapes(op, device, dtype)
        if not shapes:
            continue
        out.append(f"\n**{title}, {device} {dtype}** (bytes: read + write of the image batches)\n")
        out.append("| shape | implementation | median | GB/s | % copy BW | vs eager | vs compile |")
        out.append("|---|---|---|---|---|---|---|")
        for shape in shapes:
            bw = run.copy(device, dtype, shape)[1]
            t_e = run.time(op, device, dtype, shape, "eager")
            t_c = run.time(op, device, dtype, shape, "compile")
            for impl in ERASE_IMPLS:
                t = run.time(op, device, dtype, shape, impl)
                if t is None:
                    if impl not in GPU_ONLY_IMPLS or device != "cpu":
                        out.append(f"| {shape} | {impl} | not measured | | | | |")
                    continue
                gbs, frac = bandwidth(run.nbytes(op, device, dtype, shape, impl), t, bw)
                out.append(f"| {shape} | {impl} | {fmt_t(t)} | {gbs} | {frac} | "
                           f"{fmt_x(ratio(t_e, t))} | {fmt_x(ratio(t_c, t))} |")


def train_step_shape(run: Run) -> Optional[str]:
    return next((k[3] for k in run.t if k[0] == "train_step"), None)


def train_table(run: Run, out: List[str]):
    shape = train_step_shape(run)
    if shape is None:
        return
    out.append(f"\n**Training step, cpu fp32, {shape} (plain CE over 3B images vs ANM)**\n")
    out.append("| model | CE step (3B images) | ANM step (anm_fast.masked_forward) | "
               "released composition | ANM / CE | released / CE |")
    out.append("|---|---|---|---|---|---|")
    for model in TRAIN_MODELS:
        t = {v: run.time("train_step", "cpu", "fp32", shape, v, model)
             for v in ("ce", "anm", "released")}
        out.append(f"| {model} | {fmt_t(t['ce'])} | {fmt_t(t['anm'])} | {fmt_t(t['released'])} "
                   f"| {fmt_x(ratio(t['anm'], t['ce']), 3)} | "
                   f"{fmt_x(ratio(t['released'], t['ce']), 3)} |")


def triton_over_cuda(run: Run) -> Tuple[Optional[float], int]:
    """Geometric mean of t(fused-triton) / t(fused-cuda) over every (op, shape, dtype) the run
    timed with both GPU backends, and how many pairs that was: below 1, Triton was faster."""
    logs = []
    for (op, device, dtype, shape, impl, model), (t_triton, _) in run.t.items():
        t_cuda = run.time(op, device, dtype, shape, "fused-cuda", model)
        if device == "cuda" and impl == "fused-triton" and t_cuda:
            logs.append(math.log(t_triton / t_cuda))
    return (math.exp(sum(logs) / len(logs)) if logs else None), len(logs)


def render_results(runs: List[Run], notes: str = "") -> str:
    out = ["# Benchmark results", "",
           "Generated by `bench/report.py` from `bench/results.json` (the medians of the "
           "pytest-benchmark runs named below; `bench/regenerate_results.sh` says how to measure "
           "them again). What each figure must reach: `docs/PERFORMANCE_GOALS.md`."]
    for run in runs:
        out += ["", f"## {run.info['title'] or run.name} (run `{run.name}`)", ""]
        out += conditions(run)
        ratio_, pairs = triton_over_cuda(run)
        if ratio_ is not None:
            out.append(f"- t(Triton) / t(CUDA), geometric mean over the {pairs} timings both "
                       f"backends ran: {ratio_:.3f} ({'Triton' if ratio_ < 1 else 'CUDA'} faster "
                       f"on this GPU)")
        configs = run.configs("anm_mask")
        if configs:
            out.append("\n### anm_mask (energy and peaks, boxes, erasing and labels)")
            for device, dtype in configs:
                anm_tables(run, device, dtype, out)
        configs = run.configs("erase_fwd", "erase_bwd")
        if configs:
            out.append("\n### erase_and_modulate forward / backward")
            for device, dtype in configs:
                erase_tables(run, device, dtype, out)
        if train_step_shape(run):
            out.append("\n### Training step")
            train_table(run, out)
    if not any(device == "cuda" for run in runs
               for device, _ in run.configs("anm_mask", "erase_fwd", "erase_bwd")):
        out.append("\n**GPU (CUDA fp32 and bf16, Triton and CUDA backends): not measured** (no "
                   "run here had a GPU; `bench/gpu_session.sh bench` measures them).")
    text = "\n".join(out) + "\n"
    return text + ("\n" + notes if notes else "")


# -------------------------------------------------------------- README table and key figures
HEADLINE_ROWS = [("released", "released per-image procedure (port, OpenCV resize)"),
                 ("eager", "eager vectorised PyTorch (the reference)"),
                 ("compile", "`torch.compile` of the reference"),
                 ("fused", "**`anm_fast.anm_mask`**"),
                 ("fused-ops", "the fused operator called directly"),
                 ("copy", "copy of the bytes that must move (memory floor)")]


def find(runs: List[Run], name: str) -> Optional[Run]:
    return next((r for r in runs if r.name == name), None)


def headline(runs: List[Run]) -> str:
    """README's table: anm_mask at CIFAR B=512 (CPU fp32), 1 core in CPU time and 2 cores in wall
    clock, each implementation's median and its speed-up over the released procedure."""
    chosen = [find(runs, name) for name in HEADLINE_RUNS]
    lines = ["| implementation | 1 core (CPU time) | vs released | 2 cores (wall clock) | "
             "vs released |", "|---|---|---|---|---|"]
    for impl, label in HEADLINE_ROWS:
        cells = []
        for run in chosen:
            if run is None:
                cells += ["not measured", "" if impl == "copy" else "-"]
                continue
            if impl == "copy":
                cells += [fmt_t(run.copy("cpu", "fp32", HEADLINE_SHAPE)[0]), ""]
                continue
            t = run.time("anm_mask", "cpu", "fp32", HEADLINE_SHAPE, impl)
            released = run.time("anm_mask", "cpu", "fp32", HEADLINE_SHAPE, "released")
            x = fmt_x(ratio(released, t))
            cells += [fmt_t(t), "1x" if impl == "released" and t is not None else x]
        if impl == "fused":
            cells = [f"**{c}**" if c else c for c in cells]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _anm_speedup(other):
    return lambda run, dev, dt, shape: ratio(run.time("anm_mask", dev, dt, shape, other),
                                            run.time("anm_mask", dev, dt, shape, "fused"))


def _floor(run, dev, dt, shape):
    """fused / copy timed in interleaved pairs where the run has it, else the two medians'."""
    paired = run.ratio("floor_ratio", dev, dt, shape, "fused")
    if paired is not None:
        return paired
    return ratio(run.time("anm_mask", dev, dt, shape, "fused"), run.copy(dev, dt, shape)[0])


def _erase_share(run, dev, dt, shape):
    t, bw = run.time("erase_fwd", dev, dt, shape, "fused"), run.copy(dev, dt, shape)[1]
    return None if t is None or not bw else run.nbytes("erase_fwd", dev, dt, shape,
                                                       "fused") / t / bw


def _train(model):
    def f(run, dev, dt, shape):
        s = train_step_shape(run)
        return ratio(run.time("train_step", dev, dt, s, "anm", model),
                     run.time("train_step", dev, dt, s, "ce", model))
    return f


# (figure, device, dtype, shape, how it is computed, format): the figures
# docs/PERFORMANCE_GOALS.md judges; one row each, one column per run of the summary
FIGURES = [("anm_mask speed-up over the released procedure", "cpu", "fp32", "cifar-B512",
            _anm_speedup("released"), lambda v: f"{v:.1f}x"),
           ("anm_mask speed-up over the eager reference", "cpu", "fp32", "cifar-B512",
            _anm_speedup("eager"), lambda v: f"{v:.2f}x"),
           ("anm_mask time / memory-floor copy", "cpu", "fp32", "cifar-B512", _floor,
            lambda v: f"{v:.2f}x"),
           ("training step ANM / CE, small_cnn", "cpu", "fp32", "cifar-B128", _train("small_cnn"),
            lambda v: f"{v:.3f}x"),
           ("training step ANM / CE, preact_resnet18", "cpu", "fp32", "cifar-B128",
            _train("preact_resnet18"), lambda v: f"{v:.3f}x")]
for _dt in ("fp32", "bf16"):
    for _shape in ("cifar-B512", "imagenet-B256"):
        FIGURES += [("anm_mask speed-up over the released procedure", "cuda", _dt, _shape,
                     _anm_speedup("released"), lambda v: f"{v:.0f}x"),
                    ("anm_mask speed-up over the eager reference", "cuda", _dt, _shape,
                     _anm_speedup("eager"), lambda v: f"{v:.1f}x"),
                    ("anm_mask speed-up over torch.compile", "cuda", _dt, _shape,
                     _anm_speedup("compile"), lambda v: f"{v:.1f}x"),
                    ("erase pass bandwidth / copy bandwidth", "cuda", _dt, _shape, _erase_share,
                     lambda v: f"{100 * v:.0f}%")]


def figures_table(runs: List[Run]) -> str:
    lines = ["| figure | device, dtype, shape | " + " | ".join(f"`{r.name}`" for r in runs) + " |",
             "|---|---|" + "---|" * len(runs)]
    for name, dev, dt, shape, f, show in FIGURES:
        cells = []
        for run in runs:
            v = f(run, dev, dt, shape)
            cells.append("not measured" if v is None else show(v))
        lines.append(f"| {name} | {dev} {dt} {shape} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------ writing into marked sections
BEGIN = "<!-- generated by bench/report.py from bench/results.json: do not edit by hand -->\n"
END = "<!-- end of generated part -->"


def replace_marked(text: str, table: str, path: str) -> str:
    """`text` with the part between the generated-part markers replaced by `table`."""
    pattern = re.escape(BEGIN) + r".*?" + re.escape(END)
    if not re.search(pattern, text, flags=re.S):
        raise SystemExit(f"{path}: no generated part (the two marker comments) to replace")
    return re.sub(pattern, lambda _: BEGIN + table + END, text, count=1, flags=re.S)


def notes_text() -> str:
    with open(os.path.join(HERE, "RESULTS_NOTES.md")) as f:
        return f.read()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("summary", nargs="?", default=os.path.join(HERE, "results.json"),
                    help="summary written by bench/summarize.py (default: bench/results.json)")
    ap.add_argument("--results", help="write RESULTS.md (with bench/RESULTS_NOTES.md) here")
    ap.add_argument("--no-notes", action="store_true", help="leave bench/RESULTS_NOTES.md out")
    ap.add_argument("--readme", help="README to update: its generated table")
    ap.add_argument("--goals", help="docs/PERFORMANCE_GOALS.md to update: its generated table")
    args = ap.parse_args(argv)
    runs = load(args.summary)
    text = render_results(runs, "" if args.no_notes else notes_text())
    if not (args.results or args.readme or args.goals):
        sys.stdout.write(text)
    if args.results:
        with open(args.results, "w") as f:
            f.write(text)
    for path, table in ((args.readme, headline), (args.goals, figures_table)):
        if path:
            with open(path) as f:
                old = f.read()
            with open(path, "w") as f:
                f.write(replace_marked(old, table(runs), path))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
