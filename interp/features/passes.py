"""The two streaming passes of the feature index, as batched tensor code (no loop over tokens or features).

Batches hold whole contexts, so the window of tokens around any example lies inside its batch and its
per-token activations are read from the batch's codes right away.

Pass 1 (`TopPass`): per feature, the running top-m examples (merged by one torch.topk over [running m + batch's
m]), their windows of tokens and activations, and a log-spaced histogram of positive codes (for quantiles).
Pass 2 (`BandPass`): with each feature's max and firing threshold known, exact firing counts and sums, a linear
histogram of firing activations in (threshold, max], and `s` random samples per activation quantile band
(random keys, kept by the same top-k merge).

Under torch.distributed each rank runs both passes over a block of the store's shards; after each pass the counts
and histograms are summed over ranks and the example slots merged on rank 0 (`reduce`), which gives the index of
one process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from interp.core import distributed
from interp.store.batches import Batch

LOG_LO, LOG_HI, LOG_BINS = -12.0, 12.0, 960  # log10 range and bins of the pass-1 histogram (~6% per bin)


@dataclass
class Examples:
    """m example slots per row (a feature, or a feature and band): key, value, store row (-1: empty), context id,
    position `[r, m]`, and the window's tokens `[r, m, W]` (-1 outside the context) and activations (NaN there).

    Slots are unordered; `absorb` keeps the m highest keys and reads windows only for candidates that get in.
    """

    keys: torch.Tensor
    values: torch.Tensor
    rows: torch.Tensor
    context_ids: torch.Tensor
    positions: torch.Tensor
    tokens: torch.Tensor
    acts: torch.Tensor

    @classmethod
    def empty(cls, r: int, m: int, width: int, device: torch.device) -> Examples:
        full = lambda fill, dtype, *shape: torch.full((r, m, *shape), fill, dtype=dtype, device=device)  # noqa: E731
        return cls(full(-math.inf, torch.float32), full(0.0, torch.float32), full(-1, torch.long),
                   full(-1, torch.long), full(-1, torch.long), full(-1, torch.long, width),
                   full(math.nan, torch.float32, width))  # fmt: skip

    def state(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], device: torch.device) -> Examples:
        return cls(**{name: state[name].to(device) for name in cls.__dataclass_fields__})

    def absorb(self, batch: Batch, codes: torch.Tensor, keys: torch.Tensor, rows: torch.Tensor,
               features: torch.Tensor, window: int) -> None:  # fmt: skip
        """Take candidates (keys, batch rows `[r, m]` of `features [r]`) whose key beats a slot's, in place."""
        m = self.keys.shape[1]
        best = torch.cat([self.keys, keys], dim=1).topk(m, dim=1).indices  # [r, m] into (slots, candidates)
        entering = best >= m
        kept = torch.zeros(best.shape[0], m + 1, dtype=torch.bool, device=best.device)
        kept.scatter_(1, best.masked_fill(entering, m), True)
        free_slots = torch.argsort(kept[:, :m].int(), dim=1, stable=True)  # freed slots first
        newcomers = torch.argsort((~entering).int(), dim=1, stable=True)  # entering candidates first
        pairs = torch.arange(m, device=best.device)[None, :] < entering.sum(1, keepdim=True)
        r, j = pairs.nonzero(as_tuple=True)
        if r.numel() == 0:
            return
        slot, cand = free_slots[r, j], best[r, newcomers[r, j]] - m
        found = gather_examples(batch, codes, keys[r, cand], rows[r, cand], window, features[r])
        for name in self.__dataclass_fields__:
            getattr(self, name)[r, slot] = getattr(found, name).to(getattr(self, name).dtype)


def merge_examples(a: Examples, b: Examples) -> Examples:
    """Per row, the m highest-key slots of `a` and `b` together (slots stay unordered)."""
    best = torch.cat([a.keys, b.keys], dim=1).topk(a.keys.shape[1], dim=1).indices  # [r, m]
    fields = {}
    for name in Examples.__dataclass_fields__:
        both = torch.cat([getattr(a, name), getattr(b, name)], dim=1)
        index = best.view(*best.shape, *[1] * (both.ndim - 2)).expand(-1, -1, *both.shape[2:])
        fields[name] = both.gather(1, index)
    return Examples(**fields)


