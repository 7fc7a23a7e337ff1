"""A port of the released per-image ANM procedure, kept for side-by-side timing only.

Same structure as the authors' training code (written here in our own words, not copied):
a Python loop over the images of the batch; for each image the activation energy is computed on
the tensor's device, copied to the host, resized to the image size (cv2.resize when OpenCV is
installed, else a per-image torch resize on the host), rescaled to 0..255 and floored to 8 bits,
arg-max / arg-min taken with numpy; the box size is drawn with numpy's generator and the boxes are
written into two clones of the batch image by image with a fresh uniform fill per box; the label
of each sample is shifted one row at a time. The released code's corner anchor is used.

It is not a reference for correctness (anm_fast/reference.py is): it exists so the benchmarks can
show what the fused kernels replace.
"""
from __future__ import annotations

import math

import numpy as np
import torch

try:  # optional: the released code uses OpenCV
    import cv2  # type: ignore
except Exception:  # pragma: no cover - depends on the environment
    cv2 = None

RESIZER = "cv2" if cv2 is not None else "torch-per-image"


def _resize_host(energy: np.ndarray, H: int, W: int) -> np.ndarray:
    if cv2 is not None:
        return cv2.resize(energy, (W, H), interpolation=cv2.INTER_LINEAR)
    t = torch.from_numpy(energy)[None, None]
    return torch.nn.functional.interpolate(t, size=(H, W), mode="bilinear",
                                           align_corners=False)[0, 0].numpy()


def released_anm(x: torch.Tensor, fmap: torch.Tensor, targets: torch.Tensor,
                 quality: torch.Tensor, rng: np.random.Generator, area_lo: float = 0.02,
                 area_hi: float = 0.07, quality_gain: float = 0.03, aspect_lo: float = 0.8,
                 area_scale: float = 0.5):
    """Returns (erased (2B, C, H, W), modulated targets (B, N)), computed image by image."""
    B, C, H, W = x.shape
    x_max = x.clone()
    x_min = x.clone()
    t_out = targets.clone()
    q_host = quality.detach().cpu().numpy()
    for i in range(B):
        # energy on the device, then a host copy of this one map
        f = fmap[i].float()
        cam = (f * f).sum(dim=0)
        cam = cam / cam.norm().clamp_min(1e-12)
        cam = cam.detach().cpu().numpy()
        cam = _resize_host(cam, H, W)
        lo, hi = cam.min(), cam.max()
        cam = (cam - lo) / max(hi - lo, 1e-12)
        cam = np.floor(cam * 255.0).astype(np.uint8)
        top = int(np.argmax(cam))
        bottom = int(np.argmin(cam))
        # box size from the label quality (released: ratio + gain * (1 - q)), same for both boxes
        s = rng.uniform(area_lo, area_hi) + quality_gain * (1.0 - float(q_host[i]))
        rho = rng.uniform(aspect_lo, 1.0 / aspect_lo)
        area = area_scale * s * H * W
        bh = min(max(int(round(math.sqrt(area * rho))), 1), H)
        bw = min(max(int(round(math.sqrt(area / rho))), 1), W)
        for img, idx in ((x_max, top), (x_min, bottom)):
            r, c = divmod(idx, W)
            y0 = min(max(r, 0), H - bh)
            x0 = min(max(c, 0), W - bw)
            fill = torch.rand(C, 1, 1, device=x.device, dtype=x.dtype)
            img[i, :, y0:y0 + bh, x0:x0 + bw] = fill
        # label shift, one row at a time
        k = int(torch.argmax(t_out[i]))
        d = s
        n = t_out.shape[1]
        row = t_out[i] + d / (n - 1)
        row[k] = t_out[i, k] - d
        t_out[i] = row
    return torch.cat((x_max, x_min), dim=0), t_out
