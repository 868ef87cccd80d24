"""Concept detection: which feature (or direction) fires on a concept's texts and not on the others?

Per concept, every feature of every decomposer is scored on the train texts by the AUROC of its max-pooled
activation (concept texts vs the other concepts' texts) and by the paper's log-ratio
log(mean activation on concept texts / mean activation on the others); the best feature by train AUROC is then
scored on held-out texts. Baselines, scored the same way: the difference-in-means direction (train mean of the
concept minus the rest, on mean-pooled activations), the best of N random directions (chosen exactly as features
are: N = the number of features makes it a matched baseline), and a logistic probe on mean-pooled activations (an
upper bound: it reads all dimensions).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interp.models import LoadedModel
from interp.models.hooks import backend_runner
from interp.models.prompts import right_padded, token_ids
from interp.models.sites import Site
from interp.steer.concepts import ConceptSet


@dataclass
class TextActivations:
    """Per-token activations of texts at one site: `acts [n_texts, max_len, d]`, `mask [n_texts, max_len]`.

    The mask is True on real tokens (BOS and padding excluded).
    """

    acts: torch.Tensor
    mask: torch.Tensor

    def max_pool(self, scores: torch.Tensor) -> torch.Tensor:
        """`scores [n, T, k]` -> `[n, k]`, max over real tokens."""
        return scores.masked_fill(~self.mask[..., None], float("-inf")).amax(dim=1)

    def mean_pool(self) -> torch.Tensor:
        """Mean activation over real tokens, `[n, d]`."""
        weights = self.mask[..., None].float()
        return (self.acts * weights).sum(1) / weights.sum(1).clamp_min(1)


def text_activations(
    model: LoadedModel, texts: list[str], site: Site, max_len: int = 64, batch_size: int = 16
) -> TextActivations:
    """Run `texts` (BOS + up to max_len - 1 tokens each, right-padded) and read `site`."""
    run = backend_runner("torch")
    acts, masks = [], []
    for start in range(0, len(texts), batch_size):
        ids = token_ids(model, texts[start : start + batch_size], max_len)
        tokens, lengths = right_padded(ids, model.pad_token_id, max_len)
        mask = torch.arange(max_len)[None, :] < lengths[:, None]
        mask[:, 0] = False  # BOS
        acts.append(run(model, tokens.to(model.device), [site])[site].float().cpu())
        masks.append(mask)
    return TextActivations(torch.cat(acts), torch.cat(masks))


def auroc(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """AUROC of each column of `scores [n, k]` for labels `positive [n]`: P(pos > neg) + P(pos == neg) / 2."""
    pos, neg = scores[positive].T.contiguous(), scores[~positive].T.contiguous()  # [k, n_pos], [k, n_neg]
    if pos.shape[1] == 0 or neg.shape[1] == 0:
        raise ValueError("AUROC needs both positive and negative examples")
    neg_sorted = neg.sort(dim=1).values
    below = torch.searchsorted(neg_sorted, pos, right=False).float()  # negatives strictly below each positive
    not_above = torch.searchsorted(neg_sorted, pos, right=True).float()
    return (below + 0.5 * (not_above - below)).mean(dim=1) / neg.shape[1]


def log_ratio(pooled: torch.Tensor, positive: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The paper's detection score per column: log(mean on positives / mean on negatives), `[k]`."""
    pooled = pooled.clamp_min(0)
    return torch.log((pooled[positive].mean(0) + eps) / (pooled[~positive].mean(0) + eps))


def logistic_probe(
    x_train: torch.Tensor, y_train: torch.Tensor, l2: float = 1e-3, steps: int = 100
) -> torch.Tensor:
    """Weights `[d + 1]` of an L2-regularized logistic regression (standardized inputs, LBFGS); see `probe_scores`."""
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    z = (x_train - mean) / std
    w = torch.zeros(z.shape[1] + 1, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=steps, line_search_fn="strong_wolfe")
    target = y_train.float()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (
            torch.nn.functional.binary_cross_entropy_with_logits(z @ w[:-1] + w[-1], target)
            + l2 * w[:-1].square().sum()
        )
        loss.backward()
        return loss

    opt.step(closure)
    return torch.cat([w.detach(), mean, std])


