"""Texts to token batches: BOS + the tokenizer's ids, right-padded (the one tokenize-and-pad of the project)."""

from __future__ import annotations

import torch


def token_ids(model, texts: list[str] | tuple[str, ...], max_len: int | None = None) -> list[list[int]]:
    """BOS + the ids of each text (no other special tokens), at most `max_len` ids in all when given."""
    rows = model.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    keep = None if max_len is None else max_len - 1
    return [[model.bos_token_id, *row[:keep]] for row in rows]


def right_padded(
    ids: list[list[int]], pad: int, width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows right-padded with `pad` to `width` (default the longest): tokens `[n, width]`, lengths `[n]`."""
    lengths = torch.tensor([len(row) for row in ids], dtype=torch.long)
    width = int(lengths.max()) if width is None else width
    tokens = torch.full((len(ids), width), pad, dtype=torch.long)
    tokens[torch.arange(width)[None, :] < lengths[:, None]] = torch.tensor([t for row in ids for t in row])
    return tokens, lengths
