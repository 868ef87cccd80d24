"""Training without a store: activations streamed from a model, through a shuffle buffer, into the trainer.

`LiveBatches` has the interface the trainer uses of `GlobalBatches` (`batch(step)`, `rows(step)`, `sample(n)`,
`batch_size`), so `train()` consumes it unchanged. The contexts are cut into buffers of `buffer_contexts`
contexts; buffer c holds the rows (kept tokens, in capture order) of its contexts and is read in the order
randperm(rows of c, seed + c). The training sequence is those permuted buffers one after another (one pass: no
epochs), so global row p, and therefore batch `step`, is a function of (seed, position) only.

Resume: the trainer's checkpoint records the step (rows consumed = step * batch_size); the buffer holding that
row is rebuilt by running the model again over its contexts (nothing but weights is saved). The fingerprint
names the model, corpus packing, site, n_tokens, buffer and seed, so a resume with other settings is refused.

With one buffer covering every context, the order is randperm(n, seed): exactly the order `GlobalBatches` gives a
tensor of the same rows (a store captured from the same contexts), so live and store-based training agree.
"""

from __future__ import annotations

import torch

from interp.capture.run import keep_mask
from interp.core import distributed
from interp.corpus.contexts import Contexts
from interp.decompose.base import DecomposerError
from interp.models.hooks import backend_runner
from interp.models.loading import LoadedModel
from interp.models.sites import parse_site


def contexts_for_tokens(contexts: Contexts, n_tokens: int, drop_bos: bool = True) -> int:
    """The number of leading contexts whose kept tokens reach `n_tokens` (all of them when they do not)."""
    kept = keep_mask(contexts, 0, contexts.n_contexts, drop_bos).sum(1).cumsum(0)
    return min(contexts.n_contexts, int(torch.searchsorted(kept, n_tokens)) + 1)


class LiveBatches:
    """This rank's part `[batch_size / world, d]` of each global batch, computed from the model on demand."""

    def __init__(self, model: LoadedModel, contexts: Contexts, site: str, n_tokens: int, batch_size: int,
                 seed: int, buffer_contexts: int = 256, forward_batch: int = 8, backend: str = "torch",
                 drop_bos: bool = True):  # fmt: skip
        self.model, self.site = model, parse_site(site, model.info.n_layers)
        self.batch_size, self.seed, self.drop_bos = batch_size, seed, drop_bos
        self.buffer_contexts, self.forward_batch = max(1, buffer_contexts), max(1, forward_batch)
        self.run = backend_runner(backend)
        self.rank, self.world = distributed.rank(), distributed.world_size()
        if batch_size % self.world:
            raise DecomposerError(f"batch_size={batch_size} must be a multiple of the {self.world} processes")
        self.per_rank = batch_size // self.world
        self.n_contexts = contexts_for_tokens(contexts, n_tokens, drop_bos)
        self.contexts = contexts
        per_context = keep_mask(contexts, 0, self.n_contexts, drop_bos).sum(1)
        self.buffer_sizes = torch.stack([c.sum() for c in per_context.split(self.buffer_contexts)])
        self.buffer_starts = torch.cat([torch.zeros(1, dtype=torch.long), self.buffer_sizes.cumsum(0)])
        self.n = int(self.buffer_starts[-1])
        self.d = self.site.width(model.info)
        self.description = {"model": model.info.name, "contexts": contexts.fingerprint, "site": self.site.name,
                            "n_tokens": n_tokens, "n_rows": self.n, "buffer_contexts": self.buffer_contexts,
                            "drop_bos": drop_bos, "live_seed": seed}  # fmt: skip
        self._cache: tuple[int, torch.Tensor, torch.Tensor] | None = (
            None  # (buffer, rows permuted, the order)
        )
        if self.n < batch_size:
            raise DecomposerError(f"batch_size={batch_size} is larger than the {self.n} live tokens; raise "
                                  "--n-tokens or lower --batch-size")  # fmt: skip

    def fingerprint(self) -> dict:
        """The data part of a checkpoint's fingerprint."""
        return {"live": self.description}

    def steps_available(self) -> int:
        return self.n // self.batch_size

    def _acts(self, begin: int, end: int) -> torch.Tensor:
        """Kept rows `[tokens, d]` of contexts [begin, end), in capture order (forward in batches)."""
        parts = []
        for start in range(begin, end, self.forward_batch):  # a loop over batches of contexts
            stop = min(start + self.forward_batch, end)
            length = int(self.contexts.lengths[start:stop].max())
            tokens = self.contexts.token_ids[start:stop, :length].to(self.model.device)
            with torch.no_grad():
                acts = self.run(self.model, tokens, [self.site])[self.site]
            mask = keep_mask(self.contexts, start, stop, self.drop_bos)[:, :length]
            parts.append(acts[mask.to(acts.device)].float().cpu())
        return torch.cat(parts)

    def _buffer(self, c: int) -> torch.Tensor:
        """Buffer c's rows, permuted by randperm(rows, seed + c) `[rows, d]` (cached while in use)."""
        if self._cache is None or self._cache[0] != c:
            begin = c * self.buffer_contexts
            acts = self._acts(begin, min(begin + self.buffer_contexts, self.n_contexts))
            order = torch.randperm(acts.shape[0], generator=torch.Generator().manual_seed(self.seed + c))
            self._cache = (c, acts[order], order)
        return self._cache[1]

    def rows(self, step: int) -> torch.Tensor:
        """Global positions `[per_rank]` of this rank's part of batch `step` in the live sequence."""
        begin = step * self.batch_size + self.rank * self.per_rank
        if (step + 1) * self.batch_size > self.n:
            raise DecomposerError(f"batch {step} needs {(step + 1) * self.batch_size} live tokens but "
                                  f"--n-tokens gives {self.n}; raise --n-tokens or lower --n-steps")  # fmt: skip
        return torch.arange(begin, begin + self.per_rank)

    def batch(self, step: int) -> torch.Tensor:
        """This rank's rows of global batch `step`, float32 `[per_rank, d]`."""
        positions = self.rows(step)
        lo, hi = int(positions[0]), int(positions[-1]) + 1
        first = int(torch.searchsorted(self.buffer_starts, lo, right=True)) - 1
        last = int(torch.searchsorted(self.buffer_starts, hi - 1, right=True)) - 1
        parts = []
        for c in range(first, last + 1):  # one buffer, or two when the batch straddles a boundary
            start = int(self.buffer_starts[c])
            parts.append(
                self._buffer(c)[max(lo, start) - start : min(hi, int(self.buffer_starts[c + 1])) - start]
            )
        return torch.cat(parts)

    def sample(self, n: int) -> torch.Tensor:
        """This rank's part of a fixed sample of about `n` rows of the first buffer (as `GlobalBatches.sample`
        draws from its rows), float32 `[~n / world, d]`."""
        first = int(self.buffer_sizes[0])
        permuted = self._buffer(0)  # cached: batch 0 reads the same buffer, so the model runs over it once
        rows = torch.empty_like(permuted)
        rows[self._cache[2]] = permuted  # capture order again
        if n < first:
            picks = torch.randint(first, (n,), generator=torch.Generator().manual_seed(12345)).sort().values
        else:
            picks, n = torch.arange(first), first
        begin, end = distributed.rank_range(n, self.rank, self.world)
        return rows[picks[begin:end]]