def probe_scores(params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    d = x.shape[1]
    w, b, mean, std = params[:d], params[d], params[d + 1 : 2 * d + 1], params[2 * d + 1 :]
    return ((x - mean) / std) @ w + b


@dataclass
class Detection:
    concept: str
    method: str  # decomposer name, or diff_in_means | random | probe
    feature: int  # best feature id (-1 for baselines)
    train_auroc: float
    held_out_auroc: float
    log_ratio: float  # of the chosen feature on train (nan for baselines)


def diff_in_means(pooled: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Unit difference-in-means direction `[d]` of mean-pooled activations."""
    direction = pooled[positive].mean(0) - pooled[~positive].mean(0)
    return direction / direction.norm().clamp_min(1e-12)


def random_directions(d: int, n: int, seed: int) -> torch.Tensor:
    """`n` unit random directions `[n, d]` (Gaussian, seeded)."""
    directions = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return directions / directions.norm(dim=1, keepdim=True)


def random_pooled(text_acts: TextActivations, directions: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Max-pooled projections of the texts on each random direction `[n_texts, n]` (like a decomposer's codes)."""
    return torch.cat(
        [text_acts.max_pool(text_acts.acts @ block.T) for block in directions.split(chunk)], dim=1
    )


def choose(pooled: torch.Tensor, train: torch.Tensor, held: torch.Tensor, positive: torch.Tensor) -> tuple:
    """(best column by train AUROC, ties to the larger log-ratio; its train AUROC, held-out AUROC, log-ratio)
    for `pooled [n_texts, k]`: how features, and the matched random baseline, are chosen."""
    train_auc = auroc(pooled[train], positive[train])
    ratio = log_ratio(pooled[train], positive[train])
    best = int((train_auc + 1e-4 * ratio.nan_to_num(0).tanh()).argmax())
    held_auc = float(auroc(pooled[held][:, best : best + 1], positive[held])[0])
    return best, float(train_auc[best]), held_auc, float(ratio[best])


def detect(
    concepts: ConceptSet,
    text_acts: TextActivations,
    decomposers: dict[str, object],
    seed: int = 0,
    n_random: int = 1,
) -> tuple[list[Detection], dict[tuple[str, str], torch.Tensor]]:
    """Detection table (one row per concept and method) and the unit direction chosen for each (concept, method).

    The random baseline is the best of `n_random` random directions, chosen exactly as features are (pass the
    number of features of a decomposer for a matched baseline)."""
    train, held = torch.tensor(concepts.train), torch.tensor(concepts.held_out)
    flat = text_acts.acts.reshape(-1, text_acts.acts.shape[-1])
    pooled_codes = {
        name: text_acts.max_pool(dec.encode(flat).view(*text_acts.acts.shape[:2], -1))
        for name, dec in decomposers.items()
    }
    atoms = {name: dec.directions for name, dec in decomposers.items()}
    atoms["random"] = random_directions(flat.shape[1], n_random, seed)
    pooled_codes["random"] = random_pooled(text_acts, atoms["random"])
    mean_acts = text_acts.mean_pool()
    rows, directions = [], {}
    for concept in concepts.names:
        positive = torch.tensor([label == concept for label in concepts.concepts])
        for name, pooled in pooled_codes.items():
            best, train_auc, held_auc, ratio = choose(pooled, train, held, positive)
            rows.append(Detection(concept, name, best, train_auc, held_auc, ratio))
            directions[concept, name] = atoms[name][best].float()
        dim = diff_in_means(mean_acts[train], positive[train])
        scores = text_acts.max_pool((text_acts.acts @ dim)[..., None])
        rows.append(Detection(concept, "diff_in_means", -1, float(auroc(scores[train], positive[train])[0]),
                              float(auroc(scores[held], positive[held])[0]), float("nan")))  # fmt: skip
        directions[concept, "diff_in_means"] = dim
        params = logistic_probe(mean_acts[train], positive[train])
        rows.append(
            Detection(
                concept,
                "probe",
                -1,
                float(auroc(probe_scores(params, mean_acts[train])[:, None], positive[train])[0]),
                float(auroc(probe_scores(params, mean_acts[held])[:, None], positive[held])[0]),
                float("nan"),
            )
        )
    return rows, directions
