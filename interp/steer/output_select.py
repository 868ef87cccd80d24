"""Feature selection by output score (arXiv 2505.20063), beside the default selection by detection.

Per concept and decomposer, the candidates are the `n_candidates` features with the best train AUROC (the paper
filters by output score among features that an input-side search found); the chosen one is the candidate with the
highest output score (interp.steer.output_score). It is reported as method `NAME@output` with a detection row
(its train / held-out AUROC) like any other method, and steered like its decomposer's features.
Only the candidates are scored (one batched pass over their union), not every feature.
"""

from __future__ import annotations

import torch

from interp.models import LoadedModel
from interp.models.sites import Site
from interp.steer.concepts import ConceptSet
from interp.steer.detection import Detection, TextActivations, auroc, log_ratio
from interp.steer.output_score import OutputScoreConfig, feature_output_scores_of

SUFFIX = "@output"


def output_method(name: str) -> str:
    return f"{name}{SUFFIX}"


def select_by_output(
    model: LoadedModel,
    site: Site,
    concepts: ConceptSet,
    text_acts: TextActivations,
    decomposers: dict[str, object],
    n_candidates: int = 10,
    config: OutputScoreConfig = OutputScoreConfig(),
) -> tuple[list[Detection], dict[tuple[str, str], torch.Tensor], dict[str, dict[int, float]]]:
    """Detection rows and directions of the `NAME@output` methods, and the output score of every candidate
    (`{method: {feature: score}}`)."""
    train, held = torch.tensor(concepts.train), torch.tensor(concepts.held_out)
    flat = text_acts.acts.reshape(-1, text_acts.acts.shape[-1])
    rows, directions, scored = [], {}, {}
    for name, dec in decomposers.items():
        pooled = text_acts.max_pool(dec.encode(flat).view(*text_acts.acts.shape[:2], -1))  # [n_texts, k]
        positives = {c: torch.tensor([label == c for label in concepts.concepts]) for c in concepts.names}
        train_auc = {c: auroc(pooled[train], p[train]) for c, p in positives.items()}
        top = {c: auc.topk(min(n_candidates, auc.shape[0])).indices for c, auc in train_auc.items()}
        ids = sorted({int(i) for t in top.values() for i in t})
        scores = dict(zip(ids, feature_output_scores_of(model, site, dec, ids, config).tolist(), strict=True))
        scored[output_method(name)] = scores
        for concept, positive in positives.items():
            best = max(top[concept].tolist(), key=lambda f: scores[f])
            held_auc = float(auroc(pooled[held][:, best : best + 1], positive[held])[0])
            ratio = float(log_ratio(pooled[train][:, best : best + 1], positive[train])[0])
            rows.append(Detection(concept, output_method(name), best, float(train_auc[concept][best]), held_auc,
                                  ratio))  # fmt: skip
            directions[concept, output_method(name)] = dec.directions[best].float()
    return rows, directions, scored
