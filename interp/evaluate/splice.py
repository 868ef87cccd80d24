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
from interp.evaluate.reference import model_key, tensor_bytes_digest
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


def _batches(
    contexts: Contexts, n_contexts: int, batch_size: int, device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(tokens `[b, T]`, mask `[b, T]` of the positions counted) of the first n_contexts, batch by batch."""
    out = []
    for start in range(0, min(n_contexts, contexts.n_contexts), batch_size):
        end = min(start + batch_size, n_contexts, contexts.n_contexts)
        tokens = contexts.token_ids[start:end].to(device)
        mask = (torch.arange(tokens.shape[1])[None, :] < contexts.lengths[start:end, None]).to(device)
        mask[:, 0] = False  # BOS: neither predicted nor counted
        out.append((tokens, mask))
    return out


def reference_key(model: LoadedModel, site: str, contexts: Contexts, n_contexts: int, batch_size: int = 8,
                  target_site: str = "") -> dict:  # fmt: skip
    """What splice_reference's result depends on: the model, the site (the zero-ablated one), the tokens and the
    batching."""
    n = min(n_contexts, contexts.n_contexts)
    return {**model_key(model), "site": target_site or site, "n_contexts": n, "batch_size": batch_size,
            "tokens": tensor_bytes_digest(contexts.token_ids[:n], contexts.lengths[:n])}  # fmt: skip


@torch.no_grad()
def splice_reference(model: LoadedModel, site: str, contexts: Contexts, n_contexts: int = 32,
                     batch_size: int = 8, target_site: str = "") -> dict[str, torch.Tensor]:  # fmt: skip
    """What every decomposer of a site shares: the clean next-token log-probs of each batch (`clean_lp_{i}`
    `[n_i, vocab]`, counted positions only), and the sums ce_clean, ce_zero, kl_zero over the `count` positions;
    the zero ablation is of `target_site` when given (a transcoder's)."""
    zeroed = parse_site(target_site or site, model.info.n_layers)
    out: dict[str, torch.Tensor] = {}
    sums = {"ce_clean": 0.0, "ce_zero": 0.0, "kl_zero": 0.0, "count": 0.0}
    for i, (tokens, mask) in enumerate(_batches(contexts, n_contexts, batch_size, model.device)):
        clean_ce, clean_lp = _next_token_stats(steered_logits(model, tokens, zeroed, None), tokens, mask)
        zero = steered_logits(model, tokens, zeroed, ZeroAblate("generated"), prompt_len=1)
        zero_ce, zero_lp = _next_token_stats(zero, tokens, mask)
        out[f"clean_lp_{i}"] = clean_lp.cpu()
        sums["ce_clean"] += float(clean_ce.sum())
        sums["ce_zero"] += float(zero_ce.sum())
        sums["kl_zero"] += float(kl_rows(clean_lp, zero_lp).sum())
        sums["count"] += clean_ce.numel()
    return {**out, **{k: torch.tensor(v, dtype=torch.float64) for k, v in sums.items()}}


@torch.no_grad()
def spliced_metrics(
    model: LoadedModel,
    decomposer: object,
    site: str,
    contexts: Contexts,
    n_contexts: int = 32,
    batch_size: int = 8,
    reference: dict[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """CE clean / spliced / zero-ablated, KL(clean || spliced) and CE loss recovered on the first contexts;
    `reference`: splice_reference(...) of the same site, contexts and settings, when already computed."""
    site_ = parse_site(site, model.info.n_layers)
    target = getattr(decomposer.config, "target_site", "")  # a transcoder replaces its target site
    replaced = parse_site(target, model.info.n_layers) if target else site_
    if reference is None:
        reference = splice_reference(model, site, contexts, n_contexts, batch_size, target)
    ce_spliced = kl = 0.0
    for i, (tokens, mask) in enumerate(_batches(contexts, n_contexts, batch_size, model.device)):
        if target:
            spliced = transcoded_logits(model, tokens, decomposer, site_, replaced)
        else:
            spliced = steered_logits(model, tokens, site_, Reconstruct(decomposer, "generated"), prompt_len=1)
        spliced_ce, spliced_lp = _next_token_stats(spliced, tokens, mask)
        ce_spliced += float(spliced_ce.sum())
        kl += float(kl_rows(reference[f"clean_lp_{i}"].to(spliced_lp.device), spliced_lp).sum())
    count = max(float(reference["count"]), 1.0)
    out = {"ce_clean": float(reference["ce_clean"]) / count, "ce_spliced": ce_spliced / count,
           "ce_zero": float(reference["ce_zero"]) / count, "kl": kl / count,
           "kl_zero": float(reference["kl_zero"]) / count}  # fmt: skip
    out["ce_delta"] = out["ce_spliced"] - out["ce_clean"]
    out["ce_loss_recovered"] = ce_loss_recovered(out["ce_clean"], out["ce_spliced"], out["ce_zero"])
    out["kl_score"] = (
        (out["kl_zero"] - out["kl"]) / out["kl_zero"] if out["kl_zero"] > 1e-12 else float("nan")
    )
    out["n_tokens"] = int(reference["count"])
    return out
