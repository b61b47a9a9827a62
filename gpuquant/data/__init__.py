"""Data shipped with gpuquant: the demo dataset (2000 x 384 MiniLM sentence embeddings; its
provenance is in :mod:`gpuquant.data.demo`). This package only re-exports."""

from gpuquant.data.demo import DEMO_FILE, DEMO_SHAPE, demo_path, load_demo

__all__ = ["DEMO_FILE", "DEMO_SHAPE", "demo_path", "load_demo"]
