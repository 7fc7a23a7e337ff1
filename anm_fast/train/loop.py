"""The epoch loop of one (method, seed) run, and the driver over methods and seeds.

One run = one folder `<out>/<method>/seed<k>/` with checkpoint.pt (rewritten atomically every
epoch, the previous one kept, both checksummed: checkpoint.py), metrics.jsonl, result.json and
label_issues.csv (every training sample, most suspect label first: anm_fast.label_issues).
Starting a run whose folder holds a checkpoint continues it exactly: the state restored is the
whole state (weights, optimisers, schedulers, generators, loss history), so 2 epochs + resume 2
gives the same weights as 4 epochs in one go on CPU. SIGTERM/SIGINT stop the run at the next step
boundary (preempt.py); under torchrun, rank 0 alone writes files (distributed.py).
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from . import checkpoint as ckpt
from . import distributed as dist
from . import preempt
from . import reporting
from .data import DATASETS, DataBundle, image_folder_preset, load_dataset, probe_image_folder
from .label_files import load_label_file
from .methods import Context, get_method
from .noise import SYNTHETIC, NoisyLabels, load_cached, make_noisy_labels, parse_noise, save_cached
from .presets import PRESETS, choose_preset, resolve
from ..label_issues import label_issues


def choose_device(name: Optional[str]) -> torch.device:
    if dist.world() > 1 and torch.cuda.is_available() and (name or "auto") in ("auto", "cuda"):
        return torch.device("cuda", torch.cuda.current_device())  # this rank's GPU (dist.init)
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA GPU is visible to torch")
    return dev


@dataclass
class Settings:
    dataset: str = "digits"
    data_dir: Optional[str] = None
    noise: str = "sym"
    noise_file: Optional[str] = None
    noise_rate: float = 0.5
    methods: List[str] = field(default_factory=lambda: ["dividemix-anm"])
    seeds: List[int] = field(default_factory=lambda: [0])
    device: Optional[str] = None
    hp: Dict = field(default_factory=dict)             # overrides for every method
    method_hp: Dict = field(default_factory=dict)      # overrides per method name
    trust_noise_file: bool = False
    progress: bool = True
    plots: bool = True
    preset: Optional[str] = None                       # None: chosen from the data (resolve_preset)
    preset_reason: str = ""


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
        if image_folder_preset(s.data_dir) == "cifar10":
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
                                train_files=getattr(data, "train_files", None),
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


def truth_known(s: Settings, data: DataBundle) -> bool:
    """Whether we know which training labels are wrong: noise we synthesised from clean labels,
    or a label list over a data set with clean labels. Labels as given (--noise none): no."""
    kind = parse_noise(s.noise)[0]
    return data.clean_known and (kind in SYNTHETIC or kind == "human")


@torch.no_grad()
def train_probs(method) -> torch.Tensor:
    """Class probabilities of the final model(s) on every un-augmented training image (CPU)."""
    out = []
    for i in range(0, method.ctx.n, 512):
        idx = torch.arange(i, min(i + 512, method.ctx.n))
        out.append(method.predict(method.images(idx, aug=False)).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def evaluate(method, data: DataBundle, device) -> float:
    correct = 0
    y = torch.as_tensor(data.y_test)
    for i in range(0, len(y), 1024):
        x = data.x_test[i:i + 1024].to(device)
        if method.ctx.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        correct += int((method.predict(x).argmax(1).cpu() == y[i:i + 1024]).sum())
    return correct / max(len(y), 1)


def train_one(run_dir: str, data: DataBundle, labels: NoisyLabels, method_name: str, seed: int,
              hp: Dict, device: torch.device, s: Settings, *, stop_after: Optional[int] = None,
              on_checkpoint: Optional[Callable] = None) -> Optional[Dict]:
    """Train (or continue) one run; returns its summary, or None when stopped by stop_after."""
    threads = torch.get_num_threads()
    if hp.get("threads"):
        # small CPU models on a busy machine run faster on 1 thread than on contended 2
        torch.set_num_threads(int(hp["threads"]))
    try:
        return _train_one(_Run(run_dir, data, labels, method_name, seed, hp, device, s),
                          stop_after=stop_after, on_checkpoint=on_checkpoint)
    finally:
        torch.set_num_threads(threads)  # the caller's process (e.g. a test session) is left as is


@dataclass
class _Run:
    """One (method, seed) run: what each step of its epoch loop reads."""

    dir: str
    data: DataBundle
    labels: NoisyLabels
    method_name: str
    seed: int
    hp: Dict
    device: torch.device
    s: Settings

    def __post_init__(self):
        self.epochs = int(self.hp["epochs"])
        self.truth = truth_known(self.s, self.data)
        self.is_clean = self.labels.noisy == self.data.y_train
        self.tag = f"[{self.method_name} seed {self.seed}]"
        self.checkpoint = os.path.join(self.dir, ckpt.CHECKPOINT)


def _train_one(r: _Run, *, stop_after, on_checkpoint):
    os.makedirs(r.dir, exist_ok=True)
    method = _build_method(r)
    identity = ckpt.run_identity(r.s, r.method_name, r.seed, r.hp, r.data)
    start, saved_rows = _restore(r, method, identity)
    main = dist.is_main()
    log = reporting.MetricsLog(os.path.join(r.dir, "metrics.jsonl"), resume_epoch=start,
                               saved_rows=saved_rows) if main else None
    best_acc = max([row["test_acc"] for row in log.rows() if row.get("test_acc") is not None]
                   or [0.0]) if main else 0.0
    warned = False
    for epoch in range(start, r.epochs):
        row = _train_epoch(r, method, epoch)
        if main:
            log.write(row)
            best_acc, warned = _collapse_warning(r.method_name, r.seed, epoch, row["test_acc"],
                                                 best_acc, r.hp, r.data.num_classes, warned)
            _print_epoch(r, epoch, row)
        _save_checkpoint(r, method, epoch, identity, log, on_checkpoint)
        if stop_after is not None and epoch + 1 >= stop_after and epoch + 1 < r.epochs:
            return None
        preempt.check()  # a signal during evaluation or the write: stop on this checkpoint
    return _finish(r, method, log)


def _build_method(r: _Run):
    """The run's method, its networks initialised from the run's seed."""
    gpu = r.device.type == "cuda"
    torch.manual_seed(r.seed)  # model initialisation
    ctx = Context(data=r.data, y_noisy=torch.as_tensor(r.labels.noisy, dtype=torch.int64).to(
                      r.device), hp=r.hp, device=r.device, seed=r.seed,
                  noise_kind=parse_noise(r.s.noise)[0], noise_rate=r.s.noise_rate,
                  amp=gpu and r.hp.get("amp", True),
                  channels_last=gpu and r.hp.get("channels_last", True))
    method = get_method(r.method_name)(ctx)
    if gpu and r.hp.get("compile"):
        for net in method.nets():
            net.compile()
    return method


def _restore(r: _Run, method, identity) -> Tuple[int, Optional[List[Dict]]]:
    """Load the run's newest checkpoint into `method` and the random generators:
    (first epoch to train, the saved metrics rows); (0, None) when there is none."""
    state = ckpt.load_latest(r.dir, quiet=not dist.is_main(), identity=identity)
    if state is None:
        return 0, None
    if state["method_name"] != r.method_name:
        raise ValueError(f"{r.checkpoint} belongs to method {state['method_name']!r}")
    method.load_state_dict(state["method"])
    ckpt.set_rng_state(state["rng"])
    start = int(state["epoch"])
    if dist.is_main():
        print(f"{r.tag} resuming at epoch {start + 1} of {r.hp['epochs']} from {r.checkpoint}",
              file=sys.stderr)
    return start, state.get("metrics")


def _train_epoch(r: _Run, method, epoch: int) -> Dict:
    """Train one epoch, then evaluate (every eval_every-th epoch and the last); its metrics row."""
    t0 = time.time()
    method.begin_epoch(epoch)
    bar = None
    if r.s.progress and dist.is_main() and sys.stderr.isatty():  # a bar in a log is noise
        from tqdm.auto import tqdm

        bar = tqdm(total=method.iterations(epoch), leave=False, file=sys.stderr,
                   desc=f"{r.method_name} seed {r.seed} epoch {epoch + 1}/{r.epochs}")
    try:
        lr = method.lr()
        stats = method.train_epoch(epoch, bar)
    finally:
        if bar is not None:
            bar.close()
    method.end_epoch()
    dist.average_bn_buffers(method.all_modules())  # same model on every rank from here on
    every = int(r.hp.get("eval_every") or 1)  # CPU measurements: test every k-th epoch
    acc = evaluate(method, r.data, r.device) if (epoch + 1) % every == 0 or \
        epoch + 1 == r.epochs else None
    row = {"epoch": epoch, "test_acc": acc, "lr": lr, "seconds": round(time.time() - t0, 3)}
    if method.quality is not None and r.truth:
        row["quality_auc"] = reporting.roc_auc(r.is_clean, method.quality.cpu().numpy())
    row.update({k: float(v) for k, v in stats.items()})
    return row


def _print_epoch(r: _Run, epoch: int, row: Dict) -> None:
    extra = f"  quality AUC {row['quality_auc']:.3f}" if "quality_auc" in row else ""
    acc = row["test_acc"]
    shown = "-" if acc is None else f"{100 * acc:.2f}%"
    print(f"{r.tag} epoch {epoch + 1}/{r.epochs}  test acc {shown}{extra}  "
          f"({row['seconds']:.1f}s)", file=sys.stderr)


def _save_checkpoint(r: _Run, method, epoch: int, identity, log, on_checkpoint) -> None:
    main = dist.is_main()
    state = {"epoch": epoch + 1, "method_name": r.method_name, "seed": r.seed,
             "hp": _plain(r.hp), "method": method.state_dict(), "rng": ckpt.rng_state(),
             "identity": identity,
             "metrics": log.rows() if main else []}  # metrics: rebuilds a torn log
    if on_checkpoint is not None:
        on_checkpoint(epoch + 1)
    if main:
        ckpt.save_atomic(state, r.checkpoint)
    dist.barrier()  # no rank reads or outruns a checkpoint that is not whole yet


def _finish(r: _Run, method, log) -> Dict:
    """The finished run's files: result.json, label_issues.csv and the plots; its summary."""
    q = method.final_quality().detach().float().cpu().numpy()
    if dist.world() > 1:
        # every rank's own quality vector, so a test (or a user) can check they agree
        np.save(os.path.join(r.dir, f"quality.rank{dist.rank()}.npy"), q)
    if not dist.is_main():
        return {"method": r.method_name, "seed": r.seed, "rank": dist.rank()}
    summary = reporting.summarise(log.rows())
    summary.update(method=r.method_name, seed=r.seed)
    data = r.data
    issues = label_issues(r.labels.noisy, quality=np.clip(q, 0.0, 1.0), probs=train_probs(method),
                          paths=getattr(data, "train_files", None),
                          true_labels=data.y_train if r.truth else None,
                          class_names=_names(data))
    issues.write_csv(os.path.join(r.dir, LABEL_ISSUES))
    summary["label_issues"] = issues.summary()
    if r.truth:
        summary.update(realised_noise_rate=r.labels.realised_rate,
                       quality_auc=reporting.roc_auc(r.is_clean, q))
    reporting.write_json(os.path.join(r.dir, "result.json"), summary)
    if r.s.plots:
        _plots(r, method, q, issues)
    return summary


