"""ActivationStore: one site's activations on disk, sharded, with the tokens they came from.

Layout of a store folder (one per site)::

    <run>/<site>/manifest.json                 # StoreManifest, rewritten atomically after each shard
    <run>/<site>/shard_00000.safetensors        # acts [n, d], token_ids [n], context_ids [n], positions [n]

A shard is written to a temporary name and renamed, and only shards listed in the manifest are ever read,
so a killed writer leaves a store that is valid up to its last committed shard.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from interp.core.fingerprint import check_same, json_digest, make_fingerprint, tensor_digest
from interp.core.io import atomic_save_safetensors, atomic_write_json
from interp.store.manifest import CONTEXTS_FILE, DTYPES, MANIFEST, ShardInfo, StoreError, StoreManifest

CAPTURE_SETTINGS = ("model", "site", "d", "dtype", "corpus_fingerprint", "context_len", "drop_bos")
"""The manifest fields that make a store's rows what they are: a resumed capture must match them all."""


def capture_settings(manifest: StoreManifest) -> dict:
    """The fingerprint of a capture into a store: its settings (`CAPTURE_SETTINGS`) and its data, the packing."""
    settings = {key: getattr(manifest, key) for key in CAPTURE_SETTINGS}
    return make_fingerprint(settings, {"corpus": settings.pop("corpus_fingerprint")})


