"""The index's tables: the token id -> text table and the one-row-per-feature table the browser sorts and searches."""

from __future__ import annotations

from typing import Any

import torch


def token_table(tokenizer: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """id -> display text of every token id the index mentions."""
    import pandas as pd

    used = [tensors[n].flatten() for n in ("top_tokens", "band_tokens", "logit_promoted_ids",
                                           "logit_suppressed_ids") if n in tensors]  # fmt: skip
    ids = torch.unique(torch.cat(used))
    ids = ids[ids >= 0].tolist()
    return pd.DataFrame({"id": ids, "text": tokenizer.batch_decode([[i] for i in ids])})


def visible(token: str) -> str:
    """A token's text with whitespace made visible (newline as ⏎, a blank token as ␣)."""
    token = token.replace("\n", "⏎")
    return token if token.strip() else token.replace(" ", "␣").replace("\t", "⇥") or "∅"


def feature_table(tensors: dict[str, torch.Tensor], vocab: dict[int, str]) -> Any:
    """One row per feature: numbers for sorting, top tokens / text / promoted tokens for search."""
    import pandas as pd

    def text(ids: list[int]) -> str:
        return "".join(vocab.get(i, "") for i in ids if i >= 0)

    k = tensors["max"].shape[0]
    peak = tensors["top_tokens"][:, :, tensors["top_tokens"].shape[2] // 2].tolist()  # [k, m] peak tokens

    def distinct(row: list[int]) -> str:
        return " · ".join(list(dict.fromkeys(visible(vocab.get(i, "")) for i in row if i >= 0))[:6])

    top_tokens = [distinct(row) for row in peak]
    first_window = tensors["top_tokens"][:, 0].tolist()
    promoted = tensors.get("logit_promoted_ids")
    table = pd.DataFrame({
        "feature": range(k),
        "density": tensors["density"].numpy(),
        "max_activation": tensors["max"].numpy(),
        "mean_activation": tensors["mean"].numpy(),
        "count": tensors["count"].numpy(),
        "top_tokens": top_tokens,
        "top_text": [text(row) for row in first_window],
        "promoted": [" · ".join(vocab.get(i, "") for i in row[:5]) for row in promoted.tolist()]
        if promoted is not None else [""] * k,
    })  # fmt: skip
    return table
