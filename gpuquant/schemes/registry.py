"""The registry of scheme families, and building a scheme from a preset or family name.

``FAMILIES`` maps each family's name to its scheme class: adding a family is one entry in the
tuple below. ``make_scheme(name, **params)`` builds a scheme from a preset name or a family name,
keyword parameters overriding the preset's.
"""

from __future__ import annotations

import difflib
from typing import Any

from gpuquant.errors import InputError
from gpuquant.schemes.absmax import AbsmaxScheme
from gpuquant.schemes.base import Scheme
from gpuquant.schemes.binary import BinaryScheme
from gpuquant.schemes.floatcast import FloatScheme
from gpuquant.schemes.gguf import GgufScheme
from gpuquant.schemes.presets import PRESETS, Preset
from gpuquant.schemes.scalar import ScalarScheme
from gpuquant.schemes.scaled_fp8 import ScaledFp8Scheme

FAMILIES: dict[str, type[Scheme]] = {
    cls.family: cls
    for cls in (ScalarScheme, AbsmaxScheme, FloatScheme, BinaryScheme, GgufScheme, ScaledFp8Scheme)
}

def get_preset(name: str) -> Preset:
    """The preset called ``name``; ``InputError`` suggesting the closest names and listing the known
    ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), [*PRESETS, *FAMILIES], n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        raise InputError(
            f"unknown scheme {name!r}; {hint}presets: {', '.join(PRESETS)}; families: {', '.join(FAMILIES)}"
        ) from None


def make_scheme(name: str, **params: Any) -> Scheme:
    """A scheme from a preset or family name, with ``params`` overriding the preset's."""
    if name in FAMILIES:
        return FAMILIES[name](**params)
    preset = get_preset(name)
    return FAMILIES[preset.family](**{**preset.params, **params})
