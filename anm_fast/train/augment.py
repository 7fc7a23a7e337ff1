"""The trainer's augmentation of in-memory image batches: random translation and horizontal flip.

`augment_keyed` draws them counter-based (Philox, keyed by run seed, epoch, call and sample id), so
a sample's crop and flip do not depend on the batch split or the number of processes; `augment`
draws from a torch.Generator, for DataLoader users. The strong views of the released recipe
(AutoAugment, RandAugment, ...) are augment_strong.py.
"""
from __future__ import annotations

import torch


def augment(x: torch.Tensor, gen: torch.Generator, pad: int, flip: bool) -> torch.Tensor:
    """Random translation by up to `pad` pixels (zero padding in normalised space, i.e. the mean
    colour) and optional horizontal flip, for a whole batch at once, drawn from `gen`. The trainer
    itself uses `augment_keyed` (counter-based draws); this form is kept for DataLoader users."""
    if pad <= 0 and not flip:
        return x
    B = x.shape[0]
    dy = dx = f = None
    if pad > 0:
        dy = torch.randint(0, 2 * pad + 1, (B,), generator=gen)
        dx = torch.randint(0, 2 * pad + 1, (B,), generator=gen)
    if flip:
        f = torch.rand(B, generator=gen) < 0.5
    return _apply_augment(x, dy, dx, f, pad)


# Mixed into the Philox key so augmentation streams never coincide with other streams of a seed.
_AUG_SALT = 0x6A09E667F3BCC908


def augment_keyed(x: torch.Tensor, ids: torch.Tensor, seed: int, epoch: int, call: int, pad: int,
                  flip: bool) -> torch.Tensor:
    """`augment` with counter-based draws: the crop and flip of a sample are a function of
    (run seed, epoch, call number within the epoch, sample id) alone, so they do not depend on the
    batch split, the batch position or the number of processes. Philox4x32 (the generator of the
    ANM masks), key = seed ^ salt, counter = (id low, id high, call, epoch)."""
    if pad <= 0 and not flip:
        return x
    from ..reference import philox4x32

    mask = 0xFFFFFFFF
    ids = torch.as_tensor(ids).to("cpu", torch.int64).reshape(-1)
    if len(ids) != x.shape[0]:
        raise ValueError(f"{len(ids)} sample ids for {x.shape[0]} images")
    key = (int(seed) ^ _AUG_SALT) & 0xFFFFFFFFFFFFFFFF
    zeros = torch.zeros_like(ids)
    w0, w1, w2, _ = philox4x32(ids & mask, (ids >> 32) & mask, zeros + (int(call) & mask),
                               zeros + (int(epoch) & mask), key & mask, key >> 32)
    dy = dx = f = None
    if pad > 0:
        n = 2 * pad + 1
        dy = (w0 * n) >> 32   # uint32 word -> [0, n), a multiply-shift (no modulo bias to speak of)
        dx = (w1 * n) >> 32
    if flip:
        f = (w2 >> 31) == 1
    return _apply_augment(x, dy, dx, f, pad)


def _apply_augment(x, dy, dx, f, pad):
    B, C, H, W = x.shape
    out = x
    if dy is not None:
        dy, dx = dy.to(x.device), dx.to(x.device)
        xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        rows = (dy[:, None] + torch.arange(H, device=x.device))[:, :, None]   # (B, H, 1)
        cols = (dx[:, None] + torch.arange(W, device=x.device))[:, None, :]   # (B, 1, W)
        b = torch.arange(B, device=x.device)[:, None, None]
        out = xp.permute(0, 2, 3, 1)[b, rows, cols].permute(0, 3, 1, 2)
    if f is not None:
        f = f.to(x.device)
        out = torch.where(f[:, None, None, None], out.flip(3), out)
    return out.contiguous(memory_format=torch.channels_last) if x.is_contiguous(
        memory_format=torch.channels_last) and x.is_cuda else out.contiguous()
