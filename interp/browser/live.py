"""What the feature browser computes live with the model (what an index cannot hold): activations of typed text,
steered generations, and matches between the features of two decomposers of one site."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from interp.features.similarity import match_features
from interp.models import LoadedModel
from interp.models.prompts import token_ids
from interp.models.sites import parse_site


@dataclass
class TextCodes:
    """Codes of one text: per-token display texts `[n]` and codes `[n, n_features]` (BOS excluded)."""

    texts: list[str]
    codes: torch.Tensor


@torch.no_grad()
def text_codes(model: LoadedModel, decomposer: Any, site: str, text: str, max_len: int = 256) -> TextCodes:
    """Run `text` through the model (BOS + up to max_len - 1 tokens), read `site`, encode every token."""
    from interp.steer.detection import text_activations

    if not text.strip():
        raise ValueError("the text is empty; type some text to see its activations")
    parsed = parse_site(site, model.info.n_layers)
    acts = text_activations(model, [text], parsed, max_len=max_len, batch_size=1)
    ids = token_ids(model, [text], max_len)[0][1:]
    x = acts.acts[0][acts.mask[0]]  # [n, d]
    codes = decomposer.encode(x.float()).float().cpu()
    return TextCodes(model.tokenizer.batch_decode([[i] for i in ids]), codes)


@torch.no_grad()
def steer(model: LoadedModel, site: str, direction: torch.Tensor, alpha: float, prompt: str,
          max_new_tokens: int = 24, seed: int = 0) -> tuple[str, str]:  # fmt: skip
    """Greedy continuations of `prompt` without and with `alpha * direction` added at `site` on every position."""
    from interp.models.edits import AddDirection
    from interp.models.hooks import generate

    if not prompt.strip():
        raise ValueError("the prompt is empty; type a prompt to steer")
    tokens = torch.tensor(token_ids(model, [prompt]))
    n = tokens.shape[1]
    plain = generate(model, tokens, max_new_tokens=max_new_tokens, seed=seed)
    edit = AddDirection(direction.float(), float(alpha))
    steered = generate(model, tokens, site, edit, max_new_tokens=max_new_tokens, seed=seed)
    decode = model.tokenizer.decode
    return decode(plain[0, n:].tolist()), decode(steered[0, n:].tolist())


def best_matches(
    directions: torch.Tensor, others: torch.Tensor, top: int = 5
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each feature `[k, d]`, the `top` features of another decomposer `[k2, d]` of the same site with the
    highest direction cosine: (ids `[k, top]`, cosines `[k, top]`)."""
    return match_features(directions, others, top)


def match_summary(cosines: torch.Tensor) -> dict[str, float]:
    """Summary of best-match cosines `[k]`: mean, median, and the fraction above 0.5 / 0.7 / 0.9."""
    c = cosines.float()
    return {
        "mean": float(c.mean()),
        "median": float(c.median()),
        "frac>0.5": float((c > 0.5).float().mean()),
        "frac>0.7": float((c > 0.7).float().mean()),
        "frac>0.9": float((c > 0.9).float().mean()),
    }
