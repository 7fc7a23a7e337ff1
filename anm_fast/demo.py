"""A one-minute look at ANM on the embedded digits data set: `python -m anm_fast.demo`.

Trains a tiny CNN for a few steps on scikit-learn's 8x8 digits, then masks one batch with
anm_fast.anm_mask and prints, per image, the activation peaks, the two boxes, the mask ratio and
how the label was softened.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

import anm_fast


def load_digits_tensors():
    from sklearn.datasets import load_digits
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0
    x = (x - x.mean()) / x.std()
    return x, torch.tensor(data.target)


class TinyCNN(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.ReLU())
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        f = self.features(x)
        return self.head(f.mean((2, 3))), f


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--show", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    x, y = load_digits_tensors()
    model = TinyCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(args.steps):
        idx = torch.randint(0, len(x), (64,))
        loss = F.cross_entropy(model(x[idx])[0], y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"anm_fast {anm_fast.__version__}: compiled kernels "
          f"{'loaded' if anm_fast.has_extension() else 'missing (reference fallback)'}")
    print(f"trained a tiny CNN for {args.steps} steps on digits (last loss {loss.item():.3f})")
    xb, yb = x[: args.show], y[: args.show]
    with torch.no_grad():
        logits, fmap = model(xb)
    quality = torch.linspace(1.0, 0.0, len(xb))  # pretend the later samples look noisier
    m = anm_fast.anm_mask(xb, fmap, yb, quality, num_classes=10, seed=args.seed)
    print(f"masked {len(xb)} images of {tuple(xb.shape[1:])} from feature maps of "
          f"{tuple(fmap.shape[1:])}; erased batch {tuple(m.erased.shape)}")
    for b in range(len(xb)):
        print(f"  image {b}: label {int(yb[b])}, quality {float(quality[b]):.2f}, "
              f"s={float(m.ratio[b]):.3f}, peak max {m.peak_max[b].tolist()} -> box "
              f"{m.box_max[b].tolist()}, peak min {m.peak_min[b].tolist()} -> box "
              f"{m.box_min[b].tolist()}, label mass {float(m.targets[b, yb[b]]):.3f}")


if __name__ == "__main__":
    main()
