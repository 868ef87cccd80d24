"""Strength calibration and steered generation: KL-matched strengths by bisection, batched seeded sampling."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from interp.evaluate.losses import kl_rows
from interp.models import LoadedModel
from interp.models.edits import AddDirection
from interp.models.hooks import generate, intervene
from interp.models.prompts import right_padded, token_ids
from interp.models.sites import Site

NEUTRAL_PROMPTS = ("I think that", "The", "In my opinion,", "Here is what happened:")


@dataclass
class Prompts:
    """Tokenized prompts, right-padded: `tokens [n, max_len]`, `lengths [n]` (BOS included)."""

    texts: tuple[str, ...]
    tokens: torch.Tensor
    lengths: torch.Tensor
    pad: int

    def left_padded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompts left-padded for batched generation: tokens and attention mask `[n, max_len]`."""
        width = self.tokens.shape[1]
        positions = torch.arange(width)[None, :]
        shift = width - self.lengths[:, None]
        source = (positions - shift).clamp_min(0)
        tokens = torch.where(
            positions >= shift, self.tokens.gather(1, source), self.tokens[0, -1].new_tensor(self.pad)
        )
        return tokens, (positions >= shift).long()

    @classmethod
    def build(cls, model: LoadedModel, texts: tuple[str, ...]) -> Prompts:
        tokens, lengths = right_padded(token_ids(model, texts), model.pad_token_id)
        return cls(texts, tokens, lengths, model.pad_token_id)


def next_token_logprobs(
    model: LoadedModel, prompts: Prompts, site: Site, edit: AddDirection | None
) -> torch.Tensor:
    """Log-probabilities of the next token after each prompt, `[n_prompts, vocab]`.

    Prompts are left-padded so the last column is every prompt's last token, and only that column is unembedded.
    """
    tokens, mask = prompts.left_padded()
    position_ids = (mask.cumsum(1) - 1).clamp_min(0)
    kwargs = {"attention_mask": mask.to(model.device), "position_ids": position_ids.to(model.device),
              "logits_to_keep": 1, "use_cache": False}  # fmt: skip
    context = intervene(model, site, edit) if edit is not None else contextlib.nullcontext()
    with torch.no_grad(), context:
        logits = model.hf(input_ids=tokens.to(model.device), **kwargs).logits[:, -1]
    return logits.float().log_softmax(-1).cpu()


def kl_divergence(clean: torch.Tensor, steered: torch.Tensor) -> float:
    """Mean over prompts of KL(clean || steered), both log-probabilities `[n, vocab]`."""
    return float(kl_rows(clean, steered).mean())


@dataclass
class Calibration:
    alpha: float
    kl: float
    reached: bool  # |kl - target| <= tol * target


def alpha_for_kl(
    kl_at: Callable[[float], float],
    target: float,
    start: float,
    tol: float = 0.1,
    max_iter: int = 30,
    max_doublings: int = 16,
) -> Calibration:
    """Bisection for the strength whose KL is within `tol` (relative) of `target`.

    `kl_at(alpha)` should be memoized by the caller when several targets share a direction. Grows the upper
    bound by doubling from `start`; reports `reached=False` (never drops the target) when it cannot get there.
    """
    lo, hi = 0.0, start
    kl_hi = kl_at(hi)
    doublings = 0
    while kl_hi < target:
        if doublings == max_doublings:
            return Calibration(hi, kl_hi, False)
        lo, hi, doublings = hi, hi * 2, doublings + 1
        kl_hi = kl_at(hi)
    best = Calibration(hi, kl_hi, abs(kl_hi - target) <= tol * target)
    for _ in range(max_iter):
        if best.reached:
            break
        mid = (lo + hi) / 2
        kl = kl_at(mid)
        if abs(kl - target) < abs(best.kl - target):
            best = Calibration(mid, kl, abs(kl - target) <= tol * target)
        lo, hi = (mid, hi) if kl < target else (lo, mid)
    return best


def kl_function(
    model: LoadedModel, prompts: Prompts, site: Site, direction: torch.Tensor
) -> Callable[[float], float]:
    """Memoized `alpha -> KL(clean || steered)` on the prompts' next-token distributions."""
    clean = next_token_logprobs(model, prompts, site, None)
    memo: dict[float, float] = {}

    def kl_at(alpha: float) -> float:
        if alpha not in memo:
            memo[alpha] = kl_divergence(
                clean, next_token_logprobs(model, prompts, site, AddDirection(direction, alpha))
            )
        return memo[alpha]

    return kl_at


def steered_samples(
    model: LoadedModel,
    prompts: Prompts,
    site: Site,
    direction: torch.Tensor | None,
    alpha: float,
    n_samples: int,
    max_new_tokens: int,
    seed: int,
    top_k: int = 30,
    top_p: float = 0.3,
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """`n_samples` sampled continuations of every prompt, in one batched (left-padded) generate call.

    Returns the continuation texts `[n_prompts * n_samples]`, the full sequences `[n, padded_prompt_len +
    max_new_tokens]` and their attention mask (for perplexity).
    """
    edit = None if direction is None or alpha == 0 else AddDirection(direction, alpha)
    tokens, mask = prompts.left_padded()
    tokens, mask = tokens.repeat_interleave(n_samples, 0), mask.repeat_interleave(n_samples, 0)
    out = generate(model, tokens, site, edit, max_new_tokens=max_new_tokens, do_sample=True, seed=seed,
                   attention_mask=mask, top_k=top_k, top_p=top_p).cpu()  # fmt: skip
    texts = model.tokenizer.batch_decode(out[:, tokens.shape[1] :], skip_special_tokens=True)
    full_mask = torch.cat([mask, torch.ones(out.shape[0], max_new_tokens, dtype=mask.dtype)], dim=1)
    return texts, out, full_mask
