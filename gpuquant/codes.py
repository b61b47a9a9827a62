"""``Codes``: the result of every transform, the same container for every scheme.

``codes.data`` is the code array exactly as the peer stores it (dtype and shape), so
``np.asarray(codes)`` gives it directly. Side arrays that some schemes need to decode (per-row or
per-block ``scales``) travel in ``codes.side``, a dict of arrays keyed by name; schemes without side
arrays have an empty dict. ``codes.dim`` is the number of input dimensions (packed formats hold
fewer bytes than dimensions, and odd dimensions leave padding). Arrays stay where they were made:
numpy for the numpy backend, CuPy for the GPU backend.

``codes.scheme`` is the name of the quantizer that made the codes, :attr:`gpuquant.Quantizer.name`:
the preset's name (``"int8-row"``), or the family's when the quantizer was built from a family
(``"scalar"``); a store's rows carry the name its manifest records. It is a label, never consulted
to decode: decoding takes the quantizer's scheme. (Below the public API a backend may fill in the
family; ``Quantizer.transform`` replaces it with the name.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Codes:
    """Quantized rows: ``data`` (the codes), ``side`` (named side arrays), ``scheme``, ``dim``."""

    data: Any
    side: dict[str, Any] = field(default_factory=dict)
    scheme: str = ""
    dim: int = 0

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        if not isinstance(self.data, np.ndarray):
            raise TypeError(
                "these codes live on the GPU; use codes.data (a CuPy array) or codes.data.get()"
            )
        arr = self.data
        if dtype is not None and np.dtype(dtype) != arr.dtype:
            return arr.astype(dtype)
        return arr.copy() if copy else arr

    def __len__(self) -> int:
        return int(self.data.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def nbytes(self) -> int:
        """Bytes of the codes and of every side array together."""
        return int(self.data.nbytes + sum(a.nbytes for a in self.side.values()))

    def __repr__(self) -> str:
        side = ", ".join(f"{k}{tuple(v.shape)}" for k, v in self.side.items())
        where = type(self.data).__module__.split(".")[0]
        return (
            f"Codes(scheme={self.scheme!r}, dim={self.dim}, data={self.data.dtype}{self.shape}"
            f"{', side=' + side if side else ''}, on={where})"
        )
