"""Granularity: which values of an ``(n, d)`` input share one set of quantization constants.

One vocabulary for every family (after torchao's ``PerTensor`` / ``PerAxis`` / ``PerGroup``):

* :class:`PerTensor` (``"tensor"``): every value shares one scale or range.
* :class:`PerRow` (``"row"``): each row has its own; a weight's output channel is a row, so the
  ``scaled_fp8`` family's ``"channel"`` is this.
* :class:`PerColumn` (``"column"``): each dimension (column) has its own, fitted over the rows; the
  ``scalar`` family's ``"dimension"`` is this.
* :class:`PerBlock` (``"block"``): each block of ``size`` consecutive values of a row has its own.

The ``granularity`` parameter of a family takes these words, or the family's own spelling
(``"dimension"``, ``"channel"``); the family stores its own spelling, so saved quantizer files are
the same whichever word was used. Code outside the families reads :attr:`Scheme.granularity`
(an instance of the classes below), never the spelling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from gpuquant.errors import InputError


class Granularity:
    """Base of the granularity types; ``word`` is the unified spelling."""

    word: ClassVar[str]


@dataclass(frozen=True)
class PerTensor(Granularity):
    word: ClassVar[str] = "tensor"


@dataclass(frozen=True)
class PerRow(Granularity):
    word: ClassVar[str] = "row"


@dataclass(frozen=True)
class PerColumn(Granularity):
    word: ClassVar[str] = "column"


@dataclass(frozen=True)
class PerBlock(Granularity):
    size: int = 64
    word: ClassVar[str] = "block"


def spelling(value: Any, kinds: dict[str, type[Granularity]]) -> str:
    """The family's own spelling (a key of ``kinds``) for ``value``: that spelling itself or the
    unified word of the same kind; ``InputError`` listing the family's spellings otherwise."""
    for own, kind in kinds.items():
        if value == own or value == kind.word:
            return own
    raise InputError(f"granularity={value!r} is not supported; choose one of {list(kinds)}")
