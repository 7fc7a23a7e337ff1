"""The epoch loop of one (method, seed) run, and what it leaves when it ends.

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
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from . import checkpoint as ckpt
from . import distributed as dist
from . import duration
from . import preempt
from . import reporting
from .data import DataBundle
from .methods import Context, get_method
from .noise import SYNTHETIC, NoisyLabels, parse_noise
from .settings import Settings
from ..label_issues import label_issues


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
    pace = duration.Pace(method, r.tag, start, r.epochs) if main and start < r.epochs else None
    for epoch in range(start, r.epochs):
        row = _train_epoch(r, method, epoch)
        if main:
            log.write(row)
            best_acc, warned = _collapse_warning(r.method_name, r.seed, epoch, row["test_acc"],
                                                 best_acc, r.hp, r.data.num_classes, warned)
            _print_epoch(r, epoch, row)
            pace.epoch_done(epoch, row["seconds"])
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
                          paths=data.train_files,
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
    """What ANM erases (for a method that uses ANM): the n/2 lowest- and n/2 highest-quality
    training images with their activation energy and the two boxes (red: around the activation
    peak, blue: around the minimum); lower quality means larger boxes."""
    from ..api import anm_mask
    from ..masked import capture_features

    net = method.nets()[0]
    order = np.argsort(q, kind="stable")
    idx = torch.as_tensor(np.concatenate([order[: n // 2], order[::-1][: n - n // 2]]),
                          dtype=torch.int64)
    x = data.x_train[idx].to(method.ctx.device).float()
    fmap = capture_features(net, x, probe=True).fmap.float()
    qb = torch.as_tensor(q[idx.numpy()], dtype=torch.float32, device=x.device).clamp(0, 1)
    labels_t = torch.as_tensor(labels.noisy[idx.numpy()], device=x.device)
    mb = anm_mask(x.contiguous(), fmap.contiguous(), labels_t, qb,
                  config=method.anm_cfg, seed=0, num_classes=data.num_classes)
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
