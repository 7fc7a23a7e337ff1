"""The trainer's settings checked before anything runs: no data set is loaded and no folder is
made for settings that cannot train (a batch size of -5 would otherwise run 30 epochs without an
optimiser step and exit 0). Each bad value is a ValueError naming the flag and what it must be.

The hyper-parameters are checked after the presets are merged (per method), so a bad value is
caught whether it came from a flag, a --config file, --set or a resumed run's settings.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Dict

import torch

from .noise import parse_noise
from .presets import anm_config

# name -> (kind, low, high, low inclusive?). kind: "int" or "num"; None values mean "unset" and
# pass for the names in _OPTIONAL.
_LIMITS = {
    "epochs": ("int", 1, math.inf, True),
    "batch_size": ("int", 1, math.inf, True),
    "lr": ("num", 0.0, math.inf, False),
    "momentum": ("num", 0.0, 1.0, True),
    "weight_decay": ("num", 0.0, math.inf, True),
    "lr_step": ("int", 1, math.inf, True),
    "warmup": ("int", 0, math.inf, True),
    "warmup_batch_factor": ("int", 1, math.inf, True),
    "class_floor": ("num", 0.0, 1.0, True),
    "alpha": ("num", 0.0, math.inf, False),
    "T": ("num", 0.0, math.inf, False),
    "lambda_u": ("num", 0.0, math.inf, True),
    "rampup": ("int", 0, math.inf, True),
    "p_threshold": ("num", 0.0, 1.0, True),
    "recon_weight": ("num", 0.0, math.inf, True),
    "width": ("int", 1, math.inf, True),
    "image_size": ("int", 1, math.inf, True),
    "train_subset": ("int", 1, math.inf, True),
    "threads": ("int", 1, math.inf, True),
}
_OPTIONAL = {"width", "train_subset", "threads"}
_CHOICES = {"schedule": ("step", "cosine"), "dm_epoch": ("labeled", "all")}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_value(name: str, value: Any) -> None:
    kind, lo, hi, lo_inclusive = _LIMITS[name]
    if value is None and name in _OPTIONAL:
        return
    wanted = "an integer" if kind == "int" else "a finite number"
    typ = numbers.Integral if kind == "int" else numbers.Real
    ok = (not isinstance(value, bool) and isinstance(value, typ) and math.isfinite(value)
          and (value >= lo if lo_inclusive else value > lo) and value <= hi)
    if not ok:
        bound = f"{'>=' if lo_inclusive else '>'} {lo:g}"
        if hi != math.inf:
            bound += f" and <= {hi:g}"
        raise ValueError(f"{_flag(name)} must be {wanted} {bound}, got {value!r}")


def check_hp(hp: Dict[str, Any]) -> None:
    for name in _LIMITS:
        if name in hp:
            _check_value(name, hp[name])
    for name, choices in _CHOICES.items():
        if name in hp and hp[name] not in choices:
            raise ValueError(f"{_flag(name)} must be one of {', '.join(choices)}, got "
                             f"{hp[name]!r}")
    anm_config(hp)  # the ANM box and label settings (ANMConfig checks each)


def check_device(name) -> None:
    if name in (None, "", "auto"):
        return
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N") \
            from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r}: anm-train trains on cpu or cuda, not "
                         f"{device.type}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: no CUDA GPU is visible to torch")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: torch sees {torch.cuda.device_count()} GPU(s)")


def check_settings(s) -> None:
    """Every setting of `s` (a settings.Settings) that could not train, as a ValueError."""
    from .loop import resolve_preset, resolved_hp

    rate = s.noise_rate
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"--noise-rate must be a number in [0, 1], got {rate!r}")
    if not s.seeds:
        raise ValueError("--seeds must be >= 1")
    parse_noise(s.noise)
    check_device(s.device)  # (the preset is chosen by device)
    resolve_preset(s)
    for hp in resolved_hp(s).values():
        check_hp(hp)
