"""Features compared by their directions: nearest features, matches between decomposers, neuron composition."""

from __future__ import annotations

import torch


# ----------------------------------------------------------------------------------------------- directions
def nearest_features(
    directions: torch.Tensor, n: int, block: int = 2048
) -> tuple[torch.Tensor, torch.Tensor]:
    """The `n` features of highest cosine with each (itself excluded): (ids `[k, n]`, cosines `[k, n]`)."""
    return match_features(directions, directions, n, block, exclude_self=True)


def match_features(a: torch.Tensor, b: torch.Tensor, n: int, block: int = 2048,
                   exclude_self: bool = False) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """For each row of `a [ka, d]`, the `n` rows of `b [kb, d]` of highest cosine: (ids `[ka, n]`, cosines)."""
    a = torch.nn.functional.normalize(a.float(), dim=1)
    b = torch.nn.functional.normalize(b.float(), dim=1)
    n = min(n, b.shape[0] - int(exclude_self))
    ids, cos = [], []
    for start in range(0, a.shape[0], block):  # a loop over blocks of features
        sims = a[start : start + block] @ b.T
        if exclude_self:
            rows = torch.arange(sims.shape[0], device=sims.device)
            sims[rows, rows + start] = -float("inf")
        top = sims.topk(max(n, 0), dim=1)
        ids.append(top.indices)
        cos.append(top.values)
    return torch.cat(ids), torch.cat(cos)


def top_neurons(directions: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
    """Largest-|weight| neurons of each direction `[k, d_in]`: ids, weights `[k, n]`, and non-zero counts `[k]`."""
    n = min(n, directions.shape[1])
    top = directions.abs().topk(n, dim=1)
    return {
        "neuron_ids": top.indices,
        "neuron_weights": directions.gather(1, top.indices),
        "neuron_nonzero": (directions != 0).sum(1),
    }
