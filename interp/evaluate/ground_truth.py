"""Ground-truth metrics of a decomposer on synthetic data (SynthSAEBench's definitions, SAELens `synthetic.evals`).

With unit latent directions D `[n_latents, d]` and true features T `[n_true, d]`, C = |cos(D, T)| `[n_latents,
n_true]`:

- mcc: the Hungarian one-to-one matching on C (scipy's linear_sum_assignment), mean matched |cos|
  (O'Neill et al.; min(n_latents, n_true) pairs);
- uniqueness: distinct best-matching true features (argmax over C's rows) / n_latents;
- precision / recall / f1 / accuracy: each latent is a detector of its best-matching true feature (latent fires:
  code > 0; feature fires: true code > 0), per-latent values (0 where undefined), averaged over all latents;
- explained_variance: 1 - E||x - x_hat||^2 / E||x - E x||^2; shrinkage: mean ||x_hat|| / ||x||;
- l0 (latents > 0 per sample), true_l0, dead_fraction (latents that never fire on the samples);
- parent_* / child_*: for the hierarchy's parents (features with children) and children (features with a
  parent), `_cos` the mean over those true features of their best |cos| with any latent, and `_f1` the mean F1 of
  that best latent as a detector of the feature (how well a parent is still detected when its children are
  absorbed, and the reverse).
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from tqdm.auto import tqdm

from interp.evaluate.synthetic import SyntheticModel


def abs_cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|cos| between the rows of `a [na, d]` and `b [nb, d]`, `[na, nb]`."""
    a = torch.nn.functional.normalize(a.float(), dim=1)
    b = torch.nn.functional.normalize(b.float().to(a.device), dim=1)
    return (a @ b.T).abs()


def mcc(directions: torch.Tensor, true_features: torch.Tensor) -> float:
    """Mean |cos| of the optimal one-to-one matching of latents to true features."""
    cos = abs_cosines(directions, true_features).cpu()
    rows, cols = linear_sum_assignment(1 - cos.double().numpy())
    return float(cos[torch.from_numpy(rows), torch.from_numpy(cols)].mean())


def uniqueness(directions: torch.Tensor, true_features: torch.Tensor) -> float:
    """Distinct best-matching true features per latent."""
    best = abs_cosines(directions, true_features).argmax(1)
    return best.unique().numel() / max(directions.shape[0], 1)


def detection_scores(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-detector precision, recall and F1 from counts `[m]` (0 where undefined)."""
    precision = torch.where(tp + fp > 0, tp / (tp + fp).clamp_min(1), torch.zeros_like(tp))
    recall = torch.where(tp + fn > 0, tp / (tp + fn).clamp_min(1), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-12),
                     torch.zeros_like(tp))  # fmt: skip
    return {"precision": precision, "recall": recall, "f1": f1}


class _Counts:
    """Streaming sums over batches of (x, x_hat, latent codes, true codes)."""

    def __init__(self, best_true: torch.Tensor, best_latent: torch.Tensor, n_latents: int, d: int, device):
        self.best_true, self.best_latent = best_true, best_latent  # [n_latents], [n_true]
        zeros = lambda m: torch.zeros(m, dtype=torch.float64, device=device)  # noqa: E731
        self.tp, self.fp, self.fn, self.tn = (zeros(n_latents) for _ in range(4))
        self.true_tp, self.true_fp, self.true_fn = (zeros(best_latent.numel()) for _ in range(3))
        self.fired = torch.zeros(n_latents, dtype=torch.bool, device=device)
        self.sum_x, self.n = zeros(d), 0
        self.sum_x2 = self.sq_error = self.shrink = self.l0 = self.true_l0 = 0.0

    def add(self, x: torch.Tensor, x_hat: torch.Tensor, codes: torch.Tensor, true: torch.Tensor) -> None:
        fires, true_fires = codes > 0, true > 0
        gt = true_fires[:, self.best_true]  # [B, n_latents]: each latent's matched feature fires
        self.tp += (fires & gt).sum(0)
        self.fp += (fires & ~gt).sum(0)
        self.fn += (~fires & gt).sum(0)
        self.tn += (~fires & ~gt).sum(0)
        latent = fires[:, self.best_latent]  # [B, n_true]: each feature's best latent fires
        self.true_tp += (latent & true_fires).sum(0)
        self.true_fp += (latent & ~true_fires).sum(0)
        self.true_fn += (~latent & true_fires).sum(0)
        self.fired |= fires.any(0)
        self.sum_x += x.sum(0).double()
        self.sum_x2 += float(x.double().square().sum())
        self.sq_error += float((x - x_hat).double().square().sum())
        self.shrink += float((x_hat.norm(dim=1) / x.norm(dim=1).clamp_min(1e-6)).sum())
        self.l0 += float(fires.sum())
        self.true_l0 += float(true_fires.sum())
        self.n += x.shape[0]


@torch.no_grad()
def ground_truth_metrics(decomposer, model: SyntheticModel, n_samples: int = 20_000, batch_size: int = 2048,
                         seed: int = 1_000_003, progress: bool = False) -> dict[str, float]:  # fmt: skip
    """The metrics of the module docstring for `decomposer` (encode / decode / directions) on `n_samples` fresh
    samples of `model` drawn from `seed`."""
    device = model.device
    directions = decomposer.directions.float().to(device)  # [n_latents, d]
    cos = abs_cosines(directions, model.features)  # [n_latents, n_true]
    best_true, best_cos = cos.argmax(1), cos.max(0)  # per latent; per true feature (values, latents)
    counts = _Counts(best_true, best_cos.indices, directions.shape[0], model.config.d, device)
    gen = model.generator(seed)
    for start in tqdm(
        range(0, n_samples, batch_size), desc="ground truth", disable=not progress, leave=False
    ):
        x, true = model.sample(min(batch_size, n_samples - start), gen)
        codes = decomposer.encode(x).to(device)
        counts.add(x, decomposer.decode(codes).to(device), codes, true)
    per_latent = detection_scores(counts.tp, counts.fp, counts.fn)
    per_true = detection_scores(counts.true_tp, counts.true_fp, counts.true_fn)
    n = counts.n
    variance = counts.sum_x2 / n - float((counts.sum_x / n).square().sum())
    out = {
        "mcc": mcc(directions, model.features),
        "uniqueness": best_true.unique().numel() / directions.shape[0],
        **{k: float(v.mean()) for k, v in per_latent.items()},
        "accuracy": float(((counts.tp + counts.tn) / n).mean()),
        "explained_variance": 1 - (counts.sq_error / n) / max(variance, 1e-12),
        "shrinkage": counts.shrink / n,
        "l0": counts.l0 / n,
        "true_l0": counts.true_l0 / n,
        "dead_fraction": float((~counts.fired).float().mean()),
    }
    out["fvu"] = 1 - out["explained_variance"]
    for name, mask in (("parent", model.is_parent), ("child", model.is_child)):
        if bool(mask.any()):
            out[f"{name}_cos"] = float(best_cos.values[mask].mean())
            out[f"{name}_f1"] = float(per_true["f1"][mask].mean())
    return out
