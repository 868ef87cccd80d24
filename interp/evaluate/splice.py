"""Spliced-in metrics: how much next-token loss a decomposer's reconstruction costs when it replaces the site.

CE(clean), CE(spliced) with decode(encode(x)) in place of x, CE(zero-ablated) with 0 in place of x, the mean KL
between clean and spliced next-token distributions, and CE loss recovered = (CE_zero - CE_spliced) /
(CE_zero - CE_clean) (SAEBench's CE score). `kl_zero` is KL(clean || zero-ablated) and `kl_score` SAEBench's
(KL_zero - KL_spliced) / KL_zero. The BOS position is neither edited nor counted; padding is not counted.
A transcoder (its config names a `target_site`) is spliced as its replacement model: the target site (the MLP's
output) gets transcoder(input site), and the zero ablation is of the target site (interp.evaluate.transcode).
"""

from __future__ import annotations

import torch

from interp.corpus import Contexts
from interp.evaluate.losses import ce_loss_recovered, kl_rows
from interp.evaluate.transcode import transcoded_logits
from interp.models import LoadedModel
from interp.models.edits import Reconstruct, ZeroAblate
from interp.models.hooks import steered_logits
from interp.models.sites import parse_site


def _next_token_stats(
    logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position CE `[n]` of predicting token t+1 and the log-probs `[n, vocab]`, at positions where mask[t+1]."""
    logprobs = logits[:, :-1].float().log_softmax(-1)
    keep = mask[:, 1:]
    ce = -logprobs.gather(-1, tokens[:, 1:, None])[..., 0]
    return ce[keep], logprobs[keep]


def spliced_metrics(
    model: LoadedModel,
    decomposer: object,
    site: str,
    contexts: Contexts,
    n_contexts: int = 32,
    batch_size: int = 8,
) -> dict[str, float]:
    """CE clean / spliced / zero-ablated, KL(clean || spliced) and CE loss recovered on the first contexts."""
    site_ = parse_site(site, model.info.n_layers)
    target = getattr(decomposer.config, "target_site", "")  # a transcoder replaces its target site
    replaced = parse_site(target, model.info.n_layers) if target else site_
    sums = {"ce_clean": 0.0, "ce_spliced": 0.0, "ce_zero": 0.0, "kl": 0.0, "kl_zero": 0.0}
    count = 0
    for start in range(0, min(n_contexts, contexts.n_contexts), batch_size):
        end = min(start + batch_size, n_contexts, contexts.n_contexts)
        tokens = contexts.token_ids[start:end].to(model.device)
        mask = (torch.arange(tokens.shape[1])[None, :] < contexts.lengths[start:end, None]).to(model.device)
        mask[:, 0] = False  # BOS: neither predicted nor counted
        clean_ce, clean_lp = _next_token_stats(steered_logits(model, tokens, site_, None), tokens, mask)
        if target:
            spliced = transcoded_logits(model, tokens, decomposer, site_, replaced)
        else:
            spliced = steered_logits(model, tokens, site_, Reconstruct(decomposer, "generated"), prompt_len=1)
        spliced_ce, spliced_lp = _next_token_stats(spliced, tokens, mask)
        zero = steered_logits(model, tokens, replaced, ZeroAblate("generated"), prompt_len=1)
        zero_ce, zero_lp = _next_token_stats(zero, tokens, mask)
        sums["ce_clean"] += float(clean_ce.sum())
        sums["ce_spliced"] += float(spliced_ce.sum())
        sums["ce_zero"] += float(zero_ce.sum())
        sums["kl"] += float(kl_rows(clean_lp, spliced_lp).sum())
        sums["kl_zero"] += float(kl_rows(clean_lp, zero_lp).sum())
        count += clean_ce.numel()
    out = {k: v / max(count, 1) for k, v in sums.items()}
    out["ce_delta"] = out["ce_spliced"] - out["ce_clean"]
    out["ce_loss_recovered"] = ce_loss_recovered(out["ce_clean"], out["ce_spliced"], out["ce_zero"])
    out["kl_score"] = (
        (out["kl_zero"] - out["kl"]) / out["kl_zero"] if out["kl_zero"] > 1e-12 else float("nan")
    )
    out["n_tokens"] = count
    return out
