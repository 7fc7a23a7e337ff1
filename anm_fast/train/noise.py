"""Label-noise generators: symmetric, exact-rate symmetric, asymmetric, instance-dependent, human,
and "none" (the labels as given: a data set that brings its own, possibly wrong, labels).

Every generator is a pure function of (clean labels, rate, seed[, features]) so the same seed gives
the same noisy labels for every method of a comparison. The realised rate (fraction of labels that
differ from the truth) is always returned, because it is not the nominal one: symmetric noise in
the DivideMix convention may redraw the true class, so 80% nominal is about 72% realised on 10
classes.
"""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np

NOISE_KINDS = ("none", "sym", "sym-exact", "asym", "idn", "human")
# kinds we synthesise ourselves: the truth (which labels are wrong) is known
SYNTHETIC = ("sym", "sym-exact", "asym", "idn")

# CIFAR-10 (docs/SPEC.md, "Label noise"): truck->automobile, bird->airplane, deer->horse, cat<->dog.
CIFAR10_ASYM = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
# Digits (ours): pairs of digits that look alike in 8x8 scans, mirroring the CIFAR-10 map's shape
# (five source classes, one swapped pair): 7<->1, 3->8, 5->6, 9->4.
DIGITS_ASYM = {7: 1, 1: 7, 3: 8, 5: 6, 9: 4}
# CIFAR-100 super-class of each fine class (the data set's own "coarse_labels" are preferred when
# the files provide them; this table is the standard one, used as a fallback).
CIFAR100_COARSE = [
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11, 5, 10, 7, 6, 13, 15,
    3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5, 5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4,
    2, 0, 17, 4, 18, 17, 10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13]


@dataclass
class NoisyLabels:
    noisy: np.ndarray      # (n,) int64
    realised_rate: Optional[float]  # fraction of labels that differ from the clean ones (None:
                                    # unknown, e.g. labels as given)
    description: str


def parse_noise(spec: str):
    """'sym' / 'asym' / ... or 'human:KEY' -> (kind, key)."""
    kind, _, key = spec.partition(":")
    if kind not in NOISE_KINDS:
        raise ValueError(f"unknown noise {spec!r}: choose one of none (labels as given), sym, "
                         f"sym-exact, asym, idn, human:KEY (e.g. human:worse_label)")
    # human without a KEY is fine for a file holding one label list (a text list, .npy); a
    # CIFAR-N dict file then fails with the list of its keys.
    if kind != "human" and key:
        raise ValueError(f"noise {kind!r} takes no ':KEY' part, got {spec!r}")
    return kind, key or None


def _check_rate(rate: float) -> float:
    rate = float(rate)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"--noise-rate must lie in [0, 1], got {rate}")
    return rate


def realised_rate(clean: np.ndarray, noisy: np.ndarray) -> float:
    return float(np.mean(np.asarray(clean) != np.asarray(noisy))) if len(clean) else 0.0


def symmetric(labels, rate, num_classes, seed) -> np.ndarray:
    """DivideMix convention: a fraction `rate` of the samples (chosen exactly) get a class drawn
    uniformly from all classes, the true one included."""
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    n = len(labels)
    idx = rng.permutation(n)[: int(round(_check_rate(rate) * n))]
    noisy = labels.copy()
    noisy[idx] = rng.integers(0, num_classes, size=len(idx))
    return noisy


def symmetric_exact(labels, rate, num_classes, seed) -> np.ndarray:
    """Exactly round(rate * n) labels changed, each to a uniformly drawn *different* class."""
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    n = len(labels)
    idx = rng.permutation(n)[: int(round(_check_rate(rate) * n))]
    noisy = labels.copy()
    shift = rng.integers(1, num_classes, size=len(idx))  # 1..N-1: never the true class
    noisy[idx] = (labels[idx] + shift) % num_classes
    return noisy


def asym_map(dataset: str, num_classes: int, coarse: Optional[np.ndarray] = None) -> Dict[int, int]:
    if dataset in ("cifar10",):
        return dict(CIFAR10_ASYM)
    if dataset == "digits":
        return dict(DIGITS_ASYM)
    if dataset == "cifar100":
        if coarse is None:
            coarse = np.asarray(CIFAR100_COARSE)
        coarse = np.asarray(coarse)
        mapping = {}
        for sup in np.unique(coarse):
            members = sorted(np.flatnonzero(coarse == sup).tolist())
            for i, c in enumerate(members):  # next class within the super-class, cyclic
                mapping[c] = members[(i + 1) % len(members)]
        return mapping
    # Other data sets have no natural confusion map; the documented generic choice is c -> c+1.
    return {c: (c + 1) % num_classes for c in range(num_classes)}


