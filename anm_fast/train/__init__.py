"""The reference trainer behind `anm-train` (also `python -m anm_fast.train`)."""
from .cli import main

__all__ = ["main"]
