"""Top-activating examples of features: a streaming, batched top-k over a store, and plain-text rendering."""

from __future__ import annotations

import torch

from interp.corpus import Contexts
from interp.store import ActivationStore


@torch.no_grad()
def top_examples(
    decomposer, store: ActivationStore, top: int = 10, batch_size: int = 4096, max_tokens: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """For every feature, its `top` largest codes over the store: (values `[k, top]`, store rows `[k, top]`).

    One pass over the store in order; the running top-k is merged with each batch's by one torch.topk.
    """
    k = decomposer.n_features
    best_vals = torch.full((k, top), float("-inf"))
    best_rows = torch.full((k, top), -1, dtype=torch.long)
    offset = 0
    for x in store.batches(batch_size, shuffle=False):
        if max_tokens is not None and offset >= max_tokens:
            break
        codes = decomposer.encode(x).float().cpu().T  # [k, batch]
        rows = torch.arange(offset, offset + x.shape[0]).expand(k, -1)
        vals = torch.cat([best_vals, codes], dim=1)
        merged = vals.topk(top, dim=1)
        best_vals = merged.values
        best_rows = torch.cat([best_rows, rows], dim=1).gather(1, merged.indices)
        offset += x.shape[0]
    return best_vals, best_rows


def render_example(tokenizer, contexts: Contexts, context_id: int, position: int, window: int = 8) -> str:
    """`... left context [token] right context ...` around one stored token."""
    ids = contexts.token_ids[context_id]
    start, end = (
        max(1 if contexts.has_bos else 0, position - window),
        min(int(contexts.lengths[context_id]), position + window + 1),
    )

    def text(a: int, b: int) -> str:
        return tokenizer.decode(ids[a:b]).replace("\n", " ")

    return f"{text(start, position)}[{text(position, position + 1)}]{text(position + 1, end)}"


def describe_features(decomposer, store: ActivationStore, features: list[int], tokenizer, top: int = 4,
                      max_tokens: int | None = None) -> list[str]:  # fmt: skip
    """One line per feature: its top examples with the activating token in brackets."""
    contexts = Contexts.load(store.contexts_path)
    meta = store.tokens()
    vals, rows = top_examples(decomposer, store, top, max_tokens=max_tokens)
    lines = []
    for feature in features:
        shown = [
            render_example(tokenizer, contexts, int(meta["context_ids"][r]), int(meta["positions"][r]), window=5)
            for r in rows[feature].tolist() if r >= 0
        ]  # fmt: skip
        lines.append(f"feature {feature:>4} (max {float(vals[feature, 0]):.3g}): " + " | ".join(shown))
    return lines
