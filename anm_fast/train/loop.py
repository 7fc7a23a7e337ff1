"""The driver over methods and seeds: the preset and hyper-parameters of each method, the data,
the noisy labels of each seed (cached in `<out>/noise/`), one run per (method, seed)
(single_run.py) and `<out>/results.json` with the accuracy curves. A run that already finished is
read back, not trained again."""
from __future__ import annotations

import json
import os
import sys
from typing import Callable, Dict, List, Optional

import torch

from . import distributed as dist
from . import reporting
from .data import DATASETS, DataBundle, image_folder_preset, load_dataset, probe_image_folder
from .label_files import load_label_file
from .methods import get_method
from .noise import NoisyLabels, load_cached, make_noisy_labels, parse_noise, save_cached
from .presets import PRESETS, choose_preset, resolve
from .settings import Settings
from .single_run import train_one


def choose_device(name: Optional[str]) -> torch.device:
    if dist.world() > 1 and torch.cuda.is_available() and (name or "auto") in ("auto", "cuda"):
        return torch.device("cuda", torch.cuda.current_device())  # this rank's GPU (dist.init)
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA GPU is visible to torch")
    return dev


def resolve_preset(s: Settings) -> None:
    """Name the preset of a run (s.preset, s.preset_reason): the one given, else the one
    choose_preset picks from the data set, its size and the device. Reads only file names and one
    image's size, so a bad setting fails before any data loads."""
    if s.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {s.dataset!r}: choose one of {', '.join(DATASETS)}")
    if s.preset:
        if s.preset not in PRESETS:
            raise ValueError(f"unknown preset {s.preset!r}: choose one of {', '.join(PRESETS)}")
        s.preset_reason = s.preset_reason or "chosen with --preset"
        return
    n, hw = 0, (0, 0)
    if s.dataset == "imagefolder":
        n, hw = probe_image_folder(s.data_dir)
        # CIFAR-10's recipe (300 epochs of PreAct ResNet-18) is days on a CPU: there the
        # folder's class names keep only CIFAR-10's noise maps (asym), not its preset.
        if image_folder_preset(s.data_dir) == "cifar10" and choose_device(s.device).type == "cuda":
            s.preset, s.preset_reason = "cifar10", "CIFAR-10's ten class folders: the CIFAR-10 preset"
            return
    s.preset, s.preset_reason = choose_preset(s.dataset, choose_device(s.device).type, n, hw)


def resolved_hp(s: Settings) -> Dict[str, Dict]:
    """Every method's whole hyper-parameter dict, as the run will use it."""
    if not s.preset:
        resolve_preset(s)
    kind = parse_noise(s.noise)[0]
    return {m: _hp_for(s, m, kind) for m in s.methods}


def prepare_labels(s: Settings, data: DataBundle, seed: int, cache: Optional[str]) -> NoisyLabels:
    kind, key = parse_noise(s.noise)
    meta = {"dataset": s.dataset, "noise": s.noise, "rate": s.noise_rate, "seed": seed,
            "n": len(data.y_train)}
    if cache and dist.world() > 1 and not dist.is_main():
        dist.barrier()  # rank 0 writes the cache first; every rank then reads the same labels
        cached = load_cached(cache, meta)
        if cached is None:
            raise ValueError(f"{cache}: rank 0 wrote no noisy-label cache (different folders?)")
        return cached
    labels = _prepare_labels(s, data, seed, cache, kind, key, meta)
    if cache and dist.world() > 1:
        dist.barrier()
    return labels


