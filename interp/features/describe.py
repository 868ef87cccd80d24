"""Top-activating examples of features: a streaming, batched top-k over a store, and plain-text rendering."""

from __future__ import annotations

import torch

from interp.corpus import Contexts
from interp.features.passes import Examples, top_rows
from interp.store import ActivationStore
from interp.store.batches import context_batches


@torch.no_grad()
def top_examples(
    decomposer, store: ActivationStore, top: int = 10, batch_size: int = 4096, max_tokens: int | None = None
) -> Examples:
    """For every feature, its `top` largest codes over the store, highest first: `Examples` with values, store rows,
    context ids and positions `[k, top]` (rows -1 where fewer tokens fired).

    The top-k the feature index runs (`features.passes`), without the windows: one pass in store order.
    """
    k = decomposer.n_features
    examples = Examples.empty(k, top, 1, torch.device("cpu"))
    features = torch.arange(k)
    for batch in context_batches(store, max(batch_size, store.manifest.context_len), max_tokens):
        codes = decomposer.encode(batch.acts.float()).float().cpu()
        keys, rows = top_rows(codes, top)
        examples.absorb(batch, codes, keys, rows, features, window=0)
    order = examples.keys.argsort(dim=1, descending=True)  # slots are unordered: highest first

    def ordered(t: torch.Tensor) -> torch.Tensor:
        return t.gather(1, order.view(*order.shape, *[1] * (t.ndim - 2)).expand_as(t))

    return Examples(**{name: ordered(getattr(examples, name)) for name in Examples.__dataclass_fields__})


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
    examples = top_examples(decomposer, store, top, max_tokens=max_tokens)
    lines = []
    for feature in features:
        found = examples.rows[feature] >= 0
        places = zip(examples.context_ids[feature][found].tolist(), examples.positions[feature][found].tolist(),
                     strict=True)  # fmt: skip
        shown = [render_example(tokenizer, contexts, c, p, window=5) for c, p in places]
        lines.append(
            f"feature {feature:>4} (max {float(examples.values[feature, 0]):.3g}): " + " | ".join(shown)
        )
    return lines