def gather_to_rank0(examples: Examples) -> Examples:
    """Under torch.distributed: on rank 0 the merge of every rank's slots (received one rank at a time, so rank 0
    holds two sets at most); on other ranks their own, unchanged. A single process gets `examples` back."""
    import torch.distributed as dist

    if distributed.world_size() == 1:
        return examples
    names = list(Examples.__dataclass_fields__)
    for src in range(1, distributed.world_size()):  # a loop over ranks
        if distributed.rank() == 0:
            other = {name: torch.empty_like(getattr(examples, name)) for name in names}
            for name in names:
                dist.recv(other[name], src)
            examples = merge_examples(examples, Examples(**other))
        elif distributed.rank() == src:
            for name in names:
                dist.send(getattr(examples, name).contiguous(), 0)
    return examples


def gather_examples(batch: Batch, codes: torch.Tensor, keys: torch.Tensor, rows: torch.Tensor, window: int,
                    features: torch.Tensor) -> Examples:  # fmt: skip
    """Examples at batch-local `rows [...]` (keys `[...]`, -inf: none) of `features [...]`, with their windows
    `[..., W]` read from `codes [B, k]`."""
    n, k = codes.shape
    device = codes.device
    valid = torch.isfinite(keys)
    safe = rows.clamp(0, n - 1)
    ctx = batch.context_ids.to(device)
    win = safe[..., None] + torch.arange(-window, window + 1, device=device)  # [..., W]
    win_safe = win.clamp(0, n - 1)
    inside = (win == win_safe) & (ctx.take(win_safe) == ctx.take(safe)[..., None]) & valid[..., None]
    flat = codes.reshape(-1)
    acts = flat.take(win_safe * k + features[..., None]).float().masked_fill(~inside, math.nan)
    values = flat.take(safe * k + features).float()
    return Examples(
        keys=keys,
        values=values.masked_fill(~valid, 0.0),
        rows=(safe + batch.start).masked_fill(~valid, -1),
        context_ids=ctx.take(safe).masked_fill(~valid, -1),
        positions=batch.positions.to(device).take(safe).masked_fill(~valid, -1),
        tokens=batch.token_ids.to(device).take(win_safe).masked_fill(~inside, -1),
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


def prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + name: value for name, value in tensors.items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name[len(prefix) :]: value for name, value in tensors.items() if name.startswith(prefix)}


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
        self.features = torch.arange(k, device=device)
        self.n_tokens, self.norm_sum = 0, 0.0

    def update(self, batch: Batch, x: torch.Tensor, codes: torch.Tensor) -> None:
        keys, rows = top_rows(codes, self.m)
        self.top.absorb(batch, codes, keys, rows, self.features, self.window)
        rows, features = (codes > 0).nonzero(as_tuple=True)
        bins = log_bin(codes[rows, features])
        self.log_hist += torch.bincount(features * LOG_BINS + bins, minlength=self.k * LOG_BINS)
        self.n_tokens += codes.shape[0]
        self.norm_sum += float(x.norm(dim=1).sum())

    def state(self) -> dict[str, torch.Tensor]:
        """What a resumed pass starts from (for a checkpoint)."""
        totals = torch.tensor([self.n_tokens, self.norm_sum], dtype=torch.float64)
        return {**prefixed("top.", self.top.state()), "log_hist": self.log_hist, "totals": totals}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        device = self.log_hist.device
        self.top = Examples.from_state(unprefixed("top.", state), device)
        self.log_hist = state["log_hist"].to(device)
        self.n_tokens, self.norm_sum = int(state["totals"][0]), float(state["totals"][1])

    def reduce(self) -> None:
        """Under torch.distributed: counts, norms and histogram summed over ranks on every rank; top examples merged
        on rank 0. A no-op in a single process."""
        if distributed.world_size() == 1:
            return
        totals = torch.tensor(
            [self.n_tokens, self.norm_sum], dtype=torch.float64, device=self.log_hist.device
        )
        distributed.all_reduce_sum(totals)
        self.n_tokens, self.norm_sum = int(totals[0]), float(totals[1])
        distributed.all_reduce_sum(self.log_hist)
        self.top = gather_to_rank0(self.top)

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
    """Pass 2: firing counts and sums, linear histogram in (threshold, max], `s` random samples per band.

    Works on the list of firing entries only: each gets a band and a random key, and one sort by (feature, band,
    key) gives every (feature, band) group its `s` highest keys (a uniform sample without replacement).
    """

    def __init__(self, threshold: torch.Tensor, max_value: torch.Tensor, edges: torch.Tensor, n_bins: int,
                 samples: int, window: int, seed: int):  # fmt: skip
        k, device = threshold.shape[0], threshold.device
        self.threshold, self.max_value, self.edges = threshold, max_value, edges
        self.n_bands = edges.shape[1] - 1
        self.n_bins, self.samples, self.window, self.k = n_bins, samples, window, k
        self.scale = n_bins / (max_value - threshold).clamp_min(1e-12)
        self.counts = torch.zeros(k, dtype=torch.long, device=device)
        self.sums = torch.zeros(k, dtype=torch.float64, device=device)
        self.hist = torch.zeros(k * n_bins, dtype=torch.long, device=device)
        self.bands = Examples.empty(k * self.n_bands, samples, 2 * window + 1, device)  # row = feature, band
        self.group_feature = torch.arange(k, device=device).repeat_interleave(self.n_bands)
        self.gen, self.seed = torch.Generator(device=device), seed

    def update(self, batch: Batch, codes: torch.Tensor) -> None:
        rows, features = (codes > self.threshold).nonzero(as_tuple=True)  # firing entries
        values = codes[rows, features]
        if values.numel() == 0:
            return
        k, s, n_groups = self.k, self.samples, self.k * self.n_bands
        self.counts += torch.bincount(features, minlength=k)
        self.sums += torch.bincount(features, weights=values.double(), minlength=k)
        bins = ((values - self.threshold[features]) * self.scale[features]).floor().clamp(0, self.n_bins - 1)
        self.hist += torch.bincount(features * self.n_bins + bins.long(), minlength=k * self.n_bins)
        band = (values[:, None] >= self.edges[features, 1:-1]).sum(1)  # the top band includes the max
        group = features * self.n_bands + band
        self.gen.manual_seed(
            hash((self.seed, batch.start)) & (2**62 - 1)
        )  # keys depend on the batch, not the rank
        keys = torch.rand(values.shape, generator=self.gen, device=values.device, dtype=torch.float64)
        order = torch.argsort(group.double() + keys)  # by group, then key, ascending
        sizes = torch.bincount(group, minlength=n_groups)
        last = sizes.cumsum(0)[:, None] - 1 - torch.arange(s, device=values.device)  # [groups, s]: top s keys
        present = torch.arange(s, device=values.device)[None, :] < sizes[:, None]
        picked = order[last.clamp_min(0)]
        cand_keys = keys.float()[picked].masked_fill(~present, -math.inf)
        self.bands.absorb(batch, codes, cand_keys, rows[picked], self.group_feature, self.window)

    def state(self) -> dict[str, torch.Tensor]:
        """What a resumed pass starts from (for a checkpoint)."""
        return {
            **prefixed("bands.", self.bands.state()),
            "counts": self.counts,
            "sums": self.sums,
            "hist": self.hist,
        }

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        device = self.counts.device
        self.bands = Examples.from_state(unprefixed("bands.", state), device)
        self.counts, self.sums, self.hist = (state[name].to(device) for name in ("counts", "sums", "hist"))

    def reduce(self) -> None:
        """Under torch.distributed: counts, sums and histogram summed over ranks on every rank; band samples merged on
        rank 0 (the same keys as one process would draw, so the same samples). A no-op in a single process."""
        if distributed.world_size() == 1:
            return
        for total in (self.counts, self.sums, self.hist):
            distributed.all_reduce_sum(total)
        self.bands = gather_to_rank0(self.bands)

    def band_tensors(self) -> dict[str, torch.Tensor]:
        """Band examples `[k, n_bands, s(, W)]`."""
        fields = ("values", "rows", "context_ids", "positions", "tokens", "acts")
        return {f: getattr(self.bands, f).view(self.k, self.n_bands, *getattr(self.bands, f).shape[1:])
                for f in fields}  # fmt: skip
