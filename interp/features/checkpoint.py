"""The checkpoint of an index build in progress, so that an interrupted `build_index` resumes where it stopped.

The state of the two passes (`TopPass`, `BandPass`) and how far they got (pass, store rows done) go into one
safetensors file, `.<index name>.partial/state.safetensors` next to the index, replaced atomically every few
batches. The batches of a store come in a fixed order and the band-sampling keys depend only on the batch, so a
resumed build skips the batches already done and ends with the index an uninterrupted build gives. A checkpoint
made for other features, another store or other settings is refused, naming the fields that differ
(`interp.core.fingerprint`); a file cut short by a crash is set aside. The folder is removed once the index is
written.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from interp.core.fingerprint import check_same, make_fingerprint, settings_of, tensor_digest
from interp.core.io import atomic_save_safetensors
from interp.features.layout import FeatureIndexError
from interp.store import ActivationStore


@dataclass
class Saved:
    """A checkpoint read back: the pass in progress (1 or 2), store rows that pass has done, the pass states."""

    phase: int
    rows: int
    tensors: dict[str, torch.Tensor]


class IndexCheckpoint:
    def __init__(self, out: Path, fingerprint: dict, every: int):
        self.folder = out.with_name(f".{out.name}.partial")
        self.file = self.folder / "state.safetensors"
        self.fingerprint = json.dumps(fingerprint, sort_keys=True)
        self.every, self.batches = every, 0

    def load(self) -> Saved | None:
        """The saved state of this build; None when there is none. Refuses the checkpoint of another build."""
        if not self.file.exists():
            return None
        try:
            with safe_open(str(self.file), "pt") as f:
                meta = f.metadata() or {}
        except Exception:  # a file cut short by a crash of the machine: start afresh
            return None
        saved = json.loads(meta["fingerprint"]) if "fingerprint" in meta else None
        check_same(saved, json.loads(self.fingerprint), f"the index checkpoint in {self.folder}",
                   f"rerun with the same settings, or delete {self.folder} to start afresh", FeatureIndexError)  # fmt: skip
        try:
            return Saved(int(meta["phase"]), int(meta["rows"]), load_file(str(self.file)))
        except Exception:  # a file cut short by a crash of the machine: start afresh
            return None

    def save(self, phase: int, rows: int, tensors: dict[str, torch.Tensor]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = {"fingerprint": self.fingerprint, "phase": str(phase), "rows": str(rows)}
        atomic_save_safetensors({name: t.detach().cpu() for name, t in tensors.items()}, self.file, meta)

    def step(self, phase: int, rows: int, tensors) -> None:
        """After each batch: save every `every` batches (`tensors` is called only then)."""
        self.batches += 1
        if self.batches % self.every == 0:
            self.save(phase, rows, tensors())

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def fingerprint(directions: torch.Tensor, store: ActivationStore, config: dict) -> dict:
    """What a checkpoint must match to be resumed: the features (a checksum of their directions `[k, d_in]`), the
    store (path, rows, manifest hash) and the index settings (the device and checkpoint interval aside)."""
    return make_fingerprint(
        settings_of(config), {"directions": tensor_digest(directions), **store.fingerprint()}
    )
