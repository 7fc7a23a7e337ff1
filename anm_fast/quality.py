"""Label quality (docs/SPEC.md, "Label quality"): per-sample losses, a two-component 1-D GMM,
loss history.

The recipe, as in DivideMix and the ANM release: once per epoch, the cross-entropy of every
training sample on its given (noisy) label; min-max normalised to [0, 1]; a two-component Gaussian
mixture fitted by EM; the quality q of a sample is its posterior under the lower-mean (clean)
component. At very high noise (>= 0.9) the losses are averaged over the last 5 epochs first.

The EM runs in torch on the losses' device (no host round trip of a 50k-vector through sklearn)
and follows scikit-learn's GaussianMixture(n_components=2, covariance_type="full", max_iter=10,
tol=1e-2, reg_covar=5e-4) step by step. The one difference is the start: sklearn seeds k-means at
random, ours runs two-means from the extremes to convergence (deterministic). From the same start
the posteriors agree to float rounding; against sklearn's default start they agree to 1e-3 on
clearly bimodal losses (sklearn's own results move by ~1e-3 with its random_state elsewhere).
"""
from __future__ import annotations

import collections
import math
import numbers
from typing import Optional

import torch

from . import _checks as chk
from .losses import soft_cross_entropy

__all__ = ["per_sample_losses", "normalize_losses", "gmm_clean_posterior", "LossHistory"]


def _unpack(batch):
    """(x, y, index) or (x, y) from a loader batch (tuple/list)."""
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        raise ValueError("the loader must yield (x, y) or (x, y, index) batches, got "
                         f"{type(batch).__name__} of length {len(batch) if hasattr(batch, '__len__') else '?'}")
    return (batch[0], batch[1], batch[2] if len(batch) == 3 else None)


def _checked_targets(y, logits: torch.Tensor) -> torch.Tensor:
    """A batch's labels: class indices in [0, N) or soft targets on the simplex (N = the
    logits' width); anything else would give NaN or negative losses, not an error."""
    y = chk.tensor(y, "the loader's targets")
    chk.label_dtype(y, "the loader's targets")
    if logits.dim() != 2:
        raise ValueError(f"the model must return (B, N) logits, got shape {tuple(logits.shape)}")
    if y.dtype.is_floating_point:
        if y.shape != logits.shape:
            raise ValueError(f"soft targets must have the logits' shape {tuple(logits.shape)}, "
                             f"got {tuple(y.shape)}")
        chk.check_values(soft_targets=y)
    else:
        chk.check_values(labels=y, num_classes=logits.shape[1])
    return y


@torch.no_grad()
def per_sample_losses(model: torch.nn.Module, loader, device=None,
                      num_samples: Optional[int] = None) -> torch.Tensor:
    """Cross-entropy of each sample on its given label, in eval mode, as a float32 vector.

    loader: yields (x, y) or (x, y, index); y are class indices (B,) or soft targets (B, N).
      With an index, loss i lands at position index[i] (shuffled loaders are fine) in a vector of
      length num_samples (default: len(loader.dataset), else the largest index + 1); samples never
      seen stay NaN. Without an index, losses come in loader order.
    device: where the model runs and the result lives (default: the model's parameters' device).
    The model's train/eval mode is restored afterwards.
    """
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    chunks, indices = [], []
    try:
        for batch in loader:
            x, y, idx = _unpack(batch)
            logits = model(x.to(device, non_blocking=True))
            y = _checked_targets(y, logits)
            loss = soft_cross_entropy(logits, y.to(device, non_blocking=True), reduction="none")
            chunks.append(loss.float())
            if idx is not None:
                indices.append(torch.as_tensor(idx).to(device=device, dtype=torch.int64))
            elif indices:
                raise ValueError("the loader mixes batches with and without indices")
    finally:
        model.train(was_training)
    if not chunks:
        raise ValueError("the loader yielded no batches")
    losses = torch.cat(chunks)
    if not indices:
        return losses
    if len(indices) != len(chunks):
        raise ValueError("the loader mixes batches with and without indices")
    index = torch.cat(indices)
    if num_samples is None:
        dataset = getattr(loader, "dataset", None)
        try:
            num_samples = len(dataset) if dataset is not None else None
        except TypeError:
            num_samples = None
        if num_samples is None:
            num_samples = int(index.max()) + 1
    if int(index.min()) < 0 or int(index.max()) >= num_samples:
        raise ValueError(f"sample indices must lie in [0, {num_samples}), got "
                         f"[{int(index.min())}, {int(index.max())}]")
    out = torch.full((num_samples,), float("nan"), device=device)
    out[index] = losses
    return out


