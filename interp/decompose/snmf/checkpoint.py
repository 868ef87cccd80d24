"""SNMF checkpoints: where each process writes, what a resumed fit reads, and how the split over processes changes.

A fit with a checkpoint folder `root` writes, every `checkpoint_every` iterations, its state, the sums and best F
(checkpoint.safetensors, its metadata holding the state) and its columns of G^T `[k, n_rank]` (in the same file,
or as .npy files named by iteration when G is memory-mapped: the safetensors file, written last and atomically,
names the ones that belong to it, so a crash at any point leaves a consistent checkpoint). A single process writes
into `root`; under torch.distributed rank r of W writes into `root/ranks_W/rank_r`. `root/layout.json`
({"world_size", "tokens": tokens per rank, "fingerprint": the settings and data, checked on resume}) names the set of folders that holds the latest complete checkpoint:
rank 0 rewrites it only after every rank has written.

A fit resumes from any layout over the same tokens: each rank reads the columns of G it now holds from the folders
of the ranks that held them (the sums, F and the state are the same on every rank). So a fit started on 2
processes can go on in 1, or the other way round.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from interp.core import distributed
from interp.core.fingerprint import check_same
from interp.core.io import atomic_save_safetensors, atomic_write_json
from interp.decompose.base import DecomposerError

LAYOUT = "layout.json"


def rank_folder(root: Path, world_size: int, rank: int) -> Path:
    return root if world_size == 1 else root / f"ranks_{world_size}" / f"rank_{rank:03d}"


@dataclass
class Checkpoints:
    root: Path
    layout: dict  # this fit's: world_size, tokens per rank
    saved: dict | None  # the layout of the checkpoint to resume from (None: start afresh)
    temporary: bool = False  # a scratch folder for memory-mapped G only: nothing is checkpointed there

    @classmethod
    def open(cls, root: Path, layout: dict, temporary: bool = False) -> Checkpoints:
        """The checkpoints under `root` for a fit with `layout`; refuses a checkpoint of other tokens."""
        saved = None
        if (root / LAYOUT).exists():
            saved = json.loads((root / LAYOUT).read_text())
            if sum(saved["tokens"]) != sum(layout["tokens"]):
                raise DecomposerError(
                    f"the checkpoint at {root} is a fit of {sum(saved['tokens']):,} tokens, this one has "
                    f"{sum(layout['tokens']):,}: another store? Delete the checkpoint folder to start afresh"
                )
            check_same(saved.get("fingerprint"), layout.get("fingerprint", {}), f"the checkpoint at {root}",
                       "rerun with the same settings (max_iter and the number of processes may change), pass "
                       "--overwrite or delete the checkpoint folder to start afresh", DecomposerError)  # fmt: skip
        elif layout["world_size"] == 1 and (root / "state.json").exists():
            saved = layout  # written before layouts were recorded: a single process's
        return cls(root, layout, saved, temporary)

    @property
    def folder(self) -> Path:
        """Where this process writes."""
        return rank_folder(self.root, self.layout["world_size"], distributed.rank())

    def write(self, sums: dict[str, torch.Tensor], g: dict, state: dict, on_disk: bool) -> None:
        """This rank's checkpoint (sums and best F, G's buffers by name, the state), then `publish`."""
        folder, files, tensors = self.folder, {}, dict(sums)
        folder.mkdir(parents=True, exist_ok=True)
        for name, buffer in g.items():
            if on_disk:
                files[name] = f"{name}.checkpoint.{state['iteration']}.npy"
                buffer.snapshot(folder / files[name])
            else:
                tensors[name] = buffer.data
        meta = {"state": json.dumps(state), "g_files": json.dumps(files)}
        atomic_save_safetensors(
            {k: v.cpu() for k, v in tensors.items()}, folder / "checkpoint.safetensors", meta
        )
        atomic_write_json(folder / "state.json", state)  # for people and scripts; a resume reads the metadata
        for old in folder.glob("G*.checkpoint*.npy"):
            if old.name not in files.values():
                old.unlink(missing_ok=True)
        self.publish()

    def read_state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """(the state, the sums and best F) of the saved checkpoint: the same in every rank's folder."""
        first = rank_folder(self.root, self.saved["world_size"], 0)
        with safe_open(str(first / "checkpoint.safetensors"), "pt") as f:
            tensors = {name: f.get_tensor(name) for name in f.keys() if name not in ("G", "G_best")}  # noqa: SIM118
            meta = f.metadata() or {}
        state = (
            json.loads(meta["state"]) if "state" in meta else json.loads((first / "state.json").read_text())
        )
        return state, tensors

    @staticmethod
    def _g_file(folder: Path, name: str) -> Path:
        """The .npy file of `name` that the folder's checkpoint names (older checkpoints: a fixed name)."""
        with safe_open(str(folder / "checkpoint.safetensors"), "pt") as f:
            files = json.loads((f.metadata() or {}).get("g_files", "{}"))
        return folder / files.get(name, f"{name}.checkpoint.npy")

    def read_columns(self, name: str, start: int, end: int, k: int) -> torch.Tensor:
        """Columns [start, end) (global token rows) of the saved G^T ("G" or "G_best") `[k, end - start]`, read
        from the folders of the ranks that held them."""
        out = torch.empty(k, end - start)
        offsets = np.cumsum([0, *self.saved["tokens"]]).tolist()
        for rank in range(self.saved["world_size"]):
            lo, hi = max(start, offsets[rank]), min(end, offsets[rank + 1])
            if lo >= hi:
                continue
            folder = rank_folder(self.root, self.saved["world_size"], rank)
            a, b = lo - offsets[rank], hi - offsets[rank]
            g_file = self._g_file(folder, name)
            if g_file.exists():
                saved = np.load(g_file, mmap_mode="r")
                shape = saved.shape
                columns = torch.from_numpy(np.array(saved[:, a:b])) if len(shape) == 2 else None
            else:
                with safe_open(str(folder / "checkpoint.safetensors"), "pt") as f:
                    shape = f.get_slice(name).get_shape()
                    columns = f.get_slice(name)[:, a:b] if len(shape) == 2 else None
            if columns is None or shape[0] != k:
                raise DecomposerError(
                    f"the checkpoint at {folder} holds G of shape {list(shape)}, this fit needs {k} rows (another "
                    "k, or an older checkpoint layout); delete the checkpoint folder to start afresh"
                )
            out[:, lo - start : hi - start] = columns
        return out

    def publish(self) -> None:
        """After every rank has written its checkpoint: point layout.json at this fit's folders and remove the
        folders of a former split."""
        distributed.barrier()
        if distributed.rank() != 0 or self.saved == self.layout:
            self.saved = self.layout
            return
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.root / LAYOUT, self.layout)
        old = self.saved["world_size"] if self.saved is not None else None
        if old is not None and old != self.layout["world_size"]:
            if old > 1:
                shutil.rmtree(self.root / f"ranks_{old}", ignore_errors=True)
            else:
                for path in [self.root / "state.json", self.root / "checkpoint.safetensors",
                             *self.root.glob("G*.npy")]:  # fmt: skip
                    path.unlink(missing_ok=True)
        self.saved = self.layout
