"""Per-setting hyper-parameters, in one table instead of a paper appendix.

`resolve(method, preset, noise_kind, rate, overrides)` returns the merged dict: general defaults,
then the named preset's (PRESETS), then the method's per-noise preset, then the user's config file
and flags (in that order). `choose_preset` picks the preset of a run from its data (data set,
number and size of images, device) unless `--preset` names one. The CIFAR numbers are DivideMix's
published ones and the ANM release's; the digits numbers were tuned on digits by us
(docs/RESULTS_TRAINING.md says how they were measured).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Tuple

from ..config import ANMConfig

COMMON: Dict[str, Any] = dict(
    model="preact_resnet18", width=None, epochs=300, batch_size=64, lr=0.02, momentum=0.9,
    weight_decay=5e-4, schedule="step", lr_step=150, warmup=10,
    # DivideMix / MixMatch
    warmup_batch_factor=2,       # DivideMix warms up with twice the batch size
    class_floor=0.0,             # ours, see methods/dividemix.py (0 = DivideMix as published)
    dm_epoch="labeled",          # DivideMix iterations per epoch: one pass over the labeled set
                                 # (published) or "all": as many steps as a pass over all data
    alpha=4.0, T=0.5, lambda_u=25.0, rampup=16, p_threshold=0.5, prior_penalty=True,
    conf_penalty=False,          # negative-entropy penalty during warm-up (DivideMix, asym noise)
    # ANM
    anm_preset="cifar", recon_weight=0.02,
    # anm_<field> for every ANMConfig field (area_lo, ..., label_gain): None keeps the
    # anm_preset's value (anm_config below); a new ANMConfig field is a setting here by itself
    **{f"anm_{f.name}": None for f in dataclasses.fields(ANMConfig)},
    # label quality: average the last 5 epochs of losses at very high noise (docs/SPEC.md 5)
    loss_history=False,
    # ANM ablation switches: which parts a run keeps (methods/anm_parts.py)
    anm_max_copy=True, anm_min_copy=True, anm_soften=True, anm_recon=True,
    # the released SANM script's choices, off by default (recipes.py: --recipe sanm-release)
    softmax_in_net=False, views="standard", warmup_views="standard", warmup_clip=0.0,
    decoder="auto",
    eval_every=1,                # test accuracy every k-th epoch (and the last): CPU budgets
    compile=False, threads=None, image_size=32, train_subset=None, pretrained=None,
    sync_bn=True,                # torchrun: BatchNorm over the global batch (distributed.py)
)

PRESETS: Dict[str, Dict[str, Any]] = {
    # digits: 1347 training images. DivideMix's 2x warm-up batch and 5 epochs leave the networks
    # so under-trained that whole classes vanish from the first labeled split, and one pass over
    # a labeled set of ~300 images is 5 steps an epoch (measured: accuracy fell below CE). So:
    # 10 warm-up epochs at the normal batch, a class floor, and epochs of n / batch steps.
    # lr 0.1 and MixUp alpha 0.75 (MixMatch's value) lifted DivideMix at 80% noise from 71% to
    # 89% on seed 0 (docs/RESULTS_TRAINING.md).
    # One thread: torch's parallel reductions split work by thread count, so the same run on
    # 1 or 2 threads ends a point apart; pinned, the default run gives the same result on any
    # core count (--threads N overrides it).
    "digits": dict(model="small_cnn", width=16, epochs=30, batch_size=64, lr=0.1, alpha=0.75,
                   schedule="cosine", threads=1,
                   warmup=10, warmup_batch_factor=1, class_floor=0.5, dm_epoch="all", rampup=10, anm_preset="digits", recon_weight=0.02),
    "cifar10": dict(warmup=10),
    "cifar100": dict(warmup=20),
    # Clothing1M-style real noise (the release's recipe): ResNet-50 on 224x224 images, lr 0.0009
    # / 10 at 40, 80 epochs, lambda_u 0, reconstruction weight 0.3; the ANM boxes of the
    # clothing1m preset.
    # Days on a CPU: chosen automatically only on a GPU, for large photos.
    "clothing1m": dict(model="resnet50", epochs=80, lr=0.0009, lr_step=40, warmup=1,
                       lambda_u=0.0, recon_weight=0.3, anm_preset="clothing1m", batch_size=32,
                       image_size=224),
    # Any image folder on a GPU: the CIFAR recipe (PreAct ResNet-18 on 32x32 images).
    "small-images-gpu": dict(warmup=10, image_size=32),
    # An image folder on a CPU: the digits recipe with a 16-wide small CNN on 16x16 images and
    # fewer epochs, so a few thousand images train in minutes on 2 cores. 16 pixels, not 32: the
    # small CNN's three 3x3 layers see about a third of a 32x32 image (digits as 16x16 PNGs,
    # --method ce: 85.97 % at 32 px, 94.88 % at 16 px; dividemix-anm 38.75 % at 32 px;
    # docs/RESULTS_TRAINING.md). One thread, as for digits: the same result on any core count.
    "small-images-cpu": dict(model="small_cnn", width=16, epochs=15, batch_size=64, lr=0.05,
                             alpha=0.75, schedule="cosine", warmup=5, warmup_batch_factor=1,
                             class_floor=0.5, dm_epoch="all", rampup=5, anm_preset="cifar",
                             image_size=16, threads=1),
}
# The preset each data set starts from; image folders are chosen by choose_preset.
DATASET_PRESET = {"digits": "digits", "cifar10": "cifar10", "cifar100": "cifar100"}


def choose_preset(dataset: str, device_type: str, n_train: int = 0,
                  image_hw: Tuple[int, int] = (0, 0)) -> Tuple[str, str]:
    """(preset name, the reason in words) for a run on this data and device."""
    if dataset in DATASET_PRESET:
        return DATASET_PRESET[dataset], f"the {dataset} preset"
    what = f"{n_train} training images of {image_hw[0]}x{image_hw[1]} on {device_type}"
    if device_type != "cuda":
        return "small-images-cpu", (f"{what}: a small CNN on 16x16 images, minutes on a CPU "
                                    f"(--preset NAME for another)")
    if min(image_hw) >= 128 and n_train >= 20000:
        return "clothing1m", f"{what}: large photos, many of them: ResNet-50 on 224x224"
    return "small-images-gpu", f"{what}: PreAct ResNet-18 on 32x32 images (the CIFAR recipe)"



def _dividemix_noise_preset(dataset: str, kind: str, rate: float) -> Dict[str, Any]:
    """lambda_u / p_threshold by noise setting, from DivideMix's released settings."""
    out: Dict[str, Any] = {}
    if kind == "asym":
        out.update(lambda_u=0.0, conf_penalty=True)
    elif kind in ("sym", "sym-exact", "idn"):
        if dataset == "cifar100":
            out["lambda_u"] = 25.0 if rate <= 0.2 else 150.0
        elif dataset == "cifar10":
            out["lambda_u"] = 0.0 if rate <= 0.2 else (25.0 if rate < 0.9 else 50.0)
        else:  # digits and others: a small lambda_u only pays off when most labels are wrong
            out["lambda_u"] = 0.0 if rate <= 0.2 else 25.0
        if rate >= 0.9:
            out.update(p_threshold=0.6, loss_history=True)
            if dataset == "cifar100":
                out["lambda_u"] = 150.0
    if dataset == "digits" and kind == "asym":
        out["lambda_u"] = 0.0
    return out


