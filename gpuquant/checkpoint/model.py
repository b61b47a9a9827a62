"""A Hugging Face checkpoint directory as ``convert-model`` reads it, and what it quantizes.

Input: ``config.json`` and the weights, either ``*.safetensors.index.json`` (``weight_map``: tensor
name -> shard file) with its shards, or every ``*.safetensors`` file of the directory. Tensors are
memory-mapped (:func:`gpuquant.weights.load_safetensors`), so nothing is read until it is used.

Which tensors are quantized (by name, as llm-compressor's defaults by module type: every ``Linear``
but ``lm_head``): a 2-D float tensor named ``MODULE.weight`` is quantized unless ``MODULE`` matches an
ignore pattern (defaults: ``lm_head``, embeddings and norms; ``--ignore REGEX`` adds more), or does
not match any ``--targets REGEX`` when some are given, or has a width the scheme cannot group
(``w4a16`` needs ``in % 128 == 0``). Patterns are Python regular expressions searched in the module
name. Every other tensor (biases, norms, embeddings, ``lm_head``) is copied byte for byte, and each
2-D weight left as it was has its module named in ``quantization_config.ignore``, so that loaders
do not look for its scales.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gpuquant.checkpoint.quant import WeightScheme
from gpuquant.errors import InputError
from gpuquant.weights import load_safetensors

DEFAULT_IGNORE = (r"(^|\.)lm_head$", r"embed", r"norm")
FLOATS = ("float16", "float32", "float64", "bfloat16")


@dataclass
class Checkpoint:
    """The input directory: its config, its shard files in order and the index (if any)."""

    root: Path
    config: dict[str, Any]
    shards: list[str]
    index_name: str | None
    index: dict[str, Any] | None

    def tensors(self, shard: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """``(name -> memory-mapped array, __metadata__)`` of one shard."""
        return load_safetensors(self.root / shard)

    def weight_files(self) -> list[Path]:
        return [self.root / s for s in self.shards]


def _json(p: Path) -> dict[str, Any]:
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{p} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise InputError(f"{p} does not hold a JSON object")
    return doc


def read_checkpoint(root: Path) -> Checkpoint:
    """Check and describe the checkpoint directory ``root`` (``InputError`` on anything missing)."""
    if not root.is_dir():
        raise InputError(f"model directory not found: {root}")
    cfg_path = root / "config.json"
    if not cfg_path.is_file():
        raise InputError(f"{root} has no config.json: not a Hugging Face checkpoint directory")
    config = _json(cfg_path)
    if "quantization_config" in config:
        raise InputError(f"{root} is already quantized (config.json has a quantization_config)")
    indexes = sorted(root.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
        raise InputError(f"{root} holds several safetensors indexes: {', '.join(p.name for p in indexes)}")
    if indexes:
        index = _json(indexes[0])
        wmap = index.get("weight_map")
        if not isinstance(wmap, dict) or not wmap:
            raise InputError(f"{indexes[0]} has no weight_map")
        shards = sorted(set(wmap.values()))
        missing = [s for s in shards if not (root / s).is_file()]
        if missing:
            raise InputError(f"{indexes[0]} names shard files that are missing: {', '.join(missing)}")
        return Checkpoint(root, config, shards, indexes[0].name, index)
    shards = sorted(p.name for p in root.glob("*.safetensors"))
    if not shards:
        raise InputError(f"{root} holds no *.safetensors weights (convert .bin checkpoints to safetensors first)")
    return Checkpoint(root, config, shards, None, None)


@dataclass
class Selection:
    """The ``--targets`` and ``--ignore`` patterns, compiled."""

    scheme: WeightScheme
    targets: list[str] = field(default_factory=list)
    ignore: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for pattern in [*self.targets, *self.ignore]:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise InputError(f"{pattern!r} is not a valid regular expression ({exc})") from None

    def decide(self, name: str, arr: np.ndarray) -> str | None:
        """None to quantize tensor ``name``, else why it is copied as it is."""
        if not name.endswith(".weight") or arr.ndim != 2 or arr.dtype.name not in FLOATS:
            return "not a 2-D float .weight"
        module = name[: -len(".weight")]
        hit = next((p for p in (*DEFAULT_IGNORE, *self.ignore) if re.search(p, module)), None)
        if hit is not None:
            return f"ignored ({hit})"
        if self.targets and not any(re.search(p, module) for p in self.targets):
            return "not in --targets"
        if not self.scheme.fits(arr.shape):
            return f"{arr.shape[1]} columns are not a multiple of the group size {self.scheme.group}"
        return None


def quantization_config(scheme: WeightScheme, ignore: list[str]) -> dict[str, Any]:
    """The ``quantization_config`` of ``config.json`` that transformers and vLLM read."""
    return {
        "quant_method": "compressed-tensors",
        "format": scheme.format,
        "quantization_status": "compressed",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": scheme.args(),
                                      "input_activations": None, "output_activations": None,
                                      "format": scheme.format}},
        "ignore": ignore,
        "kv_cache_scheme": None,
    }
