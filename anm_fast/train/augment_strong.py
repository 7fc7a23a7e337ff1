"""The strong-augmentation views of the authors' released CIFAR recipe, through torchvision.transforms.v2.

Three views, each a random crop (zero padding) and horizontal flip followed by:
  "autoaugment": AutoAugment's CIFAR-10 policy (the release's co-guessing, erasing and MixMatch
                 views);
  "randaugment": RandAugment, two ops at magnitude 10, then a 16x16 cutout (half the image side)
                 filled with grey, the release's FixMatch-style strong view. torchvision's
                 RandAugment stands in for FixMatch's RandAugmentMC (slightly different op list and
                 magnitude sampling); the cutout is RandomErasing of a square of that area;
  "warmup":      ColorJitter(0.4, 0.4, 0.4, 0.4), then RandomAffine (15 degrees, 10 % translation,
                 scale 2/3 to 3/2, shear 0.1 degrees), the release's warm-up view.

The images stay on their device: the batch is denormalised to uint8 there, each sample is
transformed there, and the result is normalised again. The random draws are counter-based like the
trainer's crops and flips: torchvision draws its parameters from torch's CPU generator, which is
seeded per sample from (run seed, epoch, call number within the epoch, sample id) inside a forked
generator state, so a sample's view depends on those alone (not on the batch split or the order of
calls elsewhere) and the caller's generator state is left as it was.
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch

VIEWS = ("autoaugment", "randaugment", "warmup")

_MASK64 = (1 << 64) - 1
_VIEW_SALT = {"autoaugment": 0x243F6A8885A308D3, "randaugment": 0x13198A2E03707344,
              "warmup": 0xA4093822299F31D0}


def _mix64(z: int) -> int:
    """splitmix64's finaliser: a well-spread 64-bit hash of one integer."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def sample_seed(view: str, seed: int, epoch: int, call: int, sample_id: int) -> int:
    """The generator seed of one sample's view (63 bits: torch.manual_seed takes any of them)."""
    z = _VIEW_SALT[view] ^ (int(seed) & _MASK64)
    for part in (epoch, call, sample_id):
        z = _mix64(z ^ (int(part) & _MASK64))
    return z >> 1


def build_view(view: str, size: int, pad: int):
    """The torchvision.transforms.v2 pipeline of one view, on (C, H, W) uint8 tensors."""
    from torchvision.transforms import v2

    crop = [v2.RandomCrop(size, padding=pad)] if pad > 0 else []
    crop.append(v2.RandomHorizontalFlip())
    if view == "autoaugment":
        return v2.Compose(crop + [v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)])
    if view == "randaugment":
        side = max(1, size // 2)  # 16 px on 32-px images
        area = side * side / float(size * size)
        return v2.Compose(crop + [v2.RandAugment(num_ops=2, magnitude=10),
                                  v2.RandomErasing(p=1.0, scale=(area, area), ratio=(1.0, 1.0),
                                                   value=127)])
    if view == "warmup":
        return v2.Compose([v2.ColorJitter(0.4, 0.4, 0.4, 0.4)] + crop + [
            v2.RandomAffine(degrees=15.0, translate=(0.1, 0.1), scale=(2.0 / 3.0, 1.5),
                            shear=(-0.1, 0.1, -0.1, 0.1))])
    raise ValueError(f"unknown augmentation view {view!r}: choose one of {', '.join(VIEWS)}")


class StrongViews:
    """Applies the views to normalised image batches; one instance per run (it holds the
    normalisation and the built pipelines)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], size: int, pad: int):
        self.mean = torch.tensor([float(m) for m in mean]).view(1, -1, 1, 1)
        self.std = torch.tensor([float(s) for s in std]).view(1, -1, 1, 1)
        self.size, self.pad = int(size), int(pad)
        self._built: Dict[str, object] = {}

    def to_uint8(self, x: torch.Tensor) -> torch.Tensor:
        m, s = self.mean.to(x.device), self.std.to(x.device)
        return ((x.float() * s + m) * 255.0).round_().clamp_(0, 255).to(torch.uint8)

    def from_uint8(self, x: torch.Tensor) -> torch.Tensor:
        m, s = self.mean.to(x.device), self.std.to(x.device)
        return (x.float() / 255.0 - m) / s

    def __call__(self, view: str, x: torch.Tensor, ids: torch.Tensor, *, seed: int, epoch: int,
                 call: int) -> torch.Tensor:
        """(B, C, H, W) normalised images -> the same images through `view`, per sample."""
        if view not in self._built:
            self._built[view] = build_view(view, self.size, self.pad)
        t = self._built[view]
        ids = torch.as_tensor(ids).reshape(-1).tolist()
        if len(ids) != x.shape[0]:
            raise ValueError(f"{len(ids)} sample ids for {x.shape[0]} images")
        u8 = self.to_uint8(x)
        out = torch.empty_like(u8)
        with torch.random.fork_rng(devices=[]):
            for i, sid in enumerate(ids):
                torch.manual_seed(sample_seed(view, seed, epoch, call, sid))
                out[i] = t(u8[i])
        return self.from_uint8(out).to(x.dtype)
