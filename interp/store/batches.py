"""Reading a store in order: batches of whole contexts with their token ids, context ids and positions."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from interp.store.activations import ActivationStore


@dataclass
class Batch:
    """Whole contexts of a store: acts `[B, d]`, token_ids, context_ids, positions `[B]`, first store row."""

    start: int
    acts: torch.Tensor
    token_ids: torch.Tensor
    context_ids: torch.Tensor
    positions: torch.Tensor


def context_batches(
    store: ActivationStore, batch_tokens: int, max_tokens: int | None = None, shards: range | None = None
) -> Iterator[Batch]:
    """Batches of about `batch_tokens` rows, cut at context boundaries, in store order (shards hold whole contexts).

    With `max_tokens`, stops after the first batch that reaches it (whole contexts, so it can overshoot a little).
    `shards` restricts the batches to a block of shards (a rank's part): the same batches, with the same store rows,
    as the whole store gives for those shards.
    """
    shards = range(store.n_shards) if shards is None else shards
    row = sum(s.n_tokens for s in store.manifest.shards[: shards.start])
    for index in shards:
        if max_tokens is not None and row >= max_tokens:
            return
        shard = store.load_shard(index)
        ctx = shard["context_ids"]
        n = ctx.shape[0]
        starts = torch.cat([torch.zeros(1, dtype=torch.long), (ctx[1:] != ctx[:-1]).nonzero()[:, 0] + 1])
        starts = torch.cat([starts, torch.tensor([n])])
        begin = 0
        while begin < n:  # a loop over batches
            after = int(torch.searchsorted(starts, begin, right=True))  # first context start after `begin`
            within = (
                int(torch.searchsorted(starts, begin + batch_tokens, right=True)) - 1
            )  # last within budget
            end = int(starts[max(after, within)])  # whole contexts, at least one
            yield Batch(
                row + begin,
                shard["acts"][begin:end],
                shard["token_ids"][begin:end].long(),
                ctx[begin:end].long(),
                shard["positions"][begin:end].long(),
            )
            begin = end
            if max_tokens is not None and row + begin >= max_tokens:
                return
        row += n
