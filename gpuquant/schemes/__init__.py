"""The schemes layer: the math of every code format and its numpy reference.

``make_scheme(name, **params)`` builds a scheme from a preset name (``"cuvs-sq8"``, ...) or a family
name (``"scalar"``, ``"absmax"``, ``"float"``, ``"binary"``, ``"gguf"``, ``"scaled_fp8"``,
``"rabitq"``, ``"pq"``); keyword parameters override the preset's. The families are registered in
:mod:`gpuquant.schemes.registry`.
"""

from gpuquant.schemes.base import Scheme
from gpuquant.schemes.presets import PRESETS, Preset
from gpuquant.schemes.registry import FAMILIES, get_preset, make_scheme

__all__ = ["FAMILIES", "PRESETS", "Preset", "Scheme", "get_preset", "make_scheme"]
