"""Training methods by name: ce, anm, dividemix, dividemix-anm.

A new method is a Method subclass in a file of its own, listed in METHODS below: its __init__
builds its networks with `build_branches(k)` (with their optimisers, schedulers and, when the
class sets `uses_anm = True`, the ANM config and reconstruction decoders), and it defines
`nets()` and `train_epoch(epoch, bar)`; `iterations` (the progress bar), `extra_state` /
`load_extra_state` (state beyond what Method checkpoints) and `final_quality` have defaults.
The epoch loop, checkpoints, torchrun, reports and the command line (`--method`, `--compare`)
then need no change. Hyper-parameters of its own go into presets.COMMON; presets.resolve names
the methods that take DivideMix's per-noise presets.
"""
from .anm import ANM
from .base import Context, Method
from .ce import CE
from .dividemix import DivideMix, DivideMixANM

METHODS = {"ce": CE, "anm": ANM, "dividemix": DivideMix, "dividemix-anm": DivideMixANM}


def get_method(name: str):
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}: choose one of {', '.join(METHODS)}") from None


__all__ = ["METHODS", "get_method", "Context", "Method"]
