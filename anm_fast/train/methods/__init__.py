"""Training methods by name: ce, anm, dividemix, dividemix-anm."""
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
