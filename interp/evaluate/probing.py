"""Sparse probing and TPP (SAEBench's definitions) on mean-pooled text activations.

Each text is one row: the site's activations and the decomposer's codes, each averaged over the text's tokens (BOS
and padding excluded). Every class c of a labelled set is a binary task (c vs the rest, negatives subsampled to
as many as the positives, on train and on held-out texts alike; chance = 0.5):

- sparse probing: the k latents with the largest |mean code on c - mean code on the rest| on train; a logistic
  probe on those k; held-out accuracy (`probe_k{k}`). Beside it the probe on all d dimensions of the site's
  activations (`probe_full`, the ceiling) and on k random latents (`probe_random_k{k}`). Averaged over classes.
- TPP (targeted probe perturbation): probes on the full activations per class; for each class i, ablate (zero)
  the n latents most tied to i (largest mean difference) and subtract their contribution decode(c) -
  decode(c with them zeroed) from the pooled activations. TPP = mean_i drop_i(i) - mean_{j != i} drop_j(i), the
  accuracy drop of probe i minus the mean drop of the other probes (higher: the latents are specific to i).

Probes are scikit-learn's LogisticRegression on standardized inputs, as SAEBench.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interp.models import LoadedModel
from interp.models.hooks import backend_runner
from interp.models.sites import Site

PROBE_KS = (1, 2, 5, 20)


@dataclass
class Pooled:
    """Mean-pooled activations `acts [n, d]`, codes `codes [n, n_latents]`, integer labels `[n]`, and the index
    lists `train` / `test` into them."""

    acts: torch.Tensor
    codes: torch.Tensor
    labels: torch.Tensor
    train: torch.Tensor
    test: torch.Tensor


@dataclass
class TextTokens:
    """The site's activations `acts [n_tokens, d]` of every text's tokens (BOS and padding excluded), the text
    each row belongs to `owner [n_tokens]`, and the number of texts: computed once, pooled per decomposer."""

    acts: torch.Tensor
    owner: torch.Tensor
    n_texts: int


@torch.no_grad()
def text_tokens(model: LoadedModel, site: Site, texts: list[str], max_len: int = 64,
                batch_size: int = 16) -> TextTokens:  # fmt: skip
    """The model run over `texts` (BOS + up to max_len - 1 tokens each), kept at `site` for every token."""
    run = backend_runner("torch")
    acts, owners = [], []
    for start in range(0, len(texts), batch_size):
        ids = model.tokenizer(texts[start : start + batch_size], add_special_tokens=False)["input_ids"]
        ids = [[model.bos_token_id, *row[: max_len - 1]] for row in ids]
        tokens = torch.full((len(ids), max_len), model.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(ids), max_len, dtype=torch.bool)
        for row, seq in enumerate(ids):  # pad the texts of one batch
            tokens[row, : len(seq)] = torch.tensor(seq)
            mask[row, 1 : len(seq)] = True
        x = run(model, tokens.to(model.device), [site])[site].float()  # [B, T, d]
        acts.append(x[mask.to(x.device)].cpu())
        owners.append(mask.nonzero()[:, 0] + start)
    return TextTokens(torch.cat(acts), torch.cat(owners), len(texts))


@torch.no_grad()
def pool(tokens: TextTokens, decomposer, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean activations `[n_texts, d]`, mean codes `[n_texts, n_latents]`) of each text's tokens."""
    count = torch.bincount(tokens.owner, minlength=tokens.n_texts).clamp_min(1)[:, None].float()
    acts = torch.zeros(tokens.n_texts, tokens.acts.shape[1]).index_add_(0, tokens.owner, tokens.acts)
    codes = None
    for start in range(0, len(tokens.acts), chunk):
        c = decomposer.encode(tokens.acts[start : start + chunk]).float().cpu()  # [chunk, n_latents]
        codes = torch.zeros(tokens.n_texts, c.shape[1]) if codes is None else codes
        codes.index_add_(0, tokens.owner[start : start + chunk], c)
    if codes is None:
        raise ValueError("no text of the probing set has a token after BOS; pass texts that are not empty")
    return acts / count, codes / count


