"""The trainer's minibatches: one global order of rows, whatever the number of processes, and each rank's part.

Global batch `step` holds `batch_size` rows (epochs follow each other; an epoch's last incomplete batch is dropped):

- a tensor `[n, d]`: epoch e visits rows in the order randperm(n, seed + e);
- a store: epoch e visits shards in the order randperm(n_shards, seed + e), in groups of `group_shards` shards; the
  rows of a group are permuted (a generator seeded by seed, e and the group), and the groups follow each other.
  (Rows of the same few shards are mixed, as a shuffle buffer would, but only row numbers are held in memory.)

Under torch.distributed, rank r of W trains on rows [r B / W, (r + 1) B / W) of each global batch B, read from
memory-mapped shard files (`ActivationStore.read_rows`): ranks read disjoint rows, and W ranks with global batch B
see exactly the batches of one process with batch B. A checkpoint records only the step (global rows consumed =
step * B), so a run resumes with any world size.
"""

from __future__ import annotations

import torch

from interp.core import distributed
from interp.decompose.base import DecomposerError
from interp.store.activations import ActivationStore


class GlobalBatches:
    """This rank's part `[batch_size / world, d]` of each global minibatch; `batch(step)` is random access."""

    def __init__(self, data: ActivationStore | torch.Tensor, batch_size: int, seed: int,
                 rank: int | None = None, world: int | None = None, group_shards: int = 4):  # fmt: skip
        self.data, self.batch_size, self.seed, self.group_shards = data, batch_size, seed, group_shards
        self.rank = distributed.rank() if rank is None else rank
        self.world = distributed.world_size() if world is None else world
        if batch_size % self.world:
            raise DecomposerError(
                f"batch_size={batch_size} (the global batch) must be a multiple of the {self.world} processes; "
                f"use e.g. --batch-size {batch_size // self.world * self.world or self.world}"
            )
        self.per_rank = batch_size // self.world
        self.is_store = isinstance(data, ActivationStore)
        self.n = data.n_tokens if self.is_store else data.shape[0]
        self.batches_per_epoch = self.n // batch_size
        if self.batches_per_epoch == 0:
            raise DecomposerError(
                f"batch_size={batch_size} is larger than the {self.n} tokens available; lower --batch-size"
            )
        if self.is_store:
            self.shard_sizes = torch.tensor([s.n_tokens for s in data.manifest.shards])
            self.shard_starts = torch.cat([torch.zeros(1, dtype=torch.long), self.shard_sizes.cumsum(0)])
        self._epoch: tuple[int, object] | None = None  # (epoch, its order: a permutation or group layout)
        self._group: tuple[tuple[int, int], torch.Tensor] | None = None  # ((epoch, group), its permuted rows)

    def rows(self, step: int) -> torch.Tensor:
        """Store / tensor row numbers `[per_rank]` of this rank's part of global batch `step`."""
        epoch, j = divmod(step, self.batches_per_epoch)
        begin = j * self.batch_size + self.rank * self.per_rank
        return self._positions(epoch, begin, begin + self.per_rank)

    def batch(self, step: int) -> torch.Tensor:
        """This rank's rows of global batch `step`, float32 `[per_rank, d]`."""
        rows = self.rows(step)
        return self.data.read_rows(rows) if self.is_store else self.data[rows].float()

    def _positions(self, epoch: int, begin: int, end: int) -> torch.Tensor:
        """Row numbers at positions [begin, end) of epoch `epoch`'s sequence."""
        if not self.is_store:
            if self._epoch is None or self._epoch[0] != epoch:
                gen = torch.Generator().manual_seed(self.seed + epoch)
                self._epoch = (epoch, torch.randperm(self.n, generator=gen))
            return self._epoch[1][begin:end]
        if self._epoch is None or self._epoch[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed + epoch)
            shards = torch.randperm(len(self.shard_sizes), generator=gen)
            groups = shards.split(self.group_shards)
            sizes = torch.stack([self.shard_sizes[g].sum() for g in groups])
            self._epoch = (epoch, (groups, torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])))
        groups, group_starts = self._epoch[1]
        first = int(torch.searchsorted(group_starts, begin, right=True)) - 1
        last = int(torch.searchsorted(group_starts, end - 1, right=True)) - 1
        parts = []
        for g in range(first, last + 1):  # one group, or two when the batch straddles a boundary
            rows = self._group_rows(epoch, g, groups[g])
            lo, hi = max(begin, int(group_starts[g])), min(end, int(group_starts[g + 1]))
            parts.append(rows[lo - int(group_starts[g]) : hi - int(group_starts[g])])
        return torch.cat(parts)

    def _group_rows(self, epoch: int, g: int, shards: torch.Tensor) -> torch.Tensor:
        """The rows of the shards of group g, permuted (cached while the group is in use)."""
        if self._group is None or self._group[0] != (epoch, g):
            rows = torch.cat(
                [torch.arange(int(self.shard_starts[s]), int(self.shard_starts[s + 1])) for s in shards]
            )
            gen = torch.Generator().manual_seed(hash((self.seed, epoch, g)) & (2**62 - 1))
            self._group = ((epoch, g), rows[torch.randperm(rows.shape[0], generator=gen)])
        return self._group[1]

    def sample(self, n: int) -> torch.Tensor:
        """This rank's part of a fixed sample of about `n` rows (the same sample for every world size), float32."""
        if n < self.n:  # drawn with replacement: no permutation of a store of 10^8 rows
            rows = torch.randint(self.n, (n,), generator=torch.Generator().manual_seed(12345)).sort().values
        else:
            rows, n = torch.arange(self.n), self.n
        begin, end = distributed.rank_range(n, self.rank, self.world)
        rows = rows[begin:end]
        return self.data.read_rows(rows) if self.is_store else self.data[rows].float()
