"""The output score of Arad, Mueller & Belinkov (arXiv 2505.20063): does a feature make the model say its own tokens?

What is implemented (following the paper and its code, `src/output_score.py` of technion-cs-nlp/
saes-are-good-for-steering):
1. The feature's tokens: the top `top` (paper: 20) promoted tokens of its direction under the logit lens
   (`interp.features.logit_lens`: out projection for mlp_hidden directions, final-norm gain, unembedding).
2. One forward pass on a neutral prompt (paper: "From my experience,") with the feature amplified at the LAST
   prompt position only: the paper adds `amp * m` to the feature's code, `m` the largest code of any feature at
   that position (paper: amp = 10), keeping the SAE error; for a linear decoder this is adding
   `amp * m * directions[f]` to the site's activation there, which is what is done here.
3. From the next-token distribution p after the edit: `score = (1 - min_rank / vocab) * max_prob`, with
   `min_rank` the best (0-based) rank among the feature's tokens in p and `max_prob` their largest probability.
Scores are in [0, 1]; all features of a block run as one batch (one row per feature), no loop over tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interp.features.logit_lens import logit_lens
from interp.models import LoadedModel
from interp.models.hooks import backend_module, backend_runner
from interp.models.prompts import token_ids
from interp.models.sites import Site

NEUTRAL_PROMPT = "From my experience,"


@dataclass(frozen=True)
class OutputScoreConfig:
    prompt: str = NEUTRAL_PROMPT  # the neutral prompt the feature is amplified on
    amp: float = 10.0  # strength, in units of the largest code at the prompt's last position
    top: int = 20  # logit-lens tokens per feature
    batch_size: int = 64  # features per forward pass


class _AddAtLast:
    """Adds row i of `vectors [b, d]` to sequence i's last position; a callable the backends' hooks apply."""

    def __init__(self, vectors: torch.Tensor):
        self.vectors = vectors

    def __call__(self, acts: torch.Tensor) -> torch.Tensor:
        out = acts.clone()
        out[:, -1] += self.vectors.to(acts.device, acts.dtype)
        return out


def rank_of(probs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """0-based rank (0 = most likely) in each row of `probs [b, vocab]` of the tokens `ids [b, t]`, `[b, t]`."""
    order = probs.argsort(dim=1, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(probs.shape[1], device=probs.device).expand_as(order))
    return ranks.gather(1, ids)


def score_from_probs(probs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The paper's score per row: (1 - min rank of `ids` / vocab) * max probability of `ids`, `[b]`."""
    rank_term = 1 - rank_of(probs, ids).min(dim=1).values.float() / probs.shape[1]
    return rank_term * probs.gather(1, ids).max(dim=1).values


@torch.no_grad()
def output_scores(
    model: LoadedModel, site: Site, vectors: torch.Tensor, config: OutputScoreConfig = OutputScoreConfig()
) -> torch.Tensor:
    """Output score `[k]` of each of `vectors [k, d_in]` (direction times strength) added at `site`'s last prompt
    position; the logit-lens tokens come from the vectors' directions (their ranking ignores the scale)."""
    ids = logit_lens(model, site, vectors, top=config.top).promoted_ids  # [k, top]
    prompt = torch.tensor(token_ids(model, [config.prompt]), device=model.device)  # [1, T]
    logits_of = backend_module("torch").logits
    scores = []
    for start in range(0, vectors.shape[0], config.batch_size):
        block = vectors[start : start + config.batch_size]
        tokens = prompt.expand(block.shape[0], -1)
        logits = logits_of(model, tokens, site, _AddAtLast(block))[:, -1].float()  # [b, vocab]
        probs = logits.softmax(dim=-1)
        scores.append(score_from_probs(probs, ids[start : start + block.shape[0]].to(probs.device)).cpu())
    return torch.cat(scores) if scores else torch.zeros(0)


@torch.no_grad()
def feature_output_scores_of(
    model: LoadedModel,
    site: Site,
    decomposer,
    features: list[int] | None = None,
    config: OutputScoreConfig = OutputScoreConfig(),
) -> torch.Tensor:
    """Output score `[n]` of `features` of `decomposer` (fitted at `site`; None: every feature) at the paper's
    strength: `amp` times the largest code at the neutral prompt's last position (1 when every code there is 0)."""
    prompt = torch.tensor(token_ids(model, [config.prompt]), device=model.device)
    last = backend_runner("torch")(model, prompt, [site])[site][0, -1].float()  # [d_in]
    held = decomposer.directions
    dtype = held.dtype if held.is_floating_point() else torch.float32
    top_code = float(decomposer.encode(last[None].to(held.device, dtype)).max())
    top_code = top_code if top_code > 0 else 1.0
    rows = held if features is None else held[torch.tensor(features, dtype=torch.long, device=held.device)]
    return output_scores(model, site, config.amp * top_code * rows.float(), config)
