"""Where interp keeps what it makes: models, activations, fitted decomposers, results."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$INTERP_CACHE` if set; else `cache/` in the source checkout interp runs from; else ~/.cache/interp."""
    if os.environ.get("INTERP_CACHE"):
        return Path(os.environ["INTERP_CACHE"]).expanduser()
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").exists():
        return checkout / "cache"
    return Path.home() / ".cache" / "interp"
