"""Where things are: the project's folder, the output root and the cache.

The ground floor of the package, beside :mod:`utils.setup`: standard library only, imported
by every part and importing none of them, so that each of these folders has one definition.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
"""The repository: ``utils/``, ``notebooks/``, ``data/`` and the committed outputs."""
OUTPUT_ROOT_ENV = "DISSECT_OUTPUT_ROOT"
CACHE_ENV = "DISSECT_CACHE"


def output_root() -> Path:
    """Root of ``results/``, ``figures/`` and ``executed/`` (``$DISSECT_OUTPUT_ROOT`` overrides,
    so that tests and quick runs never overwrite the committed outputs)."""
    return Path(os.environ.get(OUTPUT_ROOT_ENV) or PROJECT_ROOT)


def cache_dir() -> Path:
    """Where converted weights and downloads are kept (``$DISSECT_CACHE`` overrides)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "dissecting-recall")


__all__ = ["CACHE_ENV", "OUTPUT_ROOT_ENV", "PROJECT_ROOT", "cache_dir", "output_root"]
