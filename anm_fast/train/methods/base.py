"""What every training method shares: the run context, batching, optimisers, eval passes."""
from __future__ import annotations

import collections
import contextlib
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .. import distributed as dist
from .. import preempt
from ..augment import augment_keyed
from ..data import DataBundle
from ..global_bn import sync_batch_norm


@dataclass
class Context:
    data: DataBundle
    y_noisy: torch.Tensor          # (n,) int64 on device
    hp: Dict[str, Any]
    device: torch.device
    seed: int
    noise_kind: str
    noise_rate: float
    amp: bool = False              # bf16 autocast (GPU only)
    channels_last: bool = False

    @property
    def n(self) -> int:
        return len(self.y_noisy)

    @property
    def num_classes(self) -> int:
        return self.data.num_classes


class Method:
    """A training method: owns its networks, optimisers, schedulers and random generators.

    A method builds its networks with `build_branches` and says what it is through the class
    attribute `uses_anm` (the ANM config, one reconstruction decoder per network, the gallery
    plot) and the methods of the interface section; the epoch loop (single_run.py) asks for
    nothing else."""

    name = "base"
    uses_anm = False

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.hp = ctx.hp
        # All randomness of the loop comes from these generators (shuffles, MixUp coefficients,
        # ANM seeds) and from counter-based draws keyed by (seed, epoch, sample id) (augmentation),
        # so a checkpoint of the generators' states gives an exact resume.
        self.gen = torch.Generator().manual_seed(ctx.seed * 1000003 + 17)
        self.np_rng = np.random.Generator(np.random.PCG64(ctx.seed + 12345))
        # Draws whose count depends on the local batch size (MixUp pairings). One process: the
        # same generator, so nothing changes. Under torch.distributed: a per-rank generator,
        # because `gen` must stay identical on every rank to shard one global shuffle.
        self.local_gen = self.gen
        self.slice_weight = 1.0  # set per step by batches()
        # Augmentation is counter-based (augment.augment_keyed): a sample's crop and flip depend on
        # (seed, epoch, n-th augmenting call of the epoch, sample id), not on the rank or batch
        # position. Every rank makes the same calls per step, so the call count agrees.
        self._aug_epoch = 0
        self._aug_calls = 0
        self.quality: Optional[torch.Tensor] = None   # latest label quality of the train set
        self._reported_pretrained = False
        self._warming = False
        self._strong = None  # augment_strong.StrongViews, built on first use
        self.decoders: List[torch.nn.Module] = []   # one per network when ANM reconstructs
        self.histories = None   # one LossHistory per network under loss_history
        self.opts, self.scheds = [], []

    # -------------------------------------------------------------------------- building blocks
    def build_branches(self, count: int) -> List[torch.nn.Module]:
        """`count` networks, each trained by its own optimiser and scheduler. An ANM method also
        gets its ANM config (`anm_cfg`) and, while the reconstruction part is on, one decoder per
        network, trained by that network's optimiser; under loss_history each network gets a
        LossHistory. Every network is built before any decoder: that is the order in which
        their weights are drawn from torch's generator."""
        nets = [self.build_net() for _ in range(count)]
        if self.uses_anm:
            from ..presets import anm_config
            from .anm_parts import make_decoder, wants_decoder

            self.anm_cfg = anm_config(self.hp)
            if wants_decoder(self):  # the reconstruction part (an ablation switch)
                self.decoders = [make_decoder(self, net) for net in nets]
        for k, net in enumerate(nets):
            params = list(net.parameters())
            if self.decoders:
                params += list(self.decoders[k].parameters())
            opt, sched = self.build_opt(params)
            self.opts.append(opt)
            self.scheds.append(sched)
        if self.hp.get("loss_history"):
            from ...quality import LossHistory

            self.histories = [LossHistory(5) for _ in nets]
        return nets

    def decoder_of(self, k: int) -> Optional[torch.nn.Module]:
        """The reconstruction decoder of network k, or None when nothing is reconstructed."""
        return self.decoders[k] if self.decoders else None

    def history_of(self, k: int):
        """The LossHistory of network k, or None without loss_history."""
        return self.histories[k] if self.histories else None

    def build_net(self) -> torch.nn.Module:
        from ...models import build_model

        d = self.ctx.data
        kwargs = {}
        name = self.hp["model"]
        if name in ("resnet18", "resnet50") and d.x_train.shape[-1] <= 64:
            kwargs["cifar_stem"] = True
        if self.hp.get("width") and name in ("small_cnn", "preact_resnet18"):
            kwargs["width"] = int(self.hp["width"])
        if name.startswith("timm:"):
            kwargs["image_size"] = int(d.x_train.shape[-1])
        net = build_model(name, d.num_classes, in_channels=d.x_train.shape[1], **kwargs)
        if self.hp.get("pretrained"):
            # Local weights only (never downloaded); the classifier head may differ in size.
            from ..pretrained import load_pretrained

            loaded, total = load_pretrained(net, self.hp["pretrained"])
            if dist.is_main() and not self._reported_pretrained:
                print(f"pretrained: loaded {loaded} of the model's {total} tensors from "
                      f"{self.hp['pretrained']}", file=sys.stderr)
                self._reported_pretrained = True
        if self.hp.get("softmax_in_net"):
            from .softmax_output import SoftmaxOutput

            net = SoftmaxOutput(net)
        net = net.to(self.ctx.device)
        if self.hp.get("sync_bn"):
            net = sync_batch_norm(net, self.ctx.device)
        if self.ctx.channels_last:
            net = net.to(memory_format=torch.channels_last)
        return net

    def build_opt(self, params):
        opt = torch.optim.SGD(list(params), lr=self.hp["lr"], momentum=self.hp["momentum"],
                              weight_decay=self.hp["weight_decay"])
        if self.hp["schedule"] == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.hp["epochs"]))
        elif self.hp["schedule"] == "step":
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[self.hp["lr_step"]],
                                                         gamma=0.1)
        else:
            raise ValueError(f"unknown schedule {self.hp['schedule']!r}: step or cosine")
        dist.average_gradients_on_step(opt)  # data parallel: no-op in a single process
        if self.hp.get("warmup_clip"):
            opt.register_step_pre_hook(self._clip_in_warmup)
        return opt, sched

    def autocast(self):
        if self.ctx.amp:
            return torch.autocast(self.ctx.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def batches(self, indices: torch.Tensor, batch_size: int, drop_last: bool = False):
        """Shuffled mini-batches of `indices` (a CPU int64 tensor) from the method's generator.
        `batch_size` is the global batch: under torch.distributed each rank gets its slice.
        Polls for SIGTERM/SIGINT before every step (preempt.py)."""
        perm = indices[torch.randperm(len(indices), generator=self.gen)]
        stop = len(perm) - (len(perm) % batch_size if drop_last else 0)
        w = dist.world()
        for i in range(0, stop, batch_size):
            preempt.check()
            batch = perm[i:i + batch_size]
            if len(batch) < w:  # a tail too short to give every rank a sample: skipped by all
                continue
            local = dist.shard(batch)
            # Weight of this rank's per-sample-mean losses: ranks average their gradients, so a
            # slice smaller than len(batch) / world would otherwise weigh its samples more than
            # one process does (an uneven tail batch). 1.0 in one process and on even slices.
            self.slice_weight = w * len(local) / len(batch)
            yield local

    def images(self, idx: torch.Tensor, aug: bool = True, view: Optional[str] = None
               ) -> torch.Tensor:
        """Training images `idx`, with the trainer's crop and flip (aug), or through one of the
        strong-augmentation views of augment_strong.py (view)."""
        x = self.ctx.data.x_train[idx].to(self.ctx.device, non_blocking=True)
        if view is not None:
            if self._strong is None:
                from ..augment_strong import StrongViews

                d = self.ctx.data
                self._strong = StrongViews(d.mean, d.std, x.shape[-1], d.pad)
            x = self._strong(view, x, idx, seed=self.ctx.seed, epoch=self._aug_epoch,
                             call=self._aug_calls)
            self._aug_calls += 1
        elif aug:
            x = augment_keyed(x, idx, self.ctx.seed, self._aug_epoch, self._aug_calls,
                              self.ctx.data.pad, self.ctx.data.flip)
            self._aug_calls += 1
        if self.ctx.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def labels(self, idx: torch.Tensor) -> torch.Tensor:
        return self.ctx.y_noisy[idx.to(self.ctx.device)]

    def one_hot(self, y: torch.Tensor) -> torch.Tensor:
        return F.one_hot(y, self.ctx.num_classes).float()

    @torch.no_grad()
    def train_logits(self, net) -> torch.Tensor:
        """Logits of every (un-augmented) training image in eval mode: the loss pass of
        the label quality."""
        was = net.training
        net.eval()
        out = []
        bs = 512
        # under torch.distributed each rank scores its share, then every rank gets all of them
        mine = dist.local_indices(self.ctx.n) if dist.world() > 1 else None
        count = self.ctx.n if mine is None else len(mine)
        for i in range(0, count, bs):
            idx = torch.arange(i, min(i + bs, count)) if mine is None else mine[i:i + bs]
            with self.autocast():
                out.append(net(self.images(idx, aug=False)).float())
        net.train(was)
        logits = torch.cat(out)
        return logits if mine is None else dist.gather_by_index(logits, self.ctx.n)

    def prior_penalty(self, logits: torch.Tensor) -> torch.Tensor:
        """KL(uniform || mean prediction) over the batch (the global batch under torchrun: the
        penalty is not linear in the mean): keeps the predictions from collapsing onto a few
        classes (DivideMix's penalty, switch prior_penalty)."""
        N = self.ctx.num_classes
        prior = torch.full((N,), 1.0 / N, device=logits.device)
        pred_mean = dist.global_mean(logits.float().softmax(1))
        return (prior * (prior / pred_mean).log()).sum()

    def clean_posterior(self, net, history=None) -> torch.Tensor:
        """Label quality: the GMM posterior of the low-loss component over per-sample CE on the
        noisy labels."""
        from ...quality import gmm_clean_posterior

        losses = F.cross_entropy(self.train_logits(net), self.ctx.y_noisy, reduction="none")
        if history is not None and self.hp.get("loss_history"):
            history.append(losses)
            return history.clean_posterior()
        return gmm_clean_posterior(losses)

    def warmup_step(self, net, opt, idx) -> float:
        # the release's warm-up view (ColorJitter + RandomAffine) under warmup_views "sanm"
        view = "warmup" if self.hp.get("warmup_views", "standard") == "sanm" else None
        x, y = self.images(idx, view=view), self.labels(idx)
        with self.autocast():
            logits = net(x)
        loss = F.cross_entropy(logits.float(), y)
        if self.hp.get("conf_penalty"):
            # DivideMix's warm-up penalty for asymmetric noise: discourage over-confidence.
            p = logits.float().softmax(1)
            loss = loss + (p * p.clamp_min(1e-12).log()).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        (loss * self.slice_weight).backward()  # (see batches)
        self._warming = True  # the release clips warm-up gradients (_clip_in_warmup)
        try:
            opt.step()
        finally:
            self._warming = False
        return float(loss.detach())

    def _clip_in_warmup(self, optimizer, args, kwargs):
        # an optimiser step pre-hook registered after the cross-rank averaging one, so under
        # torchrun the averaged gradient is clipped, as one process would clip it
        if self._warming:
            torch.nn.utils.clip_grad_norm_(
                [p for g in optimizer.param_groups for p in g["params"]],
                float(self.hp["warmup_clip"]))

    # ------------------------------------------------------------------------------- interface
    def nets(self) -> List[torch.nn.Module]:
        raise NotImplementedError

    # What one iteration costs, in forward + backward passes over one batch (a forward alone
    # counts a third): the run-time estimate of duration.py, which the measured pace replaces
    # after the first epoch. Warm-up epochs, then training epochs.
    warmup_passes = 1.0
    train_passes = 1.0

    def passes(self, epoch: int) -> float:
        return self.warmup_passes if epoch < int(self.hp.get("warmup", 0)) else self.train_passes

    def train_epoch(self, epoch: int, bar=None) -> Dict[str, float]:
        raise NotImplementedError

    def iterations(self, epoch: int) -> int:
        """Steps of an epoch (the progress bar's length): one pass over the training set."""
        bs = self.hp["batch_size"]
        return (self.ctx.n + bs - 1) // bs

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities (eval mode); methods with two networks average them."""
        probs = 0
        for net in self.nets():
            was = net.training
            net.eval()
            with self.autocast():
                out = net(x).float()
            # softmax_in_net: the outputs are probabilities already (the release sums them)
            probs = probs + (out if self.hp.get("softmax_in_net") else out.softmax(1))
            net.train(was)
        return probs / len(self.nets())

    def final_quality(self) -> torch.Tensor:
        """Label quality to report at the end: the method's own, else the GMM of its net."""
        if self.quality is not None:
            return self.quality
        return self.clean_posterior(self.nets()[0])

    def begin_epoch(self, epoch: int) -> None:
        self._aug_epoch, self._aug_calls = int(epoch), 0
        if dist.world() > 1:
            self.local_gen = dist.local_generator(self.ctx.seed, epoch)

    def all_modules(self) -> List[torch.nn.Module]:
        """Networks and decoders: what BatchNorm statistics are averaged over under DDP."""
        return list(self.nets()) + list(self.decoders)

    def lr(self) -> float:
        return self.opts[0].param_groups[0]["lr"]

    def end_epoch(self):
        for s in self.scheds:
            s.step()

    def state_dict(self) -> Dict[str, Any]:
        return dict(
            nets=[n.state_dict() for n in self.nets()],
            decoders=[d.state_dict() for d in self.decoders],
            opts=[o.state_dict() for o in self.opts],
            scheds=[_sched_state(s.state_dict()) for s in self.scheds],
            gen=self.gen.get_state(),
            np_rng=_np_state_to_tensors(self.np_rng.bit_generator.state),
            quality=self.quality,
            histories=[h.state_dict() for h in self.histories] if self.histories else None,
            extra=self.extra_state(),
        )

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for n, s in zip(self.nets(), state["nets"]):
            n.load_state_dict(s)
        saved = state.get("decoders")
        if saved is None or len(saved) != len(self.decoders):
            raise ValueError(f"the checkpoint holds {'no' if saved is None else len(saved)} "
                             f"reconstruction decoders, this run has {len(self.decoders)} (a "
                             f"checkpoint of an older anm_fast, or another anm_recon setting)")
        for d, s in zip(self.decoders, saved):
            d.load_state_dict(s)
        for o, s in zip(self.opts, state["opts"]):
            o.load_state_dict(s)
        for sc, s in zip(self.scheds, state["scheds"]):
            if isinstance(s.get("milestones"), dict):
                s = dict(s, milestones=collections.Counter(s["milestones"]))
            sc.load_state_dict(s)
            if isinstance(sc, torch.optim.lr_scheduler.CosineAnnealingLR):
                # a resume with a different --epochs anneals to the new end, not the old one
                sc.T_max = max(1, int(self.hp["epochs"]))
        self.gen.set_state(state["gen"])
        self.np_rng.bit_generator.state = _np_state_from_tensors(state["np_rng"])
        q = state["quality"]
        self.quality = q.to(self.ctx.device) if q is not None else None
        if self.histories and state.get("histories"):
            for h, hs in zip(self.histories, state["histories"]):
                h.load_state_dict(hs)
        self.load_extra_state(state.get("extra") or {})

    def extra_state(self) -> Dict[str, Any]:
        """What a method keeps beyond networks, decoders, optimisers, generators, quality and
        loss histories (which state_dict holds for every method); tensors go back on the device
        in load_extra_state."""
        return {}

    def load_extra_state(self, state: Dict[str, Any]) -> None:
        pass


def _sched_state(sd):
    # MultiStepLR keeps its milestones in a collections.Counter, which older torch versions'
    # weights_only loader refuses: store a plain dict
    if isinstance(sd.get("milestones"), collections.Counter):
        sd = dict(sd, milestones=dict(sd["milestones"]))
    return sd


def _np_state_to_tensors(state):
    # PCG64 state holds 128-bit integers; store them as decimal strings so the checkpoint loads
    # with torch.load(weights_only=True).
    return {"bit_generator": state["bit_generator"],
            "state": str(state["state"]["state"]), "inc": str(state["state"]["inc"]),
            "has_uint32": int(state["has_uint32"]), "uinteger": int(state["uinteger"])}


def _np_state_from_tensors(d):
    return {"bit_generator": d["bit_generator"],
            "state": {"state": int(d["state"]), "inc": int(d["inc"])},
            "has_uint32": d["has_uint32"], "uinteger": d["uinteger"]}


def sharpen(p: torch.Tensor, T: float) -> torch.Tensor:
    pt = p ** (1.0 / T)
    return pt / pt.sum(1, keepdim=True)


def linear_rampup(current: float, warmup: int, length: int) -> float:
    if length <= 0:
        return 1.0
    return float(np.clip((current - warmup) / length, 0.0, 1.0))