def _prepare_labels(s, data, seed, cache, kind, key, meta) -> NoisyLabels:
    if cache:
        cached = load_cached(cache, meta)
        if cached is not None:
            return cached
    human = None
    if kind == "human":
        human = load_label_file(s.noise_file, key, n=len(data.y_train), num_classes=data.num_classes,
                                train_files=data.train_files,
                                class_names=data.class_names or None, trust=s.trust_noise_file)
    elif not data.clean_known:
        raise ValueError("synthetic noise needs clean training labels")
    labels = make_noisy_labels(kind, s.noise_rate, data.y_train, num_classes=data.num_classes,
                               dataset=data.preset or s.dataset, seed=seed, features=data.x_train.numpy(),
                               coarse=data.coarse, human=human)
    if not data.clean_known:
        labels.realised_rate = None
    if cache:
        save_cached(cache, labels, meta)
    return labels


def run(s: Settings, out: str, *, stop_after: Optional[int] = None,
        on_checkpoint: Optional[Callable] = None) -> Dict:
    """All methods x seeds on the same noisy labels; results.json, the table and the plots."""
    device = choose_device(s.device)
    for m in s.methods:
        get_method(m)  # fail fast on a typo, before loading any data
    if not s.preset:
        resolve_preset(s)
    kind, _ = parse_noise(s.noise)
    first_hp = _hp_for(s, s.methods[0], kind)
    data = load_dataset(s.dataset, s.data_dir, image_size=int(first_hp["image_size"]),
                        train_subset=first_hp.get("train_subset"))
    os.makedirs(out, exist_ok=True)
    results: Dict[str, Dict[str, Dict]] = {m: {} for m in s.methods}
    curves: Dict[str, List[List[float]]] = {m: [] for m in s.methods}
    interrupted = False
    for seed in s.seeds:
        labels = prepare_labels(s, data, seed, os.path.join(out, "noise", f"seed{seed}.npz"))
        if dist.is_main():
            rate = ("" if labels.realised_rate is None else
                    f", realised noise rate {100 * labels.realised_rate:.2f}%")
            print(f"seed {seed}: {labels.description}{rate} on {len(labels.noisy)} training "
                  f"images", file=sys.stderr)
        for m in s.methods:
            hp = _hp_for(s, m, kind)
            run_dir = os.path.join(out, m, f"seed{seed}")
            summary = _finished_summary(run_dir, hp)
            if summary is None:
                summary = train_one(run_dir, data, labels, m, seed, hp, device, s,
                                    stop_after=stop_after, on_checkpoint=on_checkpoint)
            if summary is None:
                interrupted = True
                continue
            results[m][str(seed)] = summary
            if dist.is_main():
                curves[m].append(_accuracy_curve(run_dir))
    out_obj = {"dataset": s.dataset, "noise": s.noise, "noise_rate": s.noise_rate,
               "device": str(device), "results": results, "complete": not interrupted}
    if dist.is_main():
        _write_results(s, out, out_obj, curves)
    return out_obj


def _finished_summary(run_dir: str, hp: Dict) -> Optional[Dict]:
    """The summary of a run that already trained all its epochs, else None."""
    path = os.path.join(run_dir, "result.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        summary = json.load(f)
    return summary if summary.get("epochs") == int(hp["epochs"]) else None


def _accuracy_curve(run_dir: str) -> List[float]:
    rows = reporting.MetricsLog(os.path.join(run_dir, "metrics.jsonl"), resume_epoch=10**9).rows()
    return [r["test_acc"] for r in rows if r.get("test_acc") is not None]


def _write_results(s: Settings, out: str, out_obj: Dict, curves: Dict[str, List[List[float]]]):
    reporting.write_json(os.path.join(out, "results.json"), out_obj)
    if s.plots and any(curves.values()):
        try:
            reporting.plot_curves(curves, os.path.join(out, "accuracy.png"),
                                  f"{s.dataset}, {s.noise} {s.noise_rate:g}")
        except Exception as e:  # noqa: BLE001 - a plot must never lose finished runs
            print(f"warning: accuracy plot failed: {e}", file=sys.stderr)


def _hp_for(s: Settings, method: str, kind: str) -> Dict:
    overrides = dict(s.hp)
    overrides.update(s.method_hp.get(method, {}))
    return resolve(method, s.preset, kind, s.noise_rate, overrides)
