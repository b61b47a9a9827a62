"""CUDA C++ sources of gpuquant's kernels, shipped as package data (``gpuquant.kernels``)."""