def pool_texts(model: LoadedModel, site: Site, texts: list[str], decomposer, max_len: int = 64,
               batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(mean activations `[n, d]`, mean codes `[n, n_latents]`) of `texts` (BOS + up to max_len - 1 tokens)."""
    return pool(text_tokens(model, site, texts, max_len, batch_size), decomposer)


def balanced(
    labels: torch.Tensor, index: torch.Tensor, cls: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, binary targets) of `index`: every row of class `cls` and as many rows of the others, drawn at random."""
    pos, neg = index[labels[index] == cls], index[labels[index] != cls]
    gen = torch.Generator().manual_seed(seed)
    neg = neg[torch.randperm(neg.numel(), generator=gen)[: pos.numel()]]
    rows = torch.cat([pos, neg])
    return rows, torch.cat([torch.ones(pos.numel()), torch.zeros(neg.numel())])


def fit_probe(x: torch.Tensor, y: torch.Tensor):
    """A logistic probe (standardized inputs) on `x [n, m]`, binary `y [n]`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(
        x.double().numpy(), y.numpy()
    )


def accuracy(probe, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((torch.from_numpy(probe.predict(x.double().numpy())) == y).double().mean())


def mean_difference(codes: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """|mean over positives - mean over negatives| per latent `[n_latents]`."""
    positive = y > 0
    return (codes[positive].mean(0) - codes[~positive].mean(0)).abs()


def sparse_probing(data: Pooled, ks: tuple[int, ...] = PROBE_KS, seed: int = 0) -> dict[str, float]:
    """probe_full, probe_k{k} and probe_random_k{k} averaged over the classes (module docstring)."""
    sums: dict[str, float] = {}
    classes = data.labels.unique().tolist()
    n_latents = data.codes.shape[1]
    for cls in classes:
        train, y_train = balanced(data.labels, data.train, cls, seed)
        test, y_test = balanced(data.labels, data.test, cls, seed + 1)
        scores = {"probe_full": accuracy(fit_probe(data.acts[train], y_train), data.acts[test], y_test)}
        ranked = mean_difference(data.codes[train], y_train).argsort(descending=True)
        gen = torch.Generator().manual_seed(seed + cls)
        for k in (k for k in ks if k <= n_latents):
            for name, chosen in ((f"probe_k{k}", ranked[:k]),
                                 (f"probe_random_k{k}", torch.randperm(n_latents, generator=gen)[:k])):  # fmt: skip
                x_train, x_test = data.codes[train][:, chosen], data.codes[test][:, chosen]
                scores[name] = accuracy(fit_probe(x_train, y_train), x_test, y_test)
        for name, value in scores.items():
            sums[name] = sums.get(name, 0.0) + value / len(classes)
    return sums


@torch.no_grad()
def tpp(data: Pooled, decomposer, n_ablate: int = 20, seed: int = 0) -> dict[str, float]:
    """TPP score with `n_ablate` latents per class, and its two parts (module docstring)."""
    classes = data.labels.unique().tolist()
    probes, tests, chosen = [], [], []
    for cls in classes:
        train, y_train = balanced(data.labels, data.train, cls, seed)
        probes.append(fit_probe(data.acts[train], y_train))
        tests.append(balanced(data.labels, data.test, cls, seed + 1))
        chosen.append(mean_difference(data.codes[train], y_train).argsort(descending=True)[:n_ablate])
    clean = [accuracy(p, data.acts[rows], y) for p, (rows, y) in zip(probes, tests, strict=True)]
    drops = torch.zeros(len(classes), len(classes))  # [ablated class i, probe j]
    for i, latents in enumerate(chosen):
        ablated_codes = data.codes.clone()
        ablated_codes[:, latents] = 0
        shift = (decomposer.decode(data.codes) - decomposer.decode(ablated_codes)).float().cpu()
        acts = data.acts - shift
        for j, (probe, (rows, y)) in enumerate(zip(probes, tests, strict=True)):
            drops[i, j] = clean[j] - accuracy(probe, acts[rows], y)
    own = drops.diag()
    others = (drops.sum(1) - own) / max(len(classes) - 1, 1)
    return {f"tpp_n{n_ablate}": float((own - others).mean()), f"tpp_own_drop_n{n_ablate}": float(own.mean()),
            f"tpp_other_drop_n{n_ablate}": float(others.mean())}  # fmt: skip
