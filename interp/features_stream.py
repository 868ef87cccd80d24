"""The two streaming passes of the feature index, as batched tensor code (no loop over tokens or features).

Batches hold whole contexts, so the window of tokens around any example lies inside its batch and its
per-token activations are read from the batch's codes right away.

Pass 1 (`TopPass`): per feature, the running top-m examples (merged by one torch.topk over [running m + batch's
m]), their windows of tokens and activations, and a log-spaced histogram of positive codes (for quantiles).
Pass 2 (`BandPass`): with each feature's max and firing threshold known, exact firing counts and sums, a linear
histogram of firing activations in (threshold, max], and `s` random samples per activation quantile band
(random keys, kept by the same top-k merge).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from interp.store import ActivationStore

LOG_LO, LOG_HI, LOG_BINS = -12.0, 12.0, 960  # log10 range and bins of the pass-1 histogram (~6% per bin)


@dataclass
class Batch:
    """Whole contexts of a store: acts `[B, d]`, token_ids, context_ids, positions `[B]`, first store row."""

    start: int
    acts: torch.Tensor
    token_ids: torch.Tensor
    context_ids: torch.Tensor
    positions: torch.Tensor


def context_batches(
    store: ActivationStore, batch_tokens: int, max_tokens: int | None = None
) -> Iterator[Batch]:
    """Batches of about `batch_tokens` rows, cut at context boundaries, in store order (shards hold whole contexts).

    With `max_tokens`, stops after the first batch that reaches it (whole contexts, so it can overshoot a little).
    """
    row = 0
    for index in range(store.n_shards):
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


@dataclass
class Examples:
    """m examples per feature: sort keys, values, store rows (-1: none), windows of tokens and activations.

    keys/values/rows/context_ids/positions `[k, m]`; tokens `[k, m, W]` (-1 outside the context);
    acts `[k, m, W]` (NaN outside the context).
    """

    keys: torch.Tensor
    values: torch.Tensor
    rows: torch.Tensor
    context_ids: torch.Tensor
    positions: torch.Tensor
    tokens: torch.Tensor
    acts: torch.Tensor

    @classmethod
    def empty(cls, k: int, m: int, width: int, device: torch.device) -> Examples:
        full = lambda fill, dtype, *shape: torch.full((k, m, *shape), fill, dtype=dtype, device=device)  # noqa: E731
        return cls(full(-math.inf, torch.float32), full(0.0, torch.float32), full(-1, torch.long),
                   full(-1, torch.long), full(-1, torch.long), full(-1, torch.long, width),
                   full(math.nan, torch.float32, width))  # fmt: skip

    def merge(self, other: Examples) -> Examples:
        """Keep the m of highest key among self's and other's, per feature."""
        m = self.keys.shape[1]
        keys = torch.cat([self.keys, other.keys], dim=1)
        best = keys.topk(m, dim=1).indices  # [k, m]

        def pick(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            both = torch.cat([a, b], dim=1)
            index = best.view(*best.shape, *([1] * (both.ndim - 2))).expand(-1, -1, *both.shape[2:])
            return both.gather(1, index)

        return Examples(*(pick(getattr(self, f), getattr(other, f)) for f in self.__dataclass_fields__))


def gather_examples(batch: Batch, codes: torch.Tensor, keys: torch.Tensor, rows: torch.Tensor,
                    window: int) -> Examples:  # fmt: skip
    """Examples of batch-local `rows [k, m]` (keys `[k, m]`, -inf: none) with windows read from `codes [B, k]`."""
    k, m = rows.shape
    n = codes.shape[0]
    device = codes.device
    valid = torch.isfinite(keys)
    safe = rows.clamp(0, n - 1)
    ctx = batch.context_ids.to(device)
    offsets = torch.arange(-window, window + 1, device=device)
    win = safe[..., None] + offsets  # [k, m, W]
    inside = (win >= 0) & (win < n)
    win_safe = win.clamp(0, n - 1)
    inside &= (ctx[win_safe] == ctx[safe][..., None]) & valid[..., None]
    feature = torch.arange(k, device=device)[:, None, None].expand_as(win_safe)
    acts = codes[win_safe, feature].float().masked_fill(~inside, math.nan)
    tokens = batch.token_ids.to(device)[win_safe].masked_fill(~inside, -1)
    values = codes[safe, torch.arange(k, device=device)[:, None]].float()
    return Examples(
        keys=keys,
        values=values.masked_fill(~valid, 0.0),
        rows=(safe + batch.start).masked_fill(~valid, -1),
        context_ids=ctx[safe].masked_fill(~valid, -1),
        positions=batch.positions.to(device)[safe].masked_fill(~valid, -1),
        tokens=tokens,
        acts=acts,
    )


def top_rows(scores: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The m highest `scores [B, k]` per feature: (keys `[k, m]`, batch rows `[k, m]`); -inf pads when B < m."""
    take = min(m, scores.shape[0])
    top = scores.T.topk(take, dim=1)
    keys, rows = top.values, top.indices
    if take < m:
        pad = m - take
        keys = torch.cat([keys, keys.new_full((keys.shape[0], pad), -math.inf)], dim=1)
        rows = torch.cat([rows, rows.new_zeros((rows.shape[0], pad))], dim=1)
    return keys, rows


