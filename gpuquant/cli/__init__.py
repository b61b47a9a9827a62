"""The ``gpuquant`` command line (also ``python -m gpuquant``).

Subcommands::

    gpuquant schemes                       every preset: family, code dtype, bytes per value, peer
    gpuquant fit INPUT --scheme S [--param k=v ...] -o QUANTIZER.json
    gpuquant convert INPUT OUTPUT (--scheme S [--param k=v ...] | --quantizer Q.json)
                                           fit if needed, transform, write the OUTPUT directory
                                           (--workers N / --scheduler ADDRESS: on Dask, gpuquant.cluster)
    gpuquant plan [INPUT] [--dim D ...]    N_max: the batch that fits on the GPU, peak, time, disk
    gpuquant eval DATA --scheme S          recall@k and reconstruction error against float32 search
    gpuquant export-info [NAME] [--dim D]  how to load an export preset's codes (Qdrant, pgvector, ...)
    gpuquant inspect PATH                  a quantizer JSON, a converted directory or a .npy file
    gpuquant doctor                        GPU, driver, CUDA, CuPy, cuVS, NVML: what works, why not
    gpuquant convert-model MODEL_DIR OUTPUT_DIR --scheme fp8|w8a16|w4a16
                                           quantize a checkpoint's Linear weights (gpuquant.checkpoint)

INPUT is a ``.npy`` file holding a 2-D float matrix (memory-mapped), a Parquet file or directory
(``--column``), an HDF5 file (``--dataset``), a big-ann ``.fbin`` / ``.u8bin`` / ``.i8bin`` file
(:mod:`gpuquant.engine.readers`), or ``demo`` for the dataset shipped with the package (2000 x 384
MiniLM embeddings, :mod:`gpuquant.data`); write ``./demo`` for a file of that name. ``--param``
values are parsed as JSON when they parse (``0.99``, ``true``, ``[[0, 1]]``), else taken as strings
(``bitorder=little``).

Every command takes ``--format human|json|quiet``: ``human`` prints a report on stdout, ``json``
prints exactly one JSON document on stdout (also on failure: ``{"ok": false, "error": ...}``),
``quiet`` prints nothing on success. Progress and logs go to stderr. Exit codes: 0 success,
2 bad usage or input (argument errors, missing or malformed files, bad parameters, an OUTPUT that
exists), 1 any other failure (e.g. an explicitly requested backend that cannot run here).

Layout (this package only re-exports):

- :mod:`~gpuquant.cli.app`: the parser and ``main`` (output, exit codes, logging);
- :mod:`~gpuquant.cli.common`: what commands share (the parser class, ``--format``, scheme options,
  reading INPUT, building the quantizer, JSON summaries);
- :mod:`~gpuquant.cli.render`: the human text of every command;
- one module per group of commands, each with ``register(subparsers, parents)`` adding its
  subparsers (``set_defaults(func=cmd_...)``; a ``cmd_*`` function takes the parsed arguments and
  returns ``(JSON document, human text)``): :mod:`~gpuquant.cli.quantizers` (schemes, fit),
  :mod:`~gpuquant.cli.convert` (convert, plan), :mod:`~gpuquant.cli.evaluate` (eval),
  :mod:`~gpuquant.cli.describe` (export-info, inspect), :mod:`~gpuquant.cli.doctor` (doctor, with
  the probes in :mod:`gpuquant.diagnostics`), and :mod:`~gpuquant.cli.models` (convert-model, with
  the library :mod:`gpuquant.checkpoint`).
  A new group is a new module plus one entry in :data:`gpuquant.cli.app.COMMANDS`.
"""

from gpuquant.cli.app import build_parser, main
from gpuquant.diagnostics import PROBES

__all__ = ["PROBES", "build_parser", "main"]
