"""Strength calibration and steered generation: KL-matched strengths by bisection, batched seeded sampling."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from interp.evaluate.losses import kl_rows
from interp.models import LoadedModel
from interp.models.edits import AddDirection
from interp.models.hooks import generate, steered_logits
from interp.models.prompts import right_padded, token_ids
from interp.models.sites import Site
from interp.steer.judges import continuation_perplexity

NEUTRAL_PROMPTS = ("I think that", "The", "In my opinion,", "Here is what happened:")


@dataclass
class Prompts:
    """Tokenized prompts, right-padded: `tokens [n, max_len]`, `lengths [n]` (BOS included)."""

    texts: tuple[str, ...]
    tokens: torch.Tensor
    lengths: torch.Tensor
    pad: int

    def left_padded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompts left-padded for one batched generate: tokens `[n, max_len]` and attention mask `[n, max_len]`
        (0 on padding). Every row ends at the last column."""
        width = self.tokens.shape[1]
        shift = width - self.lengths  # [n]: how far each row moves right
        columns = (
            torch.arange(width)[None, :] - shift[:, None]
        ) % width  # [n, width]: source column per column
        mask = (torch.arange(width)[None, :] >= shift[:, None]).long()
        tokens = torch.where(
            mask.bool(), self.tokens.gather(1, columns), torch.full_like(self.tokens, self.pad)
        )
        return tokens, mask

    @classmethod
    def build(cls, model: LoadedModel, texts: tuple[str, ...]) -> Prompts:
        tokens, lengths = right_padded(token_ids(model, texts), model.pad_token_id)
        return cls(texts, tokens, lengths, model.pad_token_id)


def next_token_logprobs(
    model: LoadedModel, prompts: Prompts, site: Site, edit: AddDirection | None, backend: str = "torch"
) -> torch.Tensor:
    """Log-probabilities of the next token after each prompt, `[n_prompts, vocab]`, through `backend`.

    Prompts are right-padded (causal attention: padding after a prompt does not change its positions)."""
    logits = steered_logits(model, prompts.tokens, site, edit, backend=backend)
    last = (prompts.lengths - 1).to(logits.device)
    return logits[torch.arange(logits.shape[0], device=logits.device), last].float().log_softmax(-1).cpu()


def kl_divergence(clean: torch.Tensor, steered: torch.Tensor) -> float:
    """Mean over prompts of KL(clean || steered), both log-probabilities `[n, vocab]`."""
    return float(kl_rows(clean, steered).mean())


@dataclass
class Calibration:
    alpha: float
    kl: float
    reached: bool  # |kl - target| <= tol * target
    reason: str = ""  # why not reached: the plateau (KL at the largest strength) or the closest KL found


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
            return Calibration(hi, kl_hi, False, f"plateau: KL {kl_hi:.3g} at the largest strength {hi:.3g}")
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
    if not best.reached:
        best.reason = f"no strength within {tol:.0%}: closest KL {best.kl:.3g} (KL not monotone in strength)"
    return best


def kl_function(
    model: LoadedModel, prompts: Prompts, site: Site, direction: torch.Tensor, backend: str = "torch"
) -> Callable[[float], float]:
    """Memoized `alpha -> KL(clean || steered)` on the prompts' next-token distributions (steered at alpha *
    direction; pass -direction to calibrate the other sign)."""
    clean = next_token_logprobs(model, prompts, site, None)
    memo: dict[float, float] = {}

    def kl_at(alpha: float) -> float:
        if alpha not in memo:
            edit = AddDirection(direction, alpha)
            memo[alpha] = kl_divergence(clean, next_token_logprobs(model, prompts, site, edit, backend))
        return memo[alpha]

    return kl_at


@dataclass(frozen=True)
class Sampling:
    """How continuations are drawn: `n_samples` per prompt, `max_new_tokens` each, top-k / top-p, seeded."""

    n_samples: int = 4
    max_new_tokens: int = 30
    top_k: int = 30
    top_p: float = 0.3
    seed: int = 0
    backend: str = "torch"


def steered_samples(
    model: LoadedModel, prompts: Prompts, site: Site, direction: torch.Tensor | None, alpha: float,
    sampling: Sampling,
) -> tuple[list[str], torch.Tensor]:  # fmt: skip
    """`n_samples` continuations of every prompt (one left-padded, seeded generate call) and their perplexity under
    the unsteered model: texts and `ppl [n_prompts * n_samples]`, ordered prompt-major (row p * n_samples + s)."""
    edit = None if direction is None or alpha == 0 else AddDirection(direction, alpha)
    s = sampling
    tokens, mask = (t.repeat_interleave(s.n_samples, 0) for t in prompts.left_padded())
    out = generate(model, tokens, site, edit, max_new_tokens=s.max_new_tokens, do_sample=True, seed=s.seed,
                   backend=s.backend, attention_mask=mask, top_k=s.top_k, top_p=s.top_p).cpu()  # fmt: skip
    texts = model.tokenizer.batch_decode(out[:, tokens.shape[1] :], skip_special_tokens=True)
    full_mask = torch.cat([mask, torch.ones(len(out), out.shape[1] - mask.shape[1], dtype=mask.dtype)], 1)
    return texts, continuation_perplexity(model, out, tokens.shape[1], full_mask)