def binned_counts(bins: torch.Tensor, keep: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Counts `[k * n_bins]` of `bins [B, k]` (values in [0, n_bins)) where `keep [B, k]`, per feature."""
    k = bins.shape[1]
    flat = torch.arange(k, device=bins.device) * n_bins + bins
    flat = flat.masked_fill(~keep, k * n_bins)  # an overflow bucket for what is not kept
    return torch.bincount(flat.flatten(), minlength=k * n_bins + 1)[: k * n_bins]


def log_bin(values: torch.Tensor) -> torch.Tensor:
    """Bin of positive values in the pass-1 log histogram (clamped to its range)."""
    scaled = (values.log10() - LOG_LO) / (LOG_HI - LOG_LO) * LOG_BINS
    return scaled.floor().clamp(0, LOG_BINS - 1).long()


def log_bin_upper_edge(bins: torch.Tensor) -> torch.Tensor:
    return 10 ** (LOG_LO + (bins.float() + 1) / LOG_BINS * (LOG_HI - LOG_LO))


class TopPass:
    """Pass 1: top-m examples with windows, log histogram of positive codes, token count, mean input norm."""

    def __init__(self, k: int, m: int, window: int, device: torch.device):
        self.top = Examples.empty(k, m, 2 * window + 1, device)
        self.log_hist = torch.zeros(k * LOG_BINS, dtype=torch.long, device=device)
        self.window, self.m, self.k = window, m, k
        self.n_tokens, self.norm_sum = 0, 0.0

    def update(self, batch: Batch, x: torch.Tensor, codes: torch.Tensor) -> None:
        keys, rows = top_rows(codes, self.m)
        self.top = self.top.merge(gather_examples(batch, codes, keys, rows, self.window))
        self.log_hist += binned_counts(log_bin(codes.clamp_min(1e-30)), codes > 0, LOG_BINS)
        self.n_tokens += codes.shape[0]
        self.norm_sum += float(x.norm(dim=1).sum())

    def quantile_edges(self, threshold: torch.Tensor, max_value: torch.Tensor,
                       quantiles: tuple[float, ...]) -> torch.Tensor:  # fmt: skip
        """Band edges `[k, len(quantiles) + 1]` of each feature's firing activations (> threshold).

        Inner edges are the given quantiles, read from the log histogram (upper edge of the bin, ~6% resolution);
        the outer edges are the threshold and the max.
        """
        hist = self.log_hist.view(self.k, LOG_BINS).clone()
        bin_index = torch.arange(LOG_BINS, device=hist.device)
        hist[bin_index[None, :] < log_bin(threshold.clamp_min(1e-30))[:, None]] = 0  # only firing values
        cum = hist.cumsum(1).float()
        total = cum[:, -1:].clamp_min(1)
        targets = torch.tensor(quantiles[1:], device=hist.device, dtype=torch.float32)[None, :] * total
        inner = log_bin_upper_edge(
            torch.searchsorted(cum.contiguous(), targets.contiguous()).clamp(max=LOG_BINS - 1)
        )
        inner = torch.minimum(torch.maximum(inner, threshold[:, None]), max_value[:, None])
        return torch.cat([threshold[:, None], inner, max_value[:, None]], dim=1)


class BandPass:
    """Pass 2: firing counts and sums, linear histogram in (threshold, max], `s` random samples per band."""

    def __init__(self, threshold: torch.Tensor, max_value: torch.Tensor, edges: torch.Tensor, n_bins: int,
                 samples: int, window: int, seed: int):  # fmt: skip
        k, device = threshold.shape[0], threshold.device
        self.threshold, self.max_value, self.edges = threshold, max_value, edges
        self.n_bands = edges.shape[1] - 1
        self.n_bins, self.samples, self.window, self.k = n_bins, samples, window, k
        self.counts = torch.zeros(k, dtype=torch.long, device=device)
        self.sums = torch.zeros(k, dtype=torch.float64, device=device)
        self.hist = torch.zeros(k * n_bins, dtype=torch.long, device=device)
        width = 2 * window + 1
        self.bands = [Examples.empty(k, samples, width, device) for _ in range(self.n_bands)]
        self.gen = torch.Generator(device=device).manual_seed(seed)

    def update(self, batch: Batch, codes: torch.Tensor) -> None:
        fires = codes > self.threshold
        self.counts += fires.sum(0)
        self.sums += (codes * fires).sum(0, dtype=torch.float64)
        scale = self.n_bins / (self.max_value - self.threshold).clamp_min(1e-12)
        bins = ((codes - self.threshold) * scale).floor().clamp(0, self.n_bins - 1).long()
        self.hist += binned_counts(bins, fires, self.n_bins)
        # band of each code: how many inner edges it reaches (the top band includes the max)
        band = (codes[..., None] >= self.edges[None, :, 1:-1]).sum(-1)  # [B, k]
        keys = torch.rand(codes.shape, generator=self.gen, device=codes.device)
        for b in range(self.n_bands):  # a loop over the few bands
            scored = keys.masked_fill(~(fires & (band == b)), -math.inf)
            top_keys, top_rows_b = top_rows(scored, self.samples)
            self.bands[b] = self.bands[b].merge(
                gather_examples(batch, codes, top_keys, top_rows_b, self.window)
            )

    def band_tensors(self) -> dict[str, torch.Tensor]:
        """Band examples stacked `[k, n_bands, s(, W)]`."""
        fields = ("values", "rows", "context_ids", "positions", "tokens", "acts")
        return {f: torch.stack([getattr(b, f) for b in self.bands], dim=1) for f in fields}
