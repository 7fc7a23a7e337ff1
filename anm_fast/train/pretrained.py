"""Pre-trained weights from a user-given file, matched to a model by name and shape.

Checkpoints come in several layouts: a bare state dict, or one under "model" / "state_dict" (the
C2D self-supervised checkpoints the released SANM script starts from hold {"model": ...}), with
"module." (DataParallel) and "encoder." (a backbone inside a classifier) prefixes, and the
shortcut branch of a CIFAR-style ResNet named "shortcut" where torchvision says "downsample".
Those names are mapped onto the model's; a tensor is loaded when its name and shape both match.
Nothing is ever downloaded. A file that matches none of the model's tensors is refused: loading
nothing silently would train from scratch under a pre-trained label.
"""
from __future__ import annotations

import os
from typing import Dict, Tuple

import torch

_PREFIXES = ("module.", "encoder.", "backbone.", "model.")


def _unwrap(obj, path: str) -> Dict[str, torch.Tensor]:
    for key in ("model", "state_dict", "net"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise ValueError(f"--pretrained {path}: expected a state dict (a dict of tensors, "
                         f"possibly under 'model' or 'state_dict'), got {type(obj).__name__}")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def canonical_name(name: str) -> str:
    """A checkpoint's tensor name in torchvision's ResNet spelling."""
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if name.startswith(p):
                name, changed = name[len(p):], True
    return name.replace(".shortcut.", ".downsample.")


def load_pretrained(net: torch.nn.Module, path: str) -> Tuple[int, int]:
    """Loads the tensors of `path` whose mapped name and shape match `net`'s into `net`.
    Returns (tensors loaded, tensors in the model); raises ValueError when none match."""
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"--pretrained: no file {path!r}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling errors have many types
        raise ValueError(f"--pretrained {path}: not a weights file torch.load(weights_only=True) "
                         f"can read ({type(e).__name__}: {e})") from e
    state = _unwrap(obj, path)
    own = net.state_dict()
    picked = {}
    for k, v in state.items():
        name = canonical_name(k)
        if name in own and own[name].shape == v.shape:
            picked[name] = v
    if not picked:
        sample = ", ".join(sorted(state)[:4]) or "none"
        raise ValueError(f"--pretrained {path}: none of its {len(state)} tensors matches the "
                         f"model ({type(net).__name__}, {len(own)} tensors) by name and shape; "
                         f"its names look like: {sample}")
    net.load_state_dict(picked, strict=False)
    return len(picked), len(own)

