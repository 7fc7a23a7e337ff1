"""What a run leaves behind: metrics.jsonl, results.json, a printed table, PNG plots.

Every JSON file is written with allow_nan=False: a metric without a defined value (a ROC AUC with
no wrong label, a noise rate of labels taken as given) is left out, never written as NaN, which
most JSON parsers reject."""
from __future__ import annotations

import json
import math
import os
from typing import Dict, List, Optional, Sequence

import numpy as np


def roc_auc(is_clean: np.ndarray, score: np.ndarray) -> float:
    """Probability that a truly clean sample gets a higher quality than a truly noisy one (ties
    count half): the Mann-Whitney form of ROC AUC, without scikit-learn."""
    is_clean = np.asarray(is_clean, bool)
    score = np.asarray(score, np.float64)
    n_pos, n_neg = int(is_clean.sum()), int((~is_clean).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    sorted_scores = score[order]
    i = 0
    while i < len(score):  # average ranks over ties
        j = i
        while j + 1 < len(score) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[is_clean].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


class MetricsLog:
    """metrics.jsonl: one JSON line per epoch, fsynced (a power cut after an epoch's checkpoint
    must not lose its row). On resume, lines past the checkpoint's epoch (an epoch that ran but
    was not checkpointed) are dropped, so the log matches the resumed run, and rows missing for
    checkpointed epochs (a torn or lost line) are restored from `saved_rows`, the rows the
    checkpoint holds."""

    def __init__(self, path: str, resume_epoch: int = 0, saved_rows: Optional[List[Dict]] = None):
        self.path = path
        if os.path.exists(path) or saved_rows:
            rows = {}
            for row in saved_rows or ():
                rows[row["epoch"]] = row
            if os.path.exists(path):
                with open(path) as f:
                    for row in map(_row, f):
                        if row is not None:
                            rows[row.get("epoch", 0)] = row
            keep = [json.dumps(rows[e]) + "\n" for e in sorted(rows) if e < resume_epoch]
            # rewritten via a temp file: a kill here must not lose the rows already logged
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(keep)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)

    def write(self, row: Dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(defined(row), allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def rows(self) -> List[Dict]:
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            return [r for r in map(_row, f) if r is not None]


def _row(line: str):
    """One metrics.jsonl row; None for a blank line or the torn last line of a killed run."""
    if not line.strip():
        return None
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def summarise(rows: Sequence[Dict]) -> Dict[str, float]:
    # epochs without a test pass (eval_every > 1) hold test_acc None
    acc = [r["test_acc"] for r in rows if r.get("test_acc") is not None]
    if not acc:
        return {}
    return {"last": acc[-1], "best": max(acc), "mean_last10": float(np.mean(acc[-10:])),
            "epochs": len(rows)}


def defined(obj):
    """`obj` without the dict entries whose value is NaN or infinite (recursively)."""
    if isinstance(obj, dict):
        return {k: defined(v) for k, v in obj.items() if not _undefined(v)}
    if isinstance(obj, (list, tuple)):
        return [defined(v) for v in obj]
    return obj


def _undefined(v) -> bool:
    return isinstance(v, (float, np.floating)) and not math.isfinite(float(v))


def write_json(path: str, obj) -> None:
    """Strict JSON (no NaN/Infinity: undefined metrics are left out), via a temp file."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(defined(obj), f, indent=2, sort_keys=True, default=_jsonable, allow_nan=False)
    os.replace(tmp, path)


def _jsonable(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    return str(v)


def _fmt(values: List[float], pct: bool = True) -> str:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return "n/a"
    scale = 100.0 if pct else 1.0
    m = float(np.mean(vals)) * scale
    if len(vals) == 1:
        return f"{m:.2f}" if pct else f"{m:.3f}"
    s = float(np.std(vals)) * scale
    return f"{m:.2f} ± {s:.2f}" if pct else f"{m:.3f} ± {s:.3f}"


def table(results: Dict[str, Dict[str, Dict]], markdown: bool = False) -> str:
    """results[method][seed] = summary dict -> a table of mean ± std over seeds."""
    head = ["method", "seeds", "last-epoch acc", "best acc", "mean last 10", "quality AUC",
            "realised noise"]
    lines = []
    for method, per_seed in results.items():
        runs = list(per_seed.values())
        lines.append([method, str(len(runs)),
                      _fmt([r.get("last") for r in runs]), _fmt([r.get("best") for r in runs]),
                      _fmt([r.get("mean_last10") for r in runs]),
                      _fmt([r.get("quality_auc") for r in runs], pct=False),
                      _fmt([r.get("realised_noise_rate") for r in runs])])
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(l) + " |" for l in lines]
        return "\n".join(out)
    widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(head)]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    out = [fmt.format(*head), fmt.format(*["-" * w for w in widths])]
    out += [fmt.format(*l) for l in lines]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only: works on machines without a display
    import matplotlib.pyplot as plt

    return plt


def plot_curves(curves: Dict[str, List[List[float]]], path: str, title: str = "") -> None:
    """curves[method] = list (per seed) of per-epoch test accuracy."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, runs in curves.items():
        runs = [r for r in runs if r]
        if not runs:
            continue
        n = min(len(r) for r in runs)
        arr = np.asarray([r[:n] for r in runs]) * 100
        ep = np.arange(1, n + 1)
        ax.plot(ep, arr.mean(0), label=method)
        if len(runs) > 1:
            ax.fill_between(ep, arr.min(0), arr.max(0), alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_quality_hist(quality: np.ndarray, is_clean: np.ndarray, path: str, title: str = "") -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, 1, 41)
    ax.hist(quality[is_clean], bins=bins, alpha=0.6, label=f"truly clean ({int(is_clean.sum())})")
    ax.hist(quality[~is_clean], bins=bins, alpha=0.6, label=f"truly noisy ({int((~is_clean).sum())})")
    ax.set_xlabel("label quality q (GMM clean posterior)")
    ax.set_ylabel("samples")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_gallery(images, energy, box_max, box_min, labels: Optional[Sequence[str]], path: str,
                 mean=None, std=None) -> None:
    """Each image, its activation energy map, and the max (red) / min (blue) erased boxes."""
    plt = _plt()
    from matplotlib.patches import Rectangle

    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.4), squeeze=False)
    for i in range(n):
        img = images[i].detach().float().cpu()
        if mean is not None:
            img = img * torch_tensor(std).view(-1, 1, 1) + torch_tensor(mean).view(-1, 1, 1)
        img = img.clamp(0, 1).permute(1, 2, 0).numpy()
        H, W = img.shape[:2]
        ax = axes[0, i]
        ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray" if img.shape[2] == 1 else None)
        for box, colour in ((box_max[i], "red"), (box_min[i], "blue")):
            y0, x0, bh, bw = [int(v) for v in box]
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), bw, bh, fill=False, edgecolor=colour, lw=1.5))
        if labels is not None:
            ax.set_title(labels[i], fontsize=7)
        axes[1, i].imshow(energy[i].detach().float().cpu().numpy(), cmap="inferno",
                          extent=(-0.5, W - 0.5, H - 0.5, -0.5))
        for a in (ax, axes[1, i]):
            a.set_xticks([])
            a.set_yticks([])
    axes[0, 0].set_ylabel("image + boxes", fontsize=7)
    axes[1, 0].set_ylabel("energy", fontsize=7)
    fig.suptitle("ANM boxes: red = erased around the activation peak, blue = around the minimum "
                 "(larger when label quality q is low)", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_label_issues(issues, images, path: str, n: int = 16, mean=None, std=None) -> None:
    """The n most suspect training images of a LabelIssues table, titled given -> predicted."""
    plt = _plt()
    rows = issues.rows[:n]
    if not rows:
        return
    cols = min(8, len(rows))
    nrow = (len(rows) + cols - 1) // cols
    fig, axes = plt.subplots(nrow, cols, figsize=(1.5 * cols, 1.8 * nrow), squeeze=False)
    for a in axes.flat:
        a.axis("off")
    for a, r in zip(axes.flat, rows):
        img = images[r["index"]].detach().float().cpu()
        if mean is not None:
            img = img * torch_tensor(std).view(-1, 1, 1) + torch_tensor(mean).view(-1, 1, 1)
        img = img.clamp(0, 1).permute(1, 2, 0).numpy()
        a.imshow(img[..., 0] if img.shape[2] == 1 else img,
                 cmap="gray" if img.shape[2] == 1 else None)
        given = r.get("given_class", r["given_label"])
        pred = r.get("predicted_class", r["predicted_label"])
        a.set_title(f"#{r['index']} given {given}\npred {pred} q={r['quality']:.2f}", fontsize=6)
    fig.suptitle("most suspect labels (label_issues.csv order)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def torch_tensor(v):
    import torch

    return torch.tensor(list(v), dtype=torch.float32)