class ActivationStore:
    """Activations of one site: `acts [n_tokens, d]` in shards, plus token ids, context ids and positions."""

    def __init__(self, path: str | Path, manifest: StoreManifest):
        self.path = Path(path)
        self.manifest = manifest
        self._maps: dict[str, np.ndarray] = {}  # shard file -> memory map of its acts (read_rows)

    # ----------------------------------------------------------------- open / create
    @classmethod
    def open(cls, path: str | Path) -> ActivationStore:
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.exists():
            hint = ""
            if path.exists():
                subs = sorted(p.name for p in path.iterdir() if (p / MANIFEST).exists())
                if subs:
                    hint = f"; this folder holds the stores of sites {', '.join(subs)}: pass one of them"
            raise StoreError(f"no activation store at {path} (no {MANIFEST}){hint}")
        try:
            manifest = StoreManifest.from_json(json.loads(manifest_path.read_text()))
        except (json.JSONDecodeError, TypeError, KeyError) as e:
            raise StoreError(
                f"corrupt manifest {manifest_path}: {e}; delete the folder and capture again"
            ) from e
        return cls(path, manifest)

    @classmethod
    def create(cls, path: str | Path, manifest: StoreManifest) -> ActivationStore:
        """Open the store at `path` for appending, or start one. An existing store must match `manifest`."""
        path = Path(path)
        if (path / MANIFEST).exists():
            store = cls.open(path)
            store._check_matches(manifest)
            return store
        path.mkdir(parents=True, exist_ok=True)
        store = cls(path, manifest)
        store._write_manifest()
        return store

    def _check_matches(self, wanted: StoreManifest) -> None:
        """A capture appends to this store only with the settings it was started with (its fingerprint)."""
        check_same(capture_settings(self.manifest), capture_settings(wanted), f"the store at {self.path}",
                   "capture into another --out folder, or delete this one", StoreError)  # fmt: skip

    def _write_manifest(self) -> None:
        atomic_write_json(self.path / MANIFEST, self.manifest.to_json())

    # ----------------------------------------------------------------- properties
    @property
    def d(self) -> int:
        return self.manifest.d

    @property
    def site(self) -> str:
        return self.manifest.site

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.manifest.dtype]

    @property
    def n_tokens(self) -> int:
        return self.manifest.n_tokens

    @property
    def n_shards(self) -> int:
        return len(self.manifest.shards)

    @property
    def contexts_path(self) -> Path:
        """The run's `contexts.safetensors` (the packed contexts the rows point into), beside the site folders."""
        return self.path.parent / CONTEXTS_FILE

    def __len__(self) -> int:
        return self.n_tokens

    def fingerprint(self) -> dict:
        """What a job that reads this store depends on: its path, its rows, a hash of its manifest (the shards'
        files and sizes, model, site, packing)."""
        manifest = {k: v for k, v in self.manifest.to_json().items() if k != "interp_version"}
        return {
            "store": str(self.path.resolve()),
            "n_tokens": self.n_tokens,
            "manifest": json_digest(manifest),
        }

    def __repr__(self) -> str:
        m = self.manifest
        return f"ActivationStore({self.path}, site={m.site}, d={m.d}, n_tokens={m.n_tokens}, shards={len(m.shards)})"

    # ----------------------------------------------------------------- writing
    def append(
        self,
        acts: torch.Tensor,
        token_ids: torch.Tensor,
        context_ids: torch.Tensor,
        positions: torch.Tensor,
        context_end: int,
        context_start: int | None = None,
    ) -> None:
        """Commit one shard: `acts [n, d]` and per-token ids `[n]`, covering contexts [context_start, context_end).

        `context_start` defaults to where the store ends.
        """
        n = acts.shape[0]
        if acts.ndim != 2 or acts.shape[1] != self.d:
            raise StoreError(f"acts must be [n, {self.d}] for site {self.site}, got {list(acts.shape)}")
        if not (token_ids.shape[0] == context_ids.shape[0] == positions.shape[0] == n):
            raise StoreError("token_ids, context_ids and positions must have one entry per activation row")
        start = self.manifest.n_contexts if context_start is None else context_start
        index = len(self.manifest.shards)
        name = f"shard_{index:05d}.safetensors"
        n_bytes = atomic_save_safetensors(
            {
                "acts": acts.to(self.dtype).cpu(),
                "token_ids": token_ids.to(torch.int32).cpu(),
                "context_ids": context_ids.to(torch.int64).cpu(),
                "positions": positions.to(torch.int32).cpu(),
            },
            self.path / name,
        )
        self.manifest.shards.append(ShardInfo(name, n, n_bytes, start, context_end))
        self._write_manifest()

    def truncate(self, n_contexts: int) -> None:
        """Forget shards past `n_contexts` (used to line up the sites of an interrupted capture)."""
        keep = [s for s in self.manifest.shards if s.context_end <= n_contexts]
        if len(keep) != len(self.manifest.shards):
            self.manifest.shards = keep
            self._write_manifest()

    # ----------------------------------------------------------------- reading
    def load_shard(self, index: int) -> dict[str, torch.Tensor]:
        """One shard as tensors: acts [n, d], token_ids [n], context_ids [n], positions [n]."""
        info = self.manifest.shards[index]
        file = self.path / info.file
        if not file.exists():
            raise StoreError(
                f"shard {file} is listed in the manifest but missing; capture again into a new folder"
            )
        size = file.stat().st_size
        if size != info.n_bytes:
            raise StoreError(
                f"shard {file} has {size} bytes, the manifest says {info.n_bytes}: it is truncated or corrupt; "
                f"delete the folder and capture again"
            )
        try:
            tensors = load_file(str(file))
        except (SafetensorError, OSError, ValueError) as e:
            raise StoreError(f"shard {file} cannot be read ({e}); delete the folder and capture again") from e
        if tensors["acts"].shape != (info.n_tokens, self.d):
            raise StoreError(
                f"shard {file} holds acts {list(tensors['acts'].shape)}, expected [{info.n_tokens}, {self.d}]"
            )
        return tensors

    def read_rows(self, rows: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Activations `[m, d]` of store rows `rows [m]` (numbers in store order, any order, repeats allowed).

        Shard files are memory-mapped and only the rows asked for are read, so processes that ask for disjoint
        rows read disjoint parts of the store.
        """
        rows = rows.long().cpu()
        if rows.numel() and not 0 <= int(rows.min()) <= int(rows.max()) < self.n_tokens:
            raise StoreError(f"rows must lie in [0, {self.n_tokens}) for the store at {self.path}")
        starts = torch.tensor([0] + [s.n_tokens for s in self.manifest.shards]).cumsum(0)
        shard_of = torch.searchsorted(starts, rows, right=True) - 1
        out = torch.empty(rows.shape[0], self.d, dtype=dtype)
        for index in torch.unique(shard_of).tolist():  # a loop over the shards these rows lie in
            where = (shard_of == index).nonzero()[:, 0]
            local = (rows[where] - starts[index]).numpy()
            order = np.argsort(local, kind="stable")  # read each file front to back
            block = torch.from_numpy(np.ascontiguousarray(self._memmap(index)[local[order]]))
            out[where[torch.from_numpy(order)]] = block.view(self.dtype).to(dtype)
        return out

    def _memmap(self, index: int) -> np.ndarray:
        """Shard `index`'s acts `[n, d]` as a read-only memory map (bfloat16 as its raw uint16 bits)."""
        info = self.manifest.shards[index]
        if info.file not in self._maps:
            file = self.path / info.file
            if not file.exists() or file.stat().st_size != info.n_bytes:
                self.load_shard(index)  # raises the error that says what is wrong with the file
            with open(file, "rb") as f:
                header_len = int.from_bytes(f.read(8), "little")
                meta = json.loads(f.read(header_len))["acts"]
            begin = 8 + header_len + meta["data_offsets"][0]
            np_dtype = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}[meta["dtype"]]
            self._maps[info.file] = np.memmap(
                file, dtype=np_dtype, mode="r", offset=begin, shape=tuple(meta["shape"])
            )
        return self._maps[info.file]

    def iter_shards(self, dtype: torch.dtype | None = torch.float32) -> Iterator[torch.Tensor]:
        """Yield each shard's acts `[n_shard, d]` in order (None keeps the stored dtype)."""
        for i in range(self.n_shards):
            acts = self.load_shard(i)["acts"]
            yield acts if dtype is None else acts.to(dtype)

    def load_all(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """All activations in memory, `[n_tokens, d]`. For stores larger than RAM use `batches`."""
        if self.n_tokens == 0:
            raise StoreError(f"the store at {self.path} is empty; capture some tokens first")
        return torch.cat(list(self.iter_shards(dtype)))

    def tokens(self) -> dict[str, torch.Tensor]:
        """token_ids, context_ids, positions of every stored row, `[n_tokens]` each, in store order."""
        parts = [self.load_shard(i) for i in range(self.n_shards)]
        return {k: torch.cat([p[k] for p in parts]) for k in ("token_ids", "context_ids", "positions")}

    def batches(
        self,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        buffer_shards: int = 4,
        dtype: torch.dtype = torch.float32,
        drop_last: bool = False,
    ) -> Iterator[torch.Tensor]:
        """Minibatches `[batch_size, d]` of activations, read shard by shard.

        With `shuffle`, shards are visited in a random order and up to `buffer_shards` of them are mixed in
        memory at a time, so memory stays bounded by `buffer_shards` shards whatever the store's size.
        """
        if self.n_tokens == 0:
            raise StoreError(f"the store at {self.path} is empty; capture some tokens first")
        gen = torch.Generator().manual_seed(seed)
        order = (
            torch.randperm(self.n_shards, generator=gen).tolist() if shuffle else list(range(self.n_shards))
        )
        leftover = torch.empty(0, self.d, dtype=dtype)
        for group_start in range(0, len(order), buffer_shards):
            group = order[group_start : group_start + buffer_shards]
            buffer = torch.cat([leftover] + [self.load_shard(i)["acts"].to(dtype) for i in group])
            if shuffle:
                buffer = buffer[torch.randperm(buffer.shape[0], generator=gen)]
            n_full = buffer.shape[0] // batch_size * batch_size
            for start in range(0, n_full, batch_size):
                yield buffer[start : start + batch_size]
            leftover = buffer[n_full:]
        if leftover.shape[0] and not drop_last:
            yield leftover


def data_fingerprint(data: ActivationStore | torch.Tensor) -> dict:
    """The data part of a checkpoint's fingerprint: a store's `fingerprint()`, or a tensor's checksum."""
    if isinstance(data, ActivationStore):
        return data.fingerprint()
    return {"tensor": tensor_digest(data)}


def as_tensor(data: ActivationStore | torch.Tensor) -> torch.Tensor:
    """Activations `[n, d]` from a store (loaded whole) or a tensor (passed through)."""
    return data.load_all() if isinstance(data, ActivationStore) else data