def asymmetric(labels, rate, mapping: Dict[int, int], seed) -> np.ndarray:
    """Each sample of a source class of `mapping` moves to its mapped class with probability
    `rate` (Bernoulli per sample, as in the DivideMix code)."""
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    flip = rng.random(len(labels)) < _check_rate(rate)
    noisy = labels.copy()
    for src, dst in mapping.items():
        sel = (labels == src) & flip
        noisy[sel] = dst
    return noisy


def instance_dependent(labels, features, rate, num_classes, seed, std=0.1) -> np.ndarray:
    """Part-dependent noise of Xia et al. (2020), as in their released generator: each sample's
    flip rate q ~ TruncNormal(rate, std) on [0, 1]; a random projection W (d, N, N) gives class
    scores x @ W[y], the true class is excluded, softmax, scaled by q; the true class keeps 1 - q."""
    labels = np.asarray(labels, dtype=np.int64)
    rate = _check_rate(rate)
    rng = np.random.default_rng(seed)
    x = np.asarray(features, dtype=np.float64).reshape(len(labels), -1)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n, d = x.shape
    # truncated normal by rejection (rate in [0, 1] keeps the acceptance probability >= ~0.3)
    q = np.empty(n)
    filled = 0
    while filled < n:
        draw = rng.normal(rate, std, size=2 * (n - filled) + 16)
        draw = draw[(draw >= 0) & (draw <= 1)][: n - filled]
        q[filled:filled + len(draw)] = draw
        filled += len(draw)
    W = rng.normal(size=(num_classes, d, num_classes))
    noisy = labels.copy()
    for i in range(n):
        scores = x[i] @ W[labels[i]]
        scores[labels[i]] = -np.inf
        p = np.exp(scores - scores[np.isfinite(scores)].max())
        p = q[i] * p / p.sum()
        p[labels[i]] = 1.0 - q[i]
        noisy[i] = rng.choice(num_classes, p=p / p.sum())
    return noisy


def make_noisy_labels(kind: str, rate: float, clean: np.ndarray, *, num_classes: int,
                      dataset: str, seed: int, features=None, coarse=None,
                      human: Optional[np.ndarray] = None) -> NoisyLabels:
    clean = np.asarray(clean, dtype=np.int64)
    if kind == "none":  # train on the labels as they are; which of them are wrong is unknown
        return NoisyLabels(clean.copy(), None, "labels as given")
    if kind == "sym":
        noisy = symmetric(clean, rate, num_classes, seed)
    elif kind == "sym-exact":
        noisy = symmetric_exact(clean, rate, num_classes, seed)
    elif kind == "asym":
        noisy = asymmetric(clean, rate, asym_map(dataset, num_classes, coarse), seed)
    elif kind == "idn":
        if features is None:
            raise ValueError("idn noise needs the training images")
        noisy = instance_dependent(clean, features, rate, num_classes, seed)
    elif kind == "human":
        if human is None:
            raise ValueError("human noise needs --noise-file with the label list")
        noisy = np.asarray(human, dtype=np.int64)
        if noisy.shape != clean.shape:
            raise ValueError(f"the human label list has {len(noisy)} labels but the training set "
                             f"has {len(clean)} samples")
    else:
        parse_noise(kind)  # raises the helpful error
        raise AssertionError
    return NoisyLabels(noisy, realised_rate(clean, noisy),
                       f"{kind} nominal {rate:g}" if kind != "human" else "human")


def save_cached(path: str, labels: NoisyLabels, meta: dict) -> None:
    """Cache the noisy labels in the run folder: a resumed or re-analysed run reads the very same
    labels instead of trusting a generator to replay."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp.npz"
    rate = np.nan if labels.realised_rate is None else labels.realised_rate
    np.savez(tmp, noisy=labels.noisy, realised_rate=rate,
             meta=json.dumps(meta, sort_keys=True), description=labels.description)
    os.replace(tmp, path)


def load_cached(path: str, meta: dict) -> Optional[NoisyLabels]:
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            saved = json.loads(str(f["meta"]))
            rate = float(f["realised_rate"])
            labels = NoisyLabels(f["noisy"].astype(np.int64), None if np.isnan(rate) else rate,
                                 str(f["description"]))
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: the run's noisy-label cache is damaged ({type(e).__name__}: "
                         f"{e}); move it away to draw the labels again from the seed") from None
    if saved != json.loads(json.dumps(meta, sort_keys=True)):
        raise ValueError(f"{path} holds noisy labels for other settings "
                         f"({json.dumps(saved, sort_keys=True)}); use a new run folder")
    return labels
