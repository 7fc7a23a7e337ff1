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
from .anm_parts import make_decoder, masked_step_inputs, wants_decoder


class DivideMix(Method):
    name = "dividemix"
    uses_anm = False
    # views "sanm": the release's MixMatch views per branch (the erased copies come on top)
    _RELEASED_MIX_VIEWS = ("autoaugment", "autoaugment", "randaugment", "randaugment")

    def __init__(self, ctx):
        super().__init__(ctx)
        self.net1, self.net2 = self.build_net(), self.build_net()
        self.decoders = []
        if self.uses_anm:
            from ..presets import anm_config

            self.anm_cfg = anm_config(self.hp)
            if wants_decoder(self):  # the reconstruction part (an ablation switch)
                self.decoders = [make_decoder(self, self.net1), make_decoder(self, self.net2)]
        self.opts, self.scheds = [], []
        for i, net in enumerate((self.net1, self.net2)):
            params = list(net.parameters())
            if self.decoders:
                params += list(self.decoders[i].parameters())
            opt, sched = self.build_opt(params)
            self.opts.append(opt)
            self.scheds.append(sched)
        self.histories = None
        if self.hp.get("loss_history"):
            from ...quality import LossHistory

            self.histories = [LossHistory(5), LossHistory(5)]
        self.probs = [None, None]

    def nets(self):
        return [self.net1, self.net2]

    def iterations(self, epoch):
        if epoch < self.hp["warmup"]:
            bs = self.hp["warmup_batch_factor"] * self.hp["batch_size"]
            return 2 * ((self.ctx.n + bs - 1) // bs)
        return sum(self._num_iter(p) for p in self._splits_estimate())

    def _splits_estimate(self):
        return [self.probs[1], self.probs[0]]

    def _num_iter(self, prob):
        if prob is None:
            return self.ctx.n // self.hp["batch_size"] + 1
        labeled = max(int((prob > self.hp["p_threshold"]).sum()), self.hp["batch_size"])
        if self.hp.get("dm_epoch", "labeled") == "all":
            labeled = max(labeled, self.ctx.n)
        return (labeled + self.hp["batch_size"] - 1) // self.hp["batch_size"]

    def train_epoch(self, epoch, bar=None):
        hp = self.hp
        if epoch < hp["warmup"]:
            stats = {}
            for k, (net, opt) in enumerate(zip(self.nets(), self.opts)):
                net.train()
                losses = []
                bs = hp["warmup_batch_factor"] * hp["batch_size"]
                for idx in self.batches(torch.arange(self.ctx.n), bs):
                    losses.append(self.warmup_step(net, opt, idx))
                    if bar is not None:
                        bar.update(1)
                stats[f"loss{k + 1}"] = sum(losses) / max(len(losses), 1)
            return stats
        # co-divide: each network's clean posterior decides the other network's split
        h = self.histories or [None, None]
        self.probs = [self.clean_posterior(self.net1, h[0]), self.clean_posterior(self.net2, h[1])]
        self.quality = (self.probs[0] + self.probs[1]) / 2
        stats = {}
        for k, (net, other, opt, prob) in enumerate((
                (self.net1, self.net2, self.opts[0], self.probs[1]),
                (self.net2, self.net1, self.opts[1], self.probs[0]))):
            stats.update({f"{key}{k + 1}": v for key, v in
                          self._train_net(epoch, net, other, opt, prob, k, bar).items()})
        return stats

    def _train_net(self, epoch, net, other, opt, prob, k, bar):
        hp = self.hp
        B, N = hp["batch_size"], self.ctx.num_classes
        prob_cpu = prob.detach().cpu()
        labeled = torch.nonzero(prob_cpu > hp["p_threshold"]).flatten()
        unlabeled = torch.nonzero(prob_cpu <= hp["p_threshold"]).flatten()
        w_all = prob
        if hp.get("class_floor", 0) > 0:
            labeled, w_all = self._class_floor(prob_cpu, labeled, prob)
            unlabeled = torch.nonzero(~torch.isin(torch.arange(self.ctx.n), labeled)).flatten()
        if len(labeled) < B:  # ours: never train on an empty labeled set
            labeled = torch.argsort(prob_cpu, descending=True)[:B]
        if len(unlabeled) == 0:  # ours: co-guess on everything when nothing looks noisy
            unlabeled = torch.arange(self.ctx.n)
        # one pass over the labeled set (published), or n / B steps cycling it (small data sets)
        num_iter = (len(labeled) + B - 1) // B
        if hp.get("dm_epoch", "labeled") == "all":
            num_iter = max(num_iter, (self.ctx.n + B - 1) // B)
        net.train()
        other.eval()
        l_iter, u_iter = iter(()), iter(())
        sums = {"Lx": 0.0, "Lu": 0.0, "recon": 0.0}
        steps = 0
        for it in range(num_iter):
            try:
                idx_x = next(l_iter)
            except StopIteration:
                l_iter = self.batches(labeled, B)
                idx_x = next(l_iter)
            try:
                idx_u = next(u_iter)
            except StopIteration:
                u_iter = self.batches(unlabeled, B)
                idx_u = next(u_iter)
            groups_x, targets_x, groups_u, targets_u, recon = self.mixmatch_groups(
                net, other, k, idx_x, idx_u, w_all, prob)
            all_in = torch.cat(groups_x + groups_u)
            all_t = torch.cat(targets_x + targets_u)
            n_x = sum(len(g) for g in groups_x)
            lam = float(self.np_rng.beta(hp["alpha"], hp["alpha"]))
            lam = max(lam, 1 - lam)
            perm = torch.randperm(len(all_in), generator=self.local_gen).to(self.ctx.device)
            mixed_in = lam * all_in + (1 - lam) * all_in[perm]
            mixed_t = lam * all_t + (1 - lam) * all_t[perm]
            with self.autocast():
                logits = net(mixed_in).float()
            lx = -(F.log_softmax(logits[:n_x], 1) * mixed_t[:n_x]).sum(1).mean()
            lu = ((logits[n_x:].softmax(1) - mixed_t[n_x:]) ** 2).mean()
            lamb = hp["lambda_u"] * linear_rampup(epoch + it / num_iter, hp["warmup"],
                                                  hp["rampup"])
            loss = lx + lamb * lu
            if hp.get("prior_penalty", True):
                prior = torch.full((N,), 1.0 / N, device=logits.device)
                pred_mean = dist.global_mean(logits.softmax(1))  # global batch under torchrun
                loss = loss + (prior * (prior / pred_mean).log()).sum()
            if recon is not None:
                loss = loss + hp["recon_weight"] * recon
                sums["recon"] += float(recon.detach())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums["Lx"] += float(lx.detach())
            sums["Lu"] += float(lu.detach())
            steps += 1
            if bar is not None:
                bar.update(1)
        out = {key: v / max(steps, 1) for key, v in sums.items()}
        out["labeled"] = float(len(labeled)) / self.ctx.n
        if not self.uses_anm:
            out.pop("recon")
        return out

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
            decoder = self.decoders[k] if self.decoders else None
            ex, etx, eu, etu, recon = masked_step_inputs(
                self, net, decoder, x1, tx, w[:, 0], idx_x, u1, tu, wu, idx_u)
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
        return dict(probs=self.probs,
                    decoders=[d.state_dict() for d in self.decoders],
                    histories=[h.state_dict() for h in self.histories] if self.histories else None)

    def load_extra_state(self, state):
        self.probs = state.get("probs", [None, None])
        for d, s in zip(self.decoders, state.get("decoders") or []):
            d.load_state_dict(s)
        if self.histories and state.get("histories"):
            for h, hs in zip(self.histories, state["histories"]):
                h.load_state_dict(hs)


class DivideMixANM(DivideMix):
    name = "dividemix-anm"
    uses_anm = True
