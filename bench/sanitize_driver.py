"""Small driver for compute-sanitizer: runs every compiled CUDA kernel of anm_fast once on shapes
that reach each kernel variant (vector / scalar accesses, NCHW / NHWC, 32-bit indices, energy map
and tap tables in shared memory or not, band rule on and off, label clamp on and off).

Run through bench/sanitize_cuda.sh; on its own it also works as a smoke test:
    python bench/sanitize_driver.py
"""
import sys

import torch

import anm_fast
from anm_fast.config import BoxParams

ops = torch.ops.anm_fast


def main() -> int:
    if not torch.cuda.is_available():
        print("sanitize_driver: no CUDA device", file=sys.stderr)
        return 2
    if not anm_fast.has_cuda_kernels():
        print("sanitize_driver: anm_fast was built without CUDA kernels", file=sys.stderr)
        return 2
    anm_fast.set_backend("cuda")
    anm_fast.set_checks(False)
    dev = torch.device("cuda")
    torch.manual_seed(0)

    # activation_peaks: the three shared-memory tiers, channels_last and strided, all dtypes.
    peak_cases = [(3, 5, 4, 4, 32, 32), (2, 64, 7, 7, 224, 224), (2, 3, 9, 7, 17, 29),
                  (1, 4, 100, 120, 300, 310), (1, 3, 9, 7, 2000, 1500)]
    for B, K, h, w, H, W in peak_cases:
        for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            f = torch.randn(B, K, h, w, device=dev).to(dtype)
            for fm in (f, f.contiguous(memory_format=torch.channels_last), f[:, :, :, ::2]):
                for band in (0.0, 1.0 / 255):
                    ops.activation_peaks(fm, H, W, band)

    # sample_boxes: seed on the device and on the host, uniform and constant fills.
    for B, H, W, C in ((1, 32, 32, 3), (300, 17, 9, 5)):
        pmax = torch.stack((torch.randint(0, H, (B,)), torch.randint(0, W, (B,))), 1).to(dev)
        pmin = torch.stack((torch.randint(0, H, (B,)), torch.randint(0, W, (B,))), 1).to(dev)
        q = torch.rand(B, device=dev)
        ids = torch.arange(B, device=dev)
        for seed in (torch.tensor(7, device=dev), torch.tensor(7)):
            for uniform, fv in ((True, torch.zeros(0, device=dev)),
                                (False, torch.linspace(0, 1, C, device=dev))):
                ops.sample_boxes(pmax, pmin, q, ids, seed, H, W, C,
                                 BoxParams(0.02, 0.5, 0.3, 0.5, 1.0, True, uniform).pack(), fv)

    # erase_and_modulate forward and backward: every layout / alignment variant and dtype.
    for B, C, H, W in ((1, 3, 32, 32), (5, 3, 17, 13), (4, 8, 16, 16), (2, 1, 9, 8)):
        pmax = torch.stack((torch.randint(0, H, (B,)), torch.randint(0, W, (B,))), 1).to(dev)
        bmax, bmin, ratio, fmax, fmin = ops.sample_boxes(
            pmax, pmax.flip(1).remainder(torch.tensor([H, W], device=dev)),
            torch.rand(B, device=dev), torch.arange(B, device=dev), torch.tensor(3, device=dev),
            H, W, C, BoxParams(0.02, 0.6, 0.3, 0.5, 1.0, True, True).pack(),
            torch.zeros(0, device=dev))
        for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            base = torch.randn(B, C, H, W, device=dev).to(dtype)
            flat = torch.zeros(base.numel() + 1, device=dev, dtype=dtype)
            offset = flat[1:].view(base.shape)
            offset.copy_(base)
            wide = torch.zeros(B, C, H, 2 * W, device=dev, dtype=dtype)
            layouts = (base, base.contiguous(memory_format=torch.channels_last), offset,
                       wide[..., ::2])
            for t_dtype in (torch.float32, dtype):
                t = torch.softmax(torch.randn(B, 7, device=dev), 1).to(t_dtype)
                for x in layouts:
                    for gain in (1.0, 10.0):
                        erased, t_out = ops.erase_and_modulate(x, t, bmax, bmin, fmax, fmin,
                                                               ratio, gain)
                        g = torch.randn_like(erased)
                        ops.erase_and_modulate_backward(g, torch.randn_like(t_out), t, bmax, bmin,
                                                        ratio, gain)
                        ops.erase_and_modulate_backward(
                            g.contiguous(memory_format=torch.channels_last),
                            torch.randn_like(t_out).t().contiguous().t(), t, bmax, bmin, ratio,
                            gain)

    # The fused op (one kernel): map in shared memory or not, both layouts, every dtype mix of
    # interest, constant fills in the kernel argument and on the device, host and device seeds.
    for B, C, H, W, K, h, w in ((1, 3, 32, 32, 8, 4, 4), (5, 3, 17, 29, 6, 3, 5),
                                (2, 4, 40, 33, 3, 110, 100)):
        for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            x = torch.randn(B, C, H, W, device=dev).to(dtype)
            fm = torch.randn(B, K, h, w, device=dev).to(dtype)
            t = torch.softmax(torch.randn(B, 7, device=dev), 1).to(dtype)
            q = torch.rand(B, device=dev)
            ids = torch.arange(B, device=dev)
            for xl, fl in ((x, fm), (x.contiguous(memory_format=torch.channels_last),
                                     fm.contiguous(memory_format=torch.channels_last))):
                for seed, uniform, fv in ((torch.tensor(1, device=dev), True, torch.zeros(C)),
                                          (torch.tensor(2), False, torch.full((C,), 0.5)),
                                          (torch.tensor(3), False,
                                           torch.full((C,), 0.5, device=dev))):
                    ops.anm_mask(xl, fl, t, q, ids, seed, 0.1,
                                 BoxParams(0.02, 0.5, 0.3, 0.5, 1.0, True, uniform).pack(), fv,
                                 1.0, True)

    # The fused path end to end.
    x = torch.randn(16, 3, 32, 32, device=dev)
    fmap = torch.randn(16, 32, 4, 4, device=dev)
    anm_fast.anm_mask(x, fmap, torch.randint(0, 10, (16,), device=dev), 0.5, num_classes=10,
                      seed=torch.tensor(1, device=dev))
    torch.cuda.synchronize()
    print("sanitize_driver: all kernels ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