def _plots(r: _Run, method, q: np.ndarray, issues) -> None:
    try:
        if r.truth:
            reporting.plot_quality_hist(q, r.is_clean, os.path.join(r.dir, "quality_hist.png"),
                                        f"{r.method_name}, seed {r.seed}: label quality")
        reporting.plot_label_issues(issues, r.data.x_train, os.path.join(r.dir,
                                    "label_issues.png"), mean=r.data.mean, std=r.data.std)
        if method.uses_anm:
            gallery(method, r.data, r.labels, q, os.path.join(r.dir, "gallery.png"))
    except Exception as e:  # noqa: BLE001 - a plot must never lose a finished run
        print(f"warning: plots failed: {e}", file=sys.stderr)


LABEL_ISSUES = "label_issues.csv"


def _names(data: DataBundle) -> Optional[List[str]]:
    """Class names worth a column: not for classes that are just their own index (digits)."""
    names = list(data.class_names or [])
    if len(names) != data.num_classes or names == [str(i) for i in range(data.num_classes)]:
        return None
    return names


def gallery(method, data: DataBundle, labels: NoisyLabels, q: np.ndarray, path: str, n: int = 8):
    """What ANM erases: the n/2 lowest- and n/2 highest-quality training images with their
    activation energy and the two boxes (red: around the activation peak, blue: around the
    minimum); lower quality means larger boxes."""
    from ..api import anm_mask
    from ..masked import capture_features
    from .presets import anm_config

    net = method.nets()[0]
    order = np.argsort(q, kind="stable")
    idx = torch.as_tensor(np.concatenate([order[: n // 2], order[::-1][: n - n // 2]]),
                          dtype=torch.int64)
    x = data.x_train[idx].to(method.ctx.device).float()
    fmap = capture_features(net, x, probe=True).fmap.float()
    qb = torch.as_tensor(q[idx.numpy()], dtype=torch.float32, device=x.device).clamp(0, 1)
    labels_t = torch.as_tensor(labels.noisy[idx.numpy()], device=x.device)
    mb = anm_mask(x.contiguous(), fmap.contiguous(), labels_t, qb,
                  config=anm_config(method.hp), seed=0, num_classes=data.num_classes)
    import torch.nn.functional as F

    energy = F.interpolate(mb.energy[:, None], size=x.shape[-2:], mode="bilinear",
                           align_corners=False)[:, 0]
    names = [f"y={int(labels_t[i])} q={float(qb[i]):.2f}" for i in range(len(idx))]
    reporting.plot_gallery(x.cpu(), energy.cpu(), mb.box_max.cpu(), mb.box_min.cpu(), names, path,
                           mean=data.mean, std=data.std)


def _collapse_warning(method_name, seed, epoch, acc, best, hp, num_classes, warned):
    """Warn (once) when test accuracy falls to near chance after the warm-up although it was well
    above (a run that collapsed onto a few classes); returns (best accuracy so far, warned)."""
    if acc is None:
        return best, warned
    chance = 1.0 / num_classes
    if not warned and epoch >= int(hp.get("warmup", 0)) and best >= 2 * chance and \
            acc < min(0.5 * best, 2 * chance):
        warned = True
        print(f"warning: [{method_name} seed {seed}] test accuracy fell from {100 * best:.1f}% "
              f"to {100 * acc:.1f}% (chance {100 * chance:.1f}%) after the warm-up: the model "
              f"collapsed onto few classes. Try a lower --lr, a longer --warmup, "
              f"--method dividemix-anm, or --method ce to check the data", file=sys.stderr)
    return max(best, acc), warned


def _plain(hp: Dict) -> Dict:
    return {k: v for k, v in hp.items() if isinstance(v, (int, float, str, bool, type(None)))}


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
    main = dist.is_main()
    for seed in s.seeds:
        labels = prepare_labels(s, data, seed, os.path.join(out, "noise", f"seed{seed}.npz"))
        if main:
            rate = ("" if labels.realised_rate is None else
                    f", realised noise rate {100 * labels.realised_rate:.2f}%")
            print(f"seed {seed}: {labels.description}{rate} on {len(labels.noisy)} training "
                  f"images", file=sys.stderr)
        for m in s.methods:
            hp = _hp_for(s, m, kind)
            run_dir = os.path.join(out, m, f"seed{seed}")
            done = os.path.join(run_dir, "result.json")
            if os.path.exists(done) and _finished(done, hp):
                import json

                with open(done) as f:
                    summary = json.load(f)
            else:
                summary = train_one(run_dir, data, labels, m, seed, hp, device, s,
                                    stop_after=stop_after, on_checkpoint=on_checkpoint)
            if summary is None:
                interrupted = True
                continue
            results[m][str(seed)] = summary
            if not main:
                continue
            curves[m].append([r["test_acc"] for r in
                              reporting.MetricsLog(os.path.join(run_dir, "metrics.jsonl"),
                                                   resume_epoch=10**9).rows()
                              if r.get("test_acc") is not None])
    out_obj = {"dataset": s.dataset, "noise": s.noise, "noise_rate": s.noise_rate,
               "device": str(device), "results": results, "complete": not interrupted}
    if not main:
        return out_obj
    reporting.write_json(os.path.join(out, "results.json"), out_obj)
    if s.plots and any(curves.values()):
        try:
            reporting.plot_curves(curves, os.path.join(out, "accuracy.png"),
                                  f"{s.dataset}, {s.noise} {s.noise_rate:g}")
        except Exception as e:  # noqa: BLE001
            print(f"warning: accuracy plot failed: {e}", file=sys.stderr)
    return out_obj


def _finished(result_path: str, hp: Dict) -> bool:
    import json

    with open(result_path) as f:
        return json.load(f).get("epochs") == int(hp["epochs"])


def _hp_for(s: Settings, method: str, kind: str) -> Dict:
    overrides = dict(s.hp)
    overrides.update(s.method_hp.get(method, {}))
    return resolve(method, s.preset, kind, s.noise_rate, overrides)
