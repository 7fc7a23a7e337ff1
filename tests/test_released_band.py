"""band = 1/255 against a straightforward port of the released 8-bit peak procedure.

The release normalises the map, resizes it, rescales it to 0..255, floors it to uint8 and takes
the first arg-min / arg-max. Its arg-min is the first pixel less than 1/255 of the range above the
minimum: band = 1/255 gives the same pixel up to rounding at the band's edge. Its arg-max is the
first pixel of level 255, which float rounding makes the maximum alone or part of the top band:
the released pick always lies in the top 1/255 band, whose first pixel is what band = 1/255 gives.
"""
import numpy as np
import torch
import torch.nn.functional as F

import anm_fast


def released_peaks(fmap, H, W):
    """Per image, as the release does it: numpy on the host, 8-bit quantisation."""
    peaks_max, peaks_min, maps = [], [], []
    for f in fmap:
        e = (f.double() ** 2).sum(0).float().numpy()
        e = e / max(float(np.linalg.norm(e)), 1e-12)
        u = F.interpolate(torch.from_numpy(e)[None, None], size=(H, W), mode="bilinear",
                          align_corners=False)[0, 0].numpy()
        maps.append(u)
        u = u - u.min()
        u = u / max(float(u.max()), 1e-12)
        level = np.uint8(255 * u)
        peaks_max.append(divmod(int(level.argmax()), W))
        peaks_min.append(divmod(int(level.argmin()), W))
    return torch.tensor(peaks_max), torch.tensor(peaks_min), torch.from_numpy(np.stack(maps))


def test_band_1_255_reproduces_the_released_8bit_peaks():
    B, H, W = 400, 32, 32
    fmap = torch.randn(B, 64, 4, 4)
    rel_max, rel_min, maps = released_peaks(fmap, H, W)
    ours = anm_fast.activation_peaks(fmap, (H, W), band=1.0 / 255.0)
    flat = maps.reshape(B, -1).double()
    lo, hi = flat.min(1).values, flat.max(1).values
    rng = hi - lo
    eps = 1e-5 * rng
    idx = lambda p: p[:, 0] * W + p[:, 1]  # noqa: E731
    value = lambda p: flat.gather(1, idx(p)[:, None])[:, 0]  # noqa: E731

    # arg-min: the same pixel, or both picks sit at the band's edge (rounding decides).
    same = (ours.peak_min == rel_min).all(1)
    edge = lo + rng / 255.0
    earlier = torch.minimum(idx(ours.peak_min), idx(rel_min))
    at_edge = (flat.gather(1, earlier[:, None])[:, 0] - edge).abs() <= eps
    assert bool((same | at_edge).all())
    assert same.float().mean() >= 0.95

    # arg-max: the released pick lies in the top band and ours is that band's first pixel.
    top = hi - rng / 255.0
    assert bool((value(rel_max) >= top - eps).all())
    assert bool((value(ours.peak_max) >= top - eps).all())
    rel_at_edge = (value(rel_max) - top).abs() <= eps
    assert bool(((idx(ours.peak_max) <= idx(rel_max)) | rel_at_edge).all())
    before = torch.arange(H * W)[None, :] < idx(ours.peak_max)[:, None]
    assert not bool(((flat >= top[:, None] + eps[:, None]) & before).any())
