"""Data streaming for SNMF: activations as chunks, and the G matrix in memory or memory-mapped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from interp.core.checks import all_finite, check_activations
from interp.core.io import atomic_write
from interp.decompose.base import DecomposerError
from interp.store import ActivationStore


class _Data:
    """x = A^T `[n, d]` as chunks (row ranges), from a tensor or a store."""

    def __init__(self, data: ActivationStore | torch.Tensor, chunk_tokens: int, device: torch.device,
                 shards: range | None = None):  # fmt: skip
        self.device = device
        self.offset = 0  # global index of this process's first token (set by a distributed fit)
        self.shard_ids: list[int] = []
        if isinstance(data, ActivationStore):
            if data.n_tokens == 0:
                raise DecomposerError(f"the store at {data.path} is empty; capture some tokens first")
            self.store, self.neuron_major = data, []
            self.shard_ids = list(shards if shards is not None else range(data.n_shards))
            sizes = [data.manifest.shards[i].n_tokens for i in self.shard_ids]
            self.d = data.d
        else:
            check_activations(data, error=DecomposerError)
            self.store = None
            sizes = [min(chunk_tokens, data.shape[0] - i) for i in range(0, data.shape[0], chunk_tokens)]
            self.d = data.shape[1]
        offsets = np.cumsum([0, *sizes])
        self.ranges = list(zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True))
        self.n = int(offsets[-1])
        if self.store is None:  # neuron-major copies [d, n_chunk], made once: F^T A reads whole neuron rows
            # on the device: a GPU fit does not copy A over the bus every iteration (stores above
            # memory_limit_gb stream instead)
            self.neuron_major = [
                data[start:end].to(device).T.float().contiguous() for start, end in self.ranges
            ]

    def chunks(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        """(start, end, x `[end - start, d]`). In memory each is the transposed view of a neuron-major copy (for
        the sparse product F^T A); a store's shards come token-major (a transposing copy costs more than the
        dense product)."""
        for index, (start, end) in enumerate(self.ranges):
            if self.store is not None:
                x = self.store.load_shard(self.shard_ids[index])["acts"].to(self.device, torch.float32)
                if not all_finite(x):
                    raise DecomposerError(f"shard {index} of {self.store.path} holds NaN or inf")
            else:
                x = self.neuron_major[index].T
            yield start, end, x


class _GMatrix:
    """G >= 0 held feature-major, G^T `[k, n]`, in memory on the fit's device or in a memory-mapped .npy file;
    tokens are read and written by range (`g[start:end]` is `[k, end - start]`)."""

    def __init__(self, n: int, k: int, path: Path | None, device: torch.device):
        self.path, self._memmap = path, None
        if path is None:
            self.data = torch.zeros(k, n, device=device)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._memmap = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(k, n))
            self.data = torch.from_numpy(self._memmap)

    def __getitem__(self, tokens: slice) -> torch.Tensor:
        return self.data[:, tokens]

    def __setitem__(self, tokens: slice, value: torch.Tensor) -> None:
        self.data[:, tokens] = value.to(self.data.device, torch.float32)

    @property
    def codes(self) -> torch.Tensor:
        """G `[n, k]` (a view)."""
        return self.data.T

    def snapshot(self, target: Path) -> None:
        """Write G to `target` (.npy) atomically: an on-disk checkpoint that later iterations do not touch."""
        atomic_write(target, lambda f: np.save(f, self.data.cpu().numpy()))
