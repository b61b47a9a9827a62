"""Model checkpoints: ``gpuquant convert-model MODEL_DIR OUTPUT_DIR --scheme fp8 | w8a16 | w4a16``.

Reads a Hugging Face checkpoint directory (``config.json``, ``*.safetensors`` with their index),
quantizes every Linear weight tensor by tensor with bounded memory, and writes a checkpoint in the
compressed-tensors format that transformers (``AutoModelForCausalLM.from_pretrained``) and vLLM
(``vllm serve OUTPUT_DIR``) load: the same shard files, ``config.json`` with its
``quantization_config`` (``quantization_status: compressed``), and every other file copied.

* :mod:`gpuquant.checkpoint.quant`: the math (scales, codes, int4 packing), equal byte for byte to
  compressed-tensors' compressors.
* :mod:`gpuquant.checkpoint.model`: reading the checkpoint, which tensors are quantized, the config.
* :mod:`gpuquant.checkpoint.run`: the resumable run and its report (the ``convert-model``
  subcommand, :mod:`gpuquant.cli.models`, calls :func:`convert_model`).

Needs only numpy and ml_dtypes (safetensors files are read and written here).
"""

from gpuquant.checkpoint.quant import SCHEMES, dequantize, pack_int32, quantize, unpack_int32
from gpuquant.checkpoint.run import convert_model

__all__ = ["SCHEMES", "convert_model", "dequantize", "pack_int32", "quantize", "unpack_int32"]