def resolve(method: str, preset: str, noise_kind: str, rate: float,
            overrides: Dict[str, Any] | None = None) -> Dict[str, Any]:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    hp = dict(COMMON)
    hp.update(PRESETS[preset])
    if method in ("dividemix", "dividemix-anm", "anm"):
        hp.update(_dividemix_noise_preset(preset, noise_kind, rate))
    for k, v in (overrides or {}).items():
        if v is None:
            continue
        if k not in hp:
            raise ValueError(f"unknown hyper-parameter {k!r}; known: {', '.join(sorted(hp))}")
        hp[k] = v
    return hp


def anm_config(hp: Dict[str, Any]):
    """The ANMConfig of a run: a named preset plus any anm_* overrides."""
    name = hp.get("anm_preset", "cifar")
    if name == "cifar":
        cfg = ANMConfig.cifar()
    elif name == "clothing1m":
        cfg = ANMConfig.clothing1m()
    elif name == "sanm-official":
        cfg = ANMConfig.sanm_official()
    elif name == "digits":
        # 8x8 images: the CIFAR ratios would erase a single pixel. Ours: Clothing1M-like ratios
        # with area_scale 1, i.e. boxes of about 4-8 of the 64 pixels.
        cfg = ANMConfig(area_lo=0.06, area_hi=0.13, area_scale=1.0)
    else:
        raise ValueError(f"unknown anm_preset {name!r}: cifar, clothing1m, sanm-official, digits")
    changes = {f.name: hp[f"anm_{f.name}"] for f in dataclasses.fields(ANMConfig)
               if hp.get(f"anm_{f.name}") is not None}
    return cfg.replace(**changes) if changes else cfg
