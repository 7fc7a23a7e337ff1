"""Which labels are probably wrong: one table per training set, most suspect first.

`label_issues(given_labels, quality=... or losses=..., probs=...)` ranks every sample by its label
quality (the clean-component posterior of anm_fast.quality: 1 = surely clean). `anm-train` writes
the same table as label_issues.csv in each method/seed folder; masked_forward users build it from
their own quality vector or per-sample losses.

Order: quality ascending; among equal qualities (a GMM posterior saturates at 0 for most wrong
labels) the sample whose given label the model believes least comes first, then the lower index.
A row is `suspect` when its quality is below `threshold` (0.5: the noisy component is the likelier).
"""
from __future__ import annotations

import csv
import dataclasses
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

__all__ = ["LabelIssues", "label_issues"]


def _vector(name: str, v, n: Optional[int], dtype) -> Optional[np.ndarray]:
    if v is None:
        return None
    if isinstance(v, torch.Tensor):
        v = v.detach().float().cpu().numpy() if v.is_floating_point() else v.detach().cpu().numpy()
    a = np.asarray(v)
    if a.ndim != 1 or (n is not None and len(a) != n):
        want = f"({n},)" if n is not None else "1-D"
        raise ValueError(f"{name} must be a vector of shape {want}, one value per sample, got "
                         f"shape {a.shape}")
    if np.issubdtype(dtype, np.integer) and not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name} must hold integer class indices, got dtype {a.dtype}")
    if np.issubdtype(dtype, np.floating) and not np.isfinite(a.astype(np.float64)).all():
        raise ValueError(f"{name} holds {int((~np.isfinite(a.astype(np.float64))).sum())} NaN or "
                         f"infinite values")
    return a.astype(dtype)


@dataclasses.dataclass
class LabelIssues:
    """The ranked table: `rows` most suspect first, plus the counts of `summary()`."""

    rows: List[Dict]          # one dict per sample, keys = `columns`
    columns: List[str]
    threshold: float
    truth_known: bool

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, name: str) -> np.ndarray:
        return np.asarray([r[name] for r in self.rows])

    def summary(self) -> Dict:
        """flagged (suspect rows); with truth: truly_mislabeled, precision and recall of the
        flags, and precision_at_k: the fraction truly mislabeled among the k most suspect rows,
        k = truly_mislabeled. Metrics without a defined value (no flag, no wrong label) are
        absent, never NaN."""
        flagged = sum(r["suspect"] for r in self.rows)
        out: Dict = {"samples": len(self.rows), "flagged": int(flagged),
                     "threshold": self.threshold}
        if not self.truth_known:
            return out
        wrong = np.asarray([r["given_label"] != r["true_label"] for r in self.rows])
        suspect = np.asarray([bool(r["suspect"]) for r in self.rows])
        k = int(wrong.sum())
        out["truly_mislabeled"] = k
        hits = int((wrong & suspect).sum())
        if flagged:
            out["precision"] = hits / flagged
        if k:
            out["recall"] = hits / k
            out["precision_at_k"] = float(wrong[:k].mean())
        return out

    def write_csv(self, path: str) -> None:
        """The table as CSV (header row, most suspect first), via a temp file: never half-written."""
        tmp = path + ".tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns)
            w.writeheader()
            for r in self.rows:
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        os.replace(tmp, path)


def label_issues(given_labels, *, quality=None, losses=None, probs=None, paths=None,
                 true_labels=None, class_names: Optional[Sequence[str]] = None,
                 threshold: float = 0.5) -> LabelIssues:
    """Rank the samples of a training set by how likely their given label is wrong.

    given_labels: (n,) class indices as used in training.
    quality:  (n,) label quality in [0, 1] (1 = clean), e.g. the q of a masked_forward loop; or
    losses:   (n,) per-sample losses on the given labels (anm_fast.quality.per_sample_losses):
              the quality is then their two-component GMM posterior (gmm_clean_posterior).
    probs:    (n, N) class probabilities (or logits) of the final model: predicted_label, and the
              tie-break among equal qualities. Without it predicted_label is left empty.
    paths:    (n,) file names for the `path` column (image folders); else empty.
    true_labels: (n,) the truth, when known (synthetic noise): adds `true_label` and the
              precision/recall of LabelIssues.summary().
    class_names: names of the N classes: adds given_class / predicted_class (/ true_class).
    threshold: quality below which a row is `suspect` (default 0.5).
    """
    y = _vector("given_labels", given_labels, None, np.int64)
    n = len(y)
    if (quality is None) == (losses is None):
        raise ValueError("pass exactly one of quality= (label quality per sample) or losses= "
                         "(per-sample losses on the given labels)")
    if losses is not None:
        from .quality import gmm_clean_posterior

        lv = _vector("losses", losses, n, np.float64)
        q = gmm_clean_posterior(torch.as_tensor(lv, dtype=torch.float32)).double().numpy()
    else:
        q = _vector("quality", quality, n, np.float64)
        if q.size and (q.min() < 0 or q.max() > 1):
            raise ValueError(f"quality must lie in [0, 1], got values in [{q.min()}, {q.max()}]")
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    pred = belief = None
    if probs is not None:
        p = probs.detach().float().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs, np.float64)
        if p.ndim != 2 or len(p) != n:
            raise ValueError(f"probs must be (n, N) = ({n}, N), got shape {p.shape}")
        if y.size and (y.min() < 0 or y.max() >= p.shape[1]):
            raise ValueError(f"given_labels must lie in [0, {p.shape[1]}) (the columns of probs)")
        pred = p.argmax(1)
        belief = p[np.arange(n), y]
    t = _vector("true_labels", true_labels, n, np.int64)
    if paths is not None and len(paths) != n:
        raise ValueError(f"paths must name the {n} samples, got {len(paths)}")
    names = list(class_names) if class_names is not None else None

    # lexsort: last key first -> quality, then the model's belief in the given label, then index
    keys = [np.arange(n)] + ([belief] if belief is not None else []) + [q]
    order = np.lexsort(keys)
    columns = ["index", "path", "given_label", "predicted_label", "quality", "suspect"]
    if t is not None:
        columns.append("true_label")
    if names is not None:
        columns += ["given_class", "predicted_class"] + (["true_class"] if t is not None else [])
    rows = []
    for i in order.tolist():
        r = {"index": i, "path": str(paths[i]) if paths is not None else "",
             "given_label": int(y[i]), "predicted_label": int(pred[i]) if pred is not None else "",
             "quality": float(q[i]), "suspect": int(q[i] < threshold)}
        if t is not None:
            r["true_label"] = int(t[i])
        if names is not None:
            r["given_class"] = names[y[i]]
            r["predicted_class"] = names[pred[i]] if pred is not None else ""
            if t is not None:
                r["true_class"] = names[t[i]]
        rows.append(r)
    return LabelIssues(rows, columns, float(threshold), t is not None)
