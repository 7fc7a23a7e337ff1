"""DivideMix (Li et al. 2020) and DivideMix + ANM as the paper describes it (the authors'
released script differs in many points: recipes.py, `--recipe sanm-release`).

Two networks. After a cross-entropy warm-up, every epoch each network's per-sample losses are fit
by a two-component GMM (co-divide); each network is then trained on the split made by the *other*
network: samples with clean posterior > p_threshold are labeled (their label refined with the
network's own prediction, weighted by the posterior), the rest unlabeled (co-guessed by both
networks), and MixMatch mixes them. With ANM, the max- and min-erased copies of the labeled and of
the unlabeled images join MixUp with their modulated targets, and a decoder reconstructs the clean
image from the erased images' features (loss weight recon_weight). `mixmatch_groups` builds one
step's groups: two views per branch plus the erased copies, or under views "sanm" the release's
six groups per branch; the ANM ablation switches (anm_parts.PARTS) drop single parts.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import distributed as dist
from .base import Method, linear_rampup, sharpen
from .anm_parts import masked_step_inputs


class DivideMix(Method):
    name = "dividemix"
    uses_anm = False
    # a MixMatch step: 4 batches (two views of the labeled and of the unlabeled split) forward +
    # backward, 8 guessing forwards (4 views x 2 networks), co-divide and the mixing: about 8.5
    # (scaled from dividemix-anm's measured 15 by the two methods' cost ratio in
    # docs/RESULTS_TRAINING.md); a warm-up iteration is warmup_batch_factor batches (passes())
    train_passes = 8.5
    # views "sanm": the release's MixMatch views per branch (the erased copies come on top)
    _RELEASED_MIX_VIEWS = ("autoaugment", "autoaugment", "randaugment", "randaugment")

    def __init__(self, ctx):
        super().__init__(ctx)
        self.net1, self.net2 = self.build_branches(2)
        self.probs = [None, None]  # each network's clean posterior (co-divide), on the device

    def nets(self):
        return [self.net1, self.net2]

    def passes(self, epoch):
        if epoch < self.hp["warmup"]:
            return float(self.hp["warmup_batch_factor"])
        return self.train_passes

    def iterations(self, epoch):
        if epoch < self.hp["warmup"]:
            bs = self.hp["warmup_batch_factor"] * self.hp["batch_size"]
            return 2 * ((self.ctx.n + bs - 1) // bs)
        return sum(self._num_iter(p) for p in (self.probs[1], self.probs[0]))

    def _num_iter(self, prob):
        """Steps of one network's next epoch, estimated from the split `prob` would make."""
        if prob is None:
            return self.ctx.n // self.hp["batch_size"] + 1
        return self._steps(max(int((prob > self.hp["p_threshold"]).sum()), self.hp["batch_size"]))

    def _steps(self, labeled: int) -> int:
        """Steps of one network's epoch over `labeled` labeled samples: one pass over them
        (published), or n / B steps cycling them (dm_epoch "all", for small data sets)."""
        B = self.hp["batch_size"]
        if self.hp.get("dm_epoch", "labeled") == "all":
            labeled = max(labeled, self.ctx.n)
        return (labeled + B - 1) // B

    def train_epoch(self, epoch, bar=None):
        if epoch < self.hp["warmup"]:
            return self._warm_up(bar)
        # co-divide: each network's clean posterior decides the other network's split
        self.probs = [self.clean_posterior(net, self.history_of(k))
                      for k, net in enumerate(self.nets())]
        self.quality = (self.probs[0] + self.probs[1]) / 2
        stats = {}
        for k, (net, other) in enumerate(((self.net1, self.net2), (self.net2, self.net1))):
            stats.update({f"{key}{k + 1}": v for key, v in
                          self._train_net(epoch, net, other, k, self.probs[1 - k], bar).items()})
        return stats

    def _warm_up(self, bar):
        """One cross-entropy epoch per network, on warmup_batch_factor times larger batches."""
        stats = {}
        bs = self.hp["warmup_batch_factor"] * self.hp["batch_size"]
        for k, (net, opt) in enumerate(zip(self.nets(), self.opts)):
            net.train()
            losses = []
            for idx in self.batches(torch.arange(self.ctx.n), bs):
                losses.append(self.warmup_step(net, opt, idx))
                if bar is not None:
                    bar.update(1)
            stats[f"loss{k + 1}"] = sum(losses) / max(len(losses), 1)
        return stats

    def _train_net(self, epoch, net, other, k, prob, bar):
        """One epoch of network k (`net`) on the split made by the other network's clean
        posterior `prob`; returns its mean losses and the labeled fraction."""
        labeled, unlabeled, w_all = self._split(prob)
        num_iter = self._steps(len(labeled))
        net.train()
        other.eval()
        labeled_batches = self._endless_batches(labeled)
        unlabeled_batches = self._endless_batches(unlabeled)
        sums = {"Lx": 0.0, "Lu": 0.0, "recon": 0.0}
        for it in range(num_iter):
            idx_x, idx_u = next(labeled_batches), next(unlabeled_batches)
            losses = self._mixmatch_step(epoch + it / num_iter, net, other, k, idx_x, idx_u,
                                         w_all, prob)
            for key, v in losses.items():
                sums[key] += v
            if bar is not None:
                bar.update(1)
        out = {key: v / max(num_iter, 1) for key, v in sums.items()}
        out["labeled"] = float(len(labeled)) / self.ctx.n
        if not self.uses_anm:
            out.pop("recon")
        return out

    def _split(self, prob):
        """(labeled ids, unlabeled ids, per-sample weight) of the split by clean posterior
        `prob`: labeled above p_threshold, with the class floor (class_floor) and our two
        guards against an empty side."""
        B = self.hp["batch_size"]
        prob_cpu = prob.detach().cpu()
        labeled = torch.nonzero(prob_cpu > self.hp["p_threshold"]).flatten()
        unlabeled = torch.nonzero(prob_cpu <= self.hp["p_threshold"]).flatten()
        w_all = prob
        if self.hp.get("class_floor", 0) > 0:
            labeled, w_all = self._class_floor(prob_cpu, labeled, prob)
            unlabeled = torch.nonzero(~torch.isin(torch.arange(self.ctx.n), labeled)).flatten()
        if len(labeled) < B:  # ours: never train on an empty labeled set
            labeled = torch.argsort(prob_cpu, descending=True)[:B]
        if len(unlabeled) == 0:  # ours: co-guess on everything when nothing looks noisy
            unlabeled = torch.arange(self.ctx.n)
        return labeled, unlabeled, w_all

    def _endless_batches(self, indices):
        """Mini-batches of `indices`, reshuffled whenever a pass runs out (the labeled and the
        unlabeled set are cycled at their own pace)."""
        while True:
            count = 0
            for batch in self.batches(indices, self.hp["batch_size"]):
                count += 1
                yield batch
            if count == 0:
                raise ValueError(f"{len(indices)} samples give no batch on {dist.world()} ranks")

    def _mixmatch_step(self, progress, net, other, k, idx_x, idx_u, w_all, prob):
        """One optimiser step of network k: MixUp over the step's MixMatch groups, the labeled
        and unlabeled losses (lambda_u ramped up over `progress`, epochs as a float), the prior
        penalty and with ANM the reconstruction loss. Returns the step's losses as floats."""
        hp = self.hp
        groups_x, targets_x, groups_u, targets_u, recon = self.mixmatch_groups(
            net, other, k, idx_x, idx_u, w_all, prob)
        n_x = sum(len(g) for g in groups_x)
        mixed_in, mixed_t = self._mixup(torch.cat(groups_x + groups_u),
                                        torch.cat(targets_x + targets_u))
        with self.autocast():
            logits = net(mixed_in).float()
        lx = -(F.log_softmax(logits[:n_x], 1) * mixed_t[:n_x]).sum(1).mean()
        lu = ((logits[n_x:].softmax(1) - mixed_t[n_x:]) ** 2).mean()
        loss = lx + hp["lambda_u"] * linear_rampup(progress, hp["warmup"], hp["rampup"]) * lu
        if hp.get("prior_penalty", True):
            loss = loss + self.prior_penalty(logits)
        if recon is not None:
            loss = loss + hp["recon_weight"] * recon
        opt = self.opts[k]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"Lx": float(lx.detach()), "Lu": float(lu.detach()),
                "recon": float(recon.detach()) if recon is not None else 0.0}

    def _mixup(self, inputs, targets):
        """MixUp of every row with a random partner, lam ~ Beta(alpha, alpha) kept >= 0.5."""
        alpha = self.hp["alpha"]
        lam = float(self.np_rng.beta(alpha, alpha))
        lam = max(lam, 1 - lam)
        perm = torch.randperm(len(inputs), generator=self.local_gen).to(self.ctx.device)
        return lam * inputs + (1 - lam) * inputs[perm], lam * targets + (1 - lam) * targets[perm]

    def mixmatch_groups(self, net, other, k, idx_x, idx_u, w_all, prob):
        """One step's MixMatch groups of the labeled (idx_x) and unlabeled (idx_u) batches:
        (groups_x, targets_x, groups_u, targets_u, reconstruction loss or None), one target
        tensor per image group. Labeled targets: sharpen(w * y + (1 - w) * mean prediction of
        `net` on two views), w = w_all[idx_x] (the other network's clean posterior); unlabeled:
        sharpen(mean prediction of both networks on two views). Groups per branch: those two
        views (views "standard") or four more (views "sanm": two AutoAugment, two RandAugment +
        cutout), then with ANM the kept erased copies of the first view."""
        T = self.hp["T"]
        released = self.hp.get("views", "standard") == "sanm"
        view = "autoaugment" if released else None  # the guessing and erasing views

        def two(idx):
            return [self.images(idx, view=view) for _ in range(2)]

        (x1, x2), (u1, u2) = two(idx_x), two(idx_u)
        y = self.one_hot(self.labels(idx_x))
        w = w_all[idx_x.to(w_all.device)].to(self.ctx.device).float()[:, None]
        with torch.no_grad(), self.autocast():
            # co-guessing on the unlabeled batch, label refinement on the labeled one
            pu = (net(u1).float().softmax(1) + net(u2).float().softmax(1) +
                  other(u1).float().softmax(1) + other(u2).float().softmax(1)) / 4
            tu = sharpen(pu, T)
            px = (net(x1).float().softmax(1) + net(x2).float().softmax(1)) / 2
            tx = sharpen(w * y + (1 - w) * px, T)
        if released:
            groups_x = [self.images(idx_x, view=v) for v in self._RELEASED_MIX_VIEWS]
            groups_u = [self.images(idx_u, view=v) for v in self._RELEASED_MIX_VIEWS]
        else:
            groups_x, groups_u = [x1, x2], [u1, u2]
        targets_x, targets_u = [tx] * len(groups_x), [tu] * len(groups_u)
        recon = None
        if self.uses_anm:
            wu = prob[idx_u.to(prob.device)].to(self.ctx.device).float()
            ex, etx, eu, etu, recon = masked_step_inputs(
                self, net, self.decoder_of(k), x1, tx, w[:, 0], idx_x, u1, tu, wu, idx_u)
            B, Bu = len(x1), len(u1)
            groups_x += list(ex.split(B)) if len(ex) else []
            targets_x += list(etx.split(B)) if len(ex) else []
            groups_u += list(eu.split(Bu)) if len(eu) else []
            targets_u += list(etu.split(Bu)) if len(eu) else []
        return groups_x, targets_x, groups_u, targets_u, recon

    def _class_floor(self, prob_cpu, labeled, prob):
        """Ours, off by default (class_floor=0): the GMM split is global, so on small data sets
        a class the warm-up networks find hard (higher losses) can lose *all* its samples to the
        unlabeled set and then vanish from the predictions for good (measured on digits at 80%
        noise: classes 3, 5 and 8 fell to zero labeled samples). Every class (by given label)
        keeps at least class_floor * (labeled / N) samples: its lowest-loss ones, weighted as
        just-labeled (w = max(q, p_threshold))."""
        N = self.ctx.num_classes
        y = self.ctx.y_noisy.cpu()
        floor = int(self.hp["class_floor"] * len(labeled) / N)
        is_lab = torch.zeros(self.ctx.n, dtype=torch.bool)
        is_lab[labeled] = True
        w = prob.detach().clone()
        for c in range(N):
            members = torch.nonzero(y == c).flatten()
            have = int(is_lab[members].sum())
            if have >= floor or len(members) == 0:
                continue
            cand = members[~is_lab[members]]
            top = cand[torch.argsort(prob_cpu[cand], descending=True)[: floor - have]]
            is_lab[top] = True
            w[top.to(w.device)] = torch.clamp(w[top.to(w.device)], min=self.hp["p_threshold"])
        return torch.nonzero(is_lab).flatten(), w

    def extra_state(self):
        return dict(probs=self.probs)

    def load_extra_state(self, state):
        self.probs = [p.to(self.ctx.device) if p is not None else None
                      for p in state.get("probs", [None, None])]


class DivideMixANM(DivideMix):
    name = "dividemix-anm"
    uses_anm = True
    # the erased copies double the MixMatch batches; the masks' feature pass and the decoder.
    # Measured with the small-images-cpu preset (digits PNGs, 3,000 CIFAR-10 JPEGs): a training
    # epoch took 13-16x a warm-up epoch's time per iteration.
    train_passes = 15.0
