"""Named recipes: whole training set-ups, selected with `anm-train --recipe NAME`.

A recipe is a set of hyper-parameters laid over the data set's and the per-noise presets, under the
user's config file and flags (so any of its values can still be changed by a flag). The presets
are DivideMix + ANM as the paper describes them; a recipe reproduces a released training script.

sanm-release: the authors' released CIFAR-10/100 script (yuanpengtu/SANM, Train_cifar.py,
  resnetc2d.py, dataloader_cifar.py), point by point:
  - a standard ResNet-18 (3x3 stem, no max-pool), meant to start from the C2D self-supervised
    checkpoint the release loads (`--pretrained FILE`; anm_fast never downloads it);
  - `softmax_in_net`: the network returns softmax probabilities and every loss, guess and penalty
    applies softmax / log-softmax / cross-entropy on top of those (bounded losses, very soft
    co-guessed targets): the release's behaviour, kept as an explicit switch;
  - `views: "sanm"`: co-guessing and erasing on two AutoAugment views; MixMatch on six groups per
    branch: two AutoAugment views, two RandAugment + 16-px cutout views and the max- and
    min-erased copies (augment_strong.py);
  - `warmup_views: "sanm"` (ColorJitter + crop + flip + RandomAffine) and gradient clipping at norm
    1 (`warmup_clip`) during the warm-up;
  - lambda_u 25 and p_threshold 0.5 at every noise setting, 361 epochs (the release loops over
    range(360 + 1)), lr 0.02 divided by 10 at epoch 150, batch 64, alpha 4, T 0.5, reconstruction
    weight 0.02, warm-up 10 epochs (CIFAR-100: 20), the negative-entropy warm-up penalty under asym
    noise, the loss history at 90 % noise;
  - the box's top-left corner at the peak and the 8-bit peak rule (ANMConfig.sanm_official());
  - the release's decoder, 4 -> 10 -> 15 -> 32 (`decoder: "sanm"`).

sanm-release-clothing1m: the release's Clothing1M hyper-parameters (Train_clothing1M.py) for an
  image folder: ResNet-50 with the standard stem (from `--pretrained FILE`), 224-px input, batch 8,
  lr 0.0009 / 10 at 40, 81 epochs, one warm-up epoch with the negative-entropy penalty, MixUp
  alpha 0.5, weight decay 1e-3, lambda_u 0, reconstruction weight 0.3, box areas 6-13 % plus
  0.1 * (1 - quality). Not its defects: the release adds that quality term in pixels (so it does
  nothing at 224 px) and overwrites the max box's row with the area, which pins the box to the
  bottom edge; here the term is a fraction of the image area and the box sits at the peak.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

RECIPES = ("sanm-release", "sanm-release-clothing1m")

_SANM_CIFAR: Dict[str, Any] = dict(
    model="resnet18", epochs=361, batch_size=64, lr=0.02, momentum=0.9, weight_decay=5e-4,
    schedule="step", lr_step=150, warmup_batch_factor=2, dm_epoch="labeled", class_floor=0.0,
    alpha=4.0, T=0.5, lambda_u=25.0, rampup=16, p_threshold=0.5, prior_penalty=True,
    recon_weight=0.02, anm_preset="sanm-official", softmax_in_net=True, views="sanm",
    warmup_views="sanm", warmup_clip=1.0, decoder="sanm",
)

_SANM_CLOTHING1M: Dict[str, Any] = dict(
    model="resnet50", image_size=224, epochs=81, batch_size=8, lr=0.0009, momentum=0.9,
    weight_decay=1e-3, schedule="step", lr_step=40, warmup=1, warmup_batch_factor=1,
    conf_penalty=True, alpha=0.5, T=0.5, lambda_u=0.0, p_threshold=0.5, prior_penalty=True,
    recon_weight=0.3, anm_preset="clothing1m", anm_quality_gain=0.1,
)


def recipe_hp(name: Optional[str], dataset: str) -> Dict[str, Any]:
    """The hyper-parameters a recipe sets on `dataset` ({} for no recipe)."""
    if not name:
        return {}
    if name == "sanm-release":
        if dataset not in ("cifar10", "cifar100", "imagefolder"):
            raise ValueError(f"--recipe sanm-release is the CIFAR-10/100 script: use --dataset "
                             f"cifar10, cifar100 or an image folder of CIFAR images, not "
                             f"{dataset!r}")
        hp = dict(_SANM_CIFAR)
        hp["warmup"] = 20 if dataset == "cifar100" else 10
        return hp
    if name == "sanm-release-clothing1m":
        if dataset != "imagefolder":
            raise ValueError(f"--recipe sanm-release-clothing1m reads Clothing1M as an image "
                             f"folder: use --dataset imagefolder, not {dataset!r}")
        return dict(_SANM_CLOTHING1M)
    raise ValueError(f"unknown recipe {name!r}: choose one of {', '.join(RECIPES)}")
