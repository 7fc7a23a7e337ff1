"""ANMConfig: every knob of the masking procedure, with the presets users ask for.

The numbers and their meaning follow the behaviour contract: docs/SPEC.md, "Boxes", "Erasing
and labels" and "Presets".
A config is immutable and validated on construction, so a bad value fails where it is written,
not deep inside a kernel.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import typing
from typing import NamedTuple, Tuple, Union

import numpy as np

FillSpec = Union[str, Tuple[float, ...]]

_ANCHORS = ("center", "corner")
# area_scale and label_gain multiply the mask ratio s (at most 2: area_hi + quality_gain): past a
# gain of 100 every box is the whole image and every label shift takes the top class's whole mass
# for any s above 1%, and the kernels' float32 products stay far from overflow.
_MAX_GAIN = 100.0
# Fills are written into float32 (or narrower) images: beyond this they are not finite there.
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_FILL_ERROR = "ANMConfig.fill must be 'uniform', 'zero' or a tuple of per-channel values"


def _fill_spec(fill):
    """'uniform', 'zero', or a non-empty tuple of float32-finite per-channel floats."""
    if isinstance(fill, str):
        if fill not in ("uniform", "zero"):
            raise ValueError(f"{_FILL_ERROR}, got {fill!r}")
        return fill
    try:
        items = tuple(fill)
    except TypeError:
        raise ValueError(f"{_FILL_ERROR}, got {fill!r}") from None
    if not all(isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))
               for v in items):
        raise ValueError(f"{_FILL_ERROR} (numbers), got {fill!r}")
    values = tuple(float(v) for v in items)
    if not values or not all(math.isfinite(v) and abs(v) <= _FLOAT32_MAX for v in values):
        raise ValueError(f"ANMConfig.fill values must be finite float32 numbers and non-empty, "
                         f"got {fill!r}")
    return values


class BoxParams(NamedTuple):
    """The box parameters as the ops take them: ONE `box_params` list of floats, in this field
    order (csrc/anm_common.h's BoxParams reads the same order; the flags travel as 1.0 / 0.0).
    `ANMConfig.box_params()` packs it; the Python kernels (reference, Triton) read it back with
    `BoxParams.unpack`, so a new box knob is a field here and in anm_common.h (the flags come
    last; tests/test_ops_registration.py checks that both name the same fields)."""

    area_lo: float
    area_hi: float
    quality_gain: float
    aspect_lo: float
    area_scale: float
    center_anchor: bool  # the box is centred on the peak (else the peak is its top-left corner)
    uniform_fill: bool   # fills drawn from U(0, 1) (else the op's fill_value)

    def pack(self) -> list:
        return [float(v) for v in self]

    @classmethod
    def unpack(cls, values) -> "BoxParams":
        """The fields of a packed list; a ValueError names the layout when it does not fit."""
        values = list(values)
        if len(values) != len(cls._fields):
            raise ValueError(f"box_params must hold {len(cls._fields)} values "
                             f"({', '.join(cls._fields)}; anm_fast.config.BoxParams), got "
                             f"{len(values)}")
        fields = {}
        for name, v in zip(cls._fields, values):
            if name in _BOX_FLAGS:
                if v not in (0.0, 1.0):
                    raise ValueError(f"box_params' {name} must be 0 or 1, got {v!r}")
                v = bool(v)
            fields[name] = v
        return cls(**fields)


# The fields of BoxParams that travel as 1.0 / 0.0.
_BOX_FLAGS = tuple(n for n, t in typing.get_type_hints(BoxParams).items() if t is bool)


@dataclasses.dataclass(frozen=True)
class ANMConfig:
    """Parameters of label-quality guided box sampling and label modulation.

    area_lo, area_hi: the mask ratio s is drawn from U(area_lo, area_hi) ...
    quality_gain:     ... plus quality_gain * (1 - quality).
    aspect_lo:        aspect rho ~ U(aspect_lo, 1 / aspect_lo); must lie in (0, 1].
    area_scale:       the box covers about area_scale * s of the image.
    anchor:           "center" (box centred on the peak) or "corner" (peak is the top-left corner,
                      as in the authors' release).
    band:             peak tolerance in [0, 1): the first pixel within band * (max - min) of the
                      extreme is the peak; 1/255 mimics the release's 8-bit quantisation.
    fill:             "uniform" (one U(0,1) value per channel and box), "zero", or a tuple of
                      per-channel constants (length 1 or C).
    label_gain:       the top class gives min(label_gain * s, its mass) to the others.
    """

    area_lo: float = 0.02
    area_hi: float = 0.07
    quality_gain: float = 0.03
    aspect_lo: float = 0.8
    area_scale: float = 0.5
    anchor: str = "center"
    band: float = 0.0
    fill: FillSpec = "uniform"
    label_gain: float = 1.0

    def __post_init__(self) -> None:
        for name in ("area_lo", "area_hi", "quality_gain", "aspect_lo", "area_scale", "band",
                     "label_gain"):
            value = getattr(self, name)
            if (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real)
                    or not math.isfinite(value)):
                raise ValueError(f"ANMConfig.{name} must be a finite number, got {value!r}")
            # numpy scalars become floats: a config compares, hashes and saves the same either way
            object.__setattr__(self, name, float(value))
        if not 0.0 <= self.area_lo <= self.area_hi <= 1.0:
            raise ValueError(
                f"ANMConfig needs 0 <= area_lo <= area_hi <= 1 (mask ratios are fractions of the "
                f"image), got area_lo={self.area_lo}, area_hi={self.area_hi}")
        if not 0.0 <= self.quality_gain <= 1.0:
            raise ValueError(f"ANMConfig.quality_gain must lie in [0, 1] (it adds to the mask "
                             f"ratio), got {self.quality_gain}")
        if not 0.0 < self.aspect_lo <= 1.0:
            raise ValueError(f"ANMConfig.aspect_lo must lie in (0, 1], got {self.aspect_lo}")
        if not 0.0 < self.area_scale <= _MAX_GAIN:
            raise ValueError(f"ANMConfig.area_scale must lie in (0, {_MAX_GAIN:g}], got "
                             f"{self.area_scale}")
        if not isinstance(self.anchor, str) or self.anchor not in _ANCHORS:
            raise ValueError(f"ANMConfig.anchor must be one of {_ANCHORS}, got {self.anchor!r}")
        if not 0.0 <= self.band < 1.0:
            raise ValueError(f"ANMConfig.band must lie in [0, 1), got {self.band}")
        if not 0.0 <= self.label_gain <= _MAX_GAIN:
            raise ValueError(f"ANMConfig.label_gain must lie in [0, {_MAX_GAIN:g}], got "
                             f"{self.label_gain}")
        object.__setattr__(self, "fill", _fill_spec(self.fill))

    # ----------------------------------------------------------------------------------- presets
    @classmethod
    def cifar(cls, **overrides) -> "ANMConfig":
        """The default: the released CIFAR numbers, centred boxes, exact peaks."""
        return cls(**overrides)

    @classmethod
    def clothing1m(cls, **overrides) -> "ANMConfig":
        """Larger boxes for 224x224 images; the quality term is a ratio (the release adds pixels)."""
        base = dict(area_lo=0.06, area_hi=0.13, area_scale=1.0)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def sanm_official(cls, **overrides) -> "ANMConfig":
        """The authors' released CIFAR behaviour: corner anchor and 8-bit-like peak band."""
        base = dict(anchor="corner", band=1.0 / 255.0)
        base.update(overrides)
        return cls(**base)

    def replace(self, **changes) -> "ANMConfig":
        return dataclasses.replace(self, **changes)

    def box_params(self) -> list:
        """The ops' `box_params` argument for this config (see BoxParams)."""
        return BoxParams(self.area_lo, self.area_hi, self.quality_gain, self.aspect_lo,
                         self.area_scale, self.anchor == "center", self.fill == "uniform").pack()

    def fill_values(self, channels: int):
        """(uniform, values): values is a list of `channels` floats used when not uniform."""
        if self.fill == "uniform":
            return True, [0.0] * channels
        if self.fill == "zero":
            return False, [0.0] * channels
        values = list(self.fill)
        if len(values) == 1:
            return False, values * channels
        if len(values) != channels:
            raise ValueError(
                f"ANMConfig.fill has {len(values)} values but the images have {channels} channels")
        return False, values