def normalize_losses(losses: torch.Tensor) -> torch.Tensor:
    """Min-max normalisation to [0, 1]. Constant losses map to zeros (ours: no spread, no noise)."""
    lo, hi = losses.min(), losses.max()
    span = hi - lo
    if float(span) <= 0.0:
        return torch.zeros_like(losses)
    return (losses - lo) / span


def _finite_extremes(x: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Infinite losses (a label of probability 0 gives +inf cross-entropy) rank beyond every
    finite one: before min-max normalisation they take the largest / smallest finite value, i.e.
    1 / 0 after it. Values meant to be normalised already (normalize=False) must be finite."""
    inf = torch.isinf(x)
    if not bool(inf.any()):
        return x
    if not normalize:
        raise ValueError(f"losses contain {int(inf.sum())} infinite values (e.g. index "
                         f"{int(inf.nonzero()[0])}); with normalize=False they must be finite "
                         f"values in [0, 1]")
    finite = x[~inf]
    if not finite.numel():
        raise ValueError("losses are all infinite: no finite loss to rank them against")
    return x.clamp(float(finite.min()), float(finite.max()))


def _kmeans_1d(x: torch.Tensor, max_iter: int = 300) -> torch.Tensor:
    """Two-means labels of 1-D data by Lloyd's algorithm from centres (min, max).

    scikit-learn initialises its mixture with k-means (k-means++ seeding, random). In 1-D two-means
    Lloyd iterations from the extremes reach the same split for any data with a clear two-cluster
    structure, without a random state (ours: deterministic)."""
    centres = torch.stack((x.min(), x.max()))
    labels = torch.zeros_like(x, dtype=torch.int64)
    for it in range(max_iter):
        new = ((x - centres[1]).abs() < (x - centres[0]).abs()).to(torch.int64)
        if it > 0 and torch.equal(new, labels):
            break
        labels = new
        for k in range(2):
            members = x[labels == k]
            if members.numel():
                centres[k] = members.mean()
    return labels


def _m_step(x: torch.Tensor, resp: torch.Tensor, reg_covar: float):
    eps = torch.finfo(x.dtype).eps
    nk = resp.sum(0) + 10 * eps
    means = (resp * x[:, None]).sum(0) / nk
    var = (resp * (x[:, None] - means) ** 2).sum(0) / nk + reg_covar
    weights = nk / nk.sum()
    return weights, means, var


def _log_joint(x: torch.Tensor, weights, means, var) -> torch.Tensor:
    log_gauss = -0.5 * (math.log(2 * math.pi) + torch.log(var) + (x[:, None] - means) ** 2 / var)
    return log_gauss + torch.log(weights)


def gmm_clean_posterior(losses: torch.Tensor, *, max_iter: int = 10, tol: float = 1e-2,
                        reg_covar: float = 5e-4, normalize: bool = True) -> torch.Tensor:
    """Posterior of the lower-mean component of a 2-component 1-D Gaussian mixture (q, in [0, 1]).

    losses: (n,) per-sample losses (any float dtype, any device; NaN is an error).
    normalize: min-max normalise first (docs/SPEC.md); pass False for values already in [0, 1], e.g.
      `LossHistory.mean()`, which DivideMix fits without renormalising.
    EM as scikit-learn: k-means initial responsibilities, stop when the mean log-likelihood changes
    by less than tol or after max_iter iterations, posteriors under the final parameters.
    Computed in float64 (float32 where the device has no float64) and returned as float32.
    """
    if not isinstance(losses, torch.Tensor):
        raise TypeError(f"losses must be a torch.Tensor, got {type(losses).__name__}")
    x = losses.detach().reshape(-1)
    if x.numel() < 2:
        raise ValueError(f"need at least 2 losses to fit a two-component mixture, got {x.numel()}")
    if bool(torch.isnan(x).any()):
        raise ValueError("losses contain NaN (samples the loss pass never visited?)")
    if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    tol = chk.number(tol, "tol")
    # a component on identical values has variance reg_covar: 0 gives log(0) and NaN
    if (isinstance(reg_covar, bool) or not isinstance(reg_covar, numbers.Real)
            or not math.isfinite(reg_covar) or reg_covar <= 0):
        raise ValueError(f"reg_covar must be a finite number > 0, got {reg_covar!r}")
    dtype = torch.float32 if x.device.type == "mps" else torch.float64
    x = _finite_extremes(x.to(dtype), normalize)
    if normalize:
        x = normalize_losses(x)
    if float(x.max() - x.min()) <= 0.0:
        # One value for everyone: no evidence of noise (ours; a mixture is undefined here).
        return torch.ones_like(x, dtype=torch.float32)
    labels = _kmeans_1d(x)
    resp = torch.nn.functional.one_hot(labels, 2).to(dtype)
    weights, means, var = _m_step(x, resp, reg_covar)
    lower_bound = -math.inf
    for _ in range(max_iter):
        log_joint = _log_joint(x, weights, means, var)
        log_norm = torch.logsumexp(log_joint, dim=1)
        resp = torch.exp(log_joint - log_norm[:, None])
        weights, means, var = _m_step(x, resp, reg_covar)
        previous, lower_bound = lower_bound, float(log_norm.mean())
        if abs(lower_bound - previous) < tol:
            break
    log_joint = _log_joint(x, weights, means, var)
    posterior = torch.softmax(log_joint, dim=1)
    clean = int(torch.argmin(means))
    return posterior[:, clean].to(torch.float32)


class LossHistory:
    """The last `window` epochs of normalised per-sample losses, for very high noise (>= 0.9).

    history.append(per_sample_losses(...)); q = gmm_clean_posterior(history.mean(), normalize=False)
    Keeps at most `window` vectors, on the device they arrive on.
    """

    def __init__(self, window: int = 5):
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive int, got {window!r}")
        self.window = window
        self._epochs = collections.deque(maxlen=window)

    def __len__(self) -> int:
        return len(self._epochs)

    def append(self, losses: torch.Tensor) -> None:
        losses = losses.detach().reshape(-1).float()
        if self._epochs and losses.shape != self._epochs[-1].shape:
            raise ValueError(f"losses have {losses.numel()} samples, earlier epochs "
                             f"{self._epochs[-1].numel()}")
        self._epochs.append(normalize_losses(losses))

    def mean(self) -> torch.Tensor:
        if not self._epochs:
            raise ValueError("LossHistory is empty: append an epoch of losses first")
        return torch.stack(tuple(self._epochs)).mean(0)

    def state_dict(self) -> dict:
        """The stored epochs (oldest first) and the window, for checkpoints."""
        return {"window": self.window, "epochs": list(self._epochs)}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`. Also accepts a plain list of epochs (checkpoints written
        before state_dict existed); keeps the newest `window` epochs."""
        epochs = state["epochs"] if isinstance(state, dict) else state
        if not isinstance(epochs, (list, tuple)) or not all(
                isinstance(e, torch.Tensor) and e.dim() == 1 for e in epochs):
            raise ValueError("LossHistory state must hold a list of 1-D loss tensors")
        if len({e.numel() for e in epochs}) > 1:
            raise ValueError("LossHistory state holds epochs of different lengths")
        self._epochs.clear()
        self._epochs.extend(e.float() for e in epochs)

    def clean_posterior(self, **gmm_kwargs) -> torch.Tensor:
        """gmm_clean_posterior of the averaged history (not renormalised, as in DivideMix)."""
        return gmm_clean_posterior(self.mean(), normalize=False, **gmm_kwargs)
