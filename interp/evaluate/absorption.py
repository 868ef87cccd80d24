"""Feature absorption on the first-letter task (SAEBench's definition, after Chanin et al.).

Data: the site's activations of single vocabulary tokens (one row per distinct alphabetic token of the store,
its first occurrence), labelled by the token's first letter; train / held-out split by token.

Per letter c (26 binary tasks, c vs the rest):
- a logistic probe on the raw activations (train); its unit direction p `[d]`;
- main latents by k-sparse probing: latents ranked by mean code difference (c vs rest, train); k grows from 1
  while a probe on the top k+1 latents beats the top-k probe's held-out F1 by more than `split_threshold`;
- on the held-out tokens of c that the probe classifies correctly, each latent's probe projection
  a_j * (W_j . p), with W_j = decode(e_j) - decode(0) the latent's decoder row `[d]` (a unit row gives SAEBench's
  a_j * cos_j), and the input's projection x . p:
  absorption fraction (SAEBench, Demian Till's variant): 0 when the main latents carry all of x . p or the top
  `max_absorbers` other latents with cos >= 0.1 and positive projection carry less than 40% of it; 1 when the
  main latents carry none; else absorbed / (absorbed + main) with absorbed = min(their sum, x . p - main);
  full absorption: every main latent is zero, the top projecting latent has cos >= 0.025, x . p > 0 and that
  latent carries >= 40% of x . p.
Scores: the mean over letters of the per-token mean (`absorption_fraction`, `full_absorption_rate`) and the
mean number of main latents (`absorption_n_main`). SAEBench runs this on models of >= 1B parameters, where the
first letter is linearly readable; below that the probes are weak and the task says little.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import torch

from interp.store import ActivationStore

EPS = 1e-8


class TooFewTokens(ValueError):
    """The store has too few distinct alphabetic tokens per letter for the task."""


@dataclass(frozen=True)
class AbsorptionConfig:
    split_threshold: float = 0.03  # F1 gain that adds a latent to the main latents (SAEBench's tau_fs)
    max_main: int = 5  # at most this many main latents per letter
    fraction_cos: float = 0.1  # cos(latent, probe) for a potential absorber (absorption fraction)
    full_cos: float = 0.025  # cos of the top projecting latent (full absorption)
    proportion: float = 0.4  # share of x . p the absorbers must carry (both metrics)
    max_absorbers: int = 3
    min_tokens: int = 4  # a letter needs this many train and held-out tokens
    test_fraction: float = 0.3
    seed: int = 0


@dataclass
class LetterData:
    """Activations `acts [n, d]` of distinct tokens, first-letter labels `[n]` (0-25), held-out mask `[n]`."""

    acts: torch.Tensor
    letters: torch.Tensor
    test: torch.Tensor


def letter_of(text: str) -> int:
    """0-25 for a token whose text (leading space or SentencePiece marker stripped) is >= 2 ASCII letters."""
    word = text.lstrip(" \u2581\u0120")
    if len(word) < 2 or not word.isascii() or not word.isalpha():
        return -1
    return string.ascii_lowercase.index(word[0].lower())


def store_letter_data(store: ActivationStore, decode_token, max_tokens: int, seed: int = 0,
                      test_fraction: float = 0.3) -> LetterData:  # fmt: skip
    """The first occurrence of each alphabetic token id of `store` (up to `max_tokens` of them);
    `decode_token(id) -> str`."""
    ids = torch.cat([store.load_shard(i)["token_ids"].long() for i in range(store.n_shards)])
    unique, inverse = torch.unique(ids, return_inverse=True)
    first = torch.full((len(unique),), len(ids), dtype=torch.long).scatter_reduce(
        0, inverse, torch.arange(len(ids)), "amin"
    )
    letters = torch.tensor([letter_of(decode_token(int(t))) for t in unique.tolist()], dtype=torch.long)
    keep = letters >= 0
    rows, letters = first[keep], letters[keep]
    if len(rows) == 0:
        raise TooFewTokens("absorption skipped: the store holds no token of >= 2 ASCII letters")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(rows), generator=gen)[:max_tokens]
    rows, letters = rows[order], letters[order]
    test = torch.rand(len(rows), generator=gen) < test_fraction
    sort = rows.argsort()
    return LetterData(store.read_rows(rows[sort]), letters[sort], test[sort])


def _probe(x: torch.Tensor, y: torch.Tensor):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=1000, class_weight="balanced").fit(x.double().numpy(), y.numpy())


def _f1(probe, x: torch.Tensor, y: torch.Tensor) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y.numpy(), probe.predict(x.double().numpy()), zero_division=0))


def main_latents(codes: torch.Tensor, y: torch.Tensor, train: torch.Tensor, config: AbsorptionConfig) -> list:
    """k-sparse probing: the top latents by mean difference, grown while the held-out F1 gains > threshold."""
    diff = codes[train & y].mean(0) - codes[train & ~y].mean(0)
    order = diff.argsort(descending=True)[: config.max_main + 1].tolist()
    test = ~train
    best = _f1(_probe(codes[train][:, order[:1]], y[train]), codes[test][:, order[:1]], y[test])
    k = 1
    while k < min(config.max_main, len(order)):
        f1 = _f1(_probe(codes[train][:, order[: k + 1]], y[train]), codes[test][:, order[: k + 1]], y[test])
        if f1 - best <= config.split_threshold:
            break
        best, k = f1, k + 1
    return order[:k]


def token_scores(x: torch.Tensor, codes: torch.Tensor, rows: torch.Tensor, p: torch.Tensor,
                 main: list, config: AbsorptionConfig) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(absorption fraction `[n]`, full absorption `[n]` bool) of tokens with activations `x [n, d]`, codes
    `[n, m]`, decoder rows `rows [m, d]` and unit probe direction `p [d]`."""
    along = rows @ p  # [m]
    cos = along / rows.norm(dim=1).clamp_min(EPS)
    proj = codes * along  # [n, m]
    total = x @ p  # [n]
    is_main = torch.zeros(codes.shape[1], dtype=torch.bool)
    is_main[main] = True
    main_proj = proj[:, is_main].sum(1)
    absorber = proj.masked_fill(is_main | (cos < config.fraction_cos), 0).clamp_min(0)
    top = absorber.topk(min(config.max_absorbers, absorber.shape[1]), dim=1).values.sum(1)
    unaccounted = total - main_proj
    absorbed = torch.minimum(top, unaccounted)
    partial = (absorbed / (absorbed + main_proj).clamp_min(EPS)).clamp(0, 1)
    fraction = torch.where(main_proj <= 0, torch.ones_like(total), partial)
    none = (main_proj >= total) | (top / total.clamp_min(EPS) < config.proportion) | (total <= 0)
    fraction = torch.where(none, torch.zeros_like(total), fraction)
    best = proj.argmax(1)
    full = ((codes[:, is_main].abs() < EPS).all(1) & (cos[best] >= config.full_cos) & (total > 0)
            & (proj.gather(1, best[:, None])[:, 0] / total.clamp_min(EPS) >= config.proportion))  # fmt: skip
    return fraction, full


@torch.no_grad()
def decoder_rows(decomposer, n_latents: int, d: int) -> torch.Tensor:
    """Each latent's decoder contribution `[n_latents, d]`: decode(e_j) - decode(0)."""
    eye = torch.eye(n_latents)
    zero = decomposer.decode(torch.zeros(1, n_latents)).float().cpu()
    return torch.cat([decomposer.decode(eye[i : i + 512]).float().cpu() - zero
                      for i in range(0, n_latents, 512)])  # fmt: skip


@dataclass
class LetterProbe:
    """One letter's logistic probe on the raw activations: the letter `c`, its unit direction `p [d]`, its
    predictions on every token `[n]` (bool) and its held-out F1. They depend on the data only, not on a
    decomposer: fitted once per store and shared."""

    c: int
    p: torch.Tensor
    predicted: torch.Tensor
    f1: float


def letter_probes(data: LetterData, config: AbsorptionConfig = AbsorptionConfig()) -> list[LetterProbe]:
    """The probes of the letters with `min_tokens` train and held-out tokens."""
    x, train = data.acts.float(), ~data.test
    probes = []
    for c in range(26):
        y = data.letters == c
        if min(int((y & train).sum()), int((y & data.test).sum())) < config.min_tokens:
            continue
        probe = _probe(x[train], y[train])
        p = torch.tensor(probe.coef_[0], dtype=torch.float32)
        predicted = torch.from_numpy(probe.predict(x.double().numpy())).bool()
        probes.append(LetterProbe(c, p / p.norm().clamp_min(EPS), predicted,
                                  _f1(probe, x[data.test], y[data.test])))  # fmt: skip
    return probes


@torch.no_grad()
def absorption(data: LetterData, decomposer, config: AbsorptionConfig = AbsorptionConfig(),
               probes: list[LetterProbe] | None = None) -> dict:  # fmt: skip
    """absorption_fraction, full_absorption_rate, absorption_n_main, absorption_letters, absorption_probe_f1;
    `probes`: letter_probes(data, config), when already fitted."""
    x = data.acts.float()
    codes = decomposer.encode(x).float().cpu()
    rows = decoder_rows(decomposer, codes.shape[1], x.shape[1])
    train = ~data.test
    probes = letter_probes(data, config) if probes is None else probes
    fractions, fulls, n_main = [], [], []
    for probe in probes:
        y = data.letters == probe.c
        main = main_latents(codes, y, train, config)
        hit = data.test & y & probe.predicted  # held-out tokens of c the probe gets right
        if not hit.any():
            continue
        fraction, full = token_scores(x[hit], codes[hit], rows, probe.p, main, config)
        fractions.append(fraction.mean())
        fulls.append(full.float().mean())
        n_main.append(len(main))
    if not fractions:
        raise TooFewTokens(
            f"absorption skipped: no letter has {config.min_tokens} train and held-out tokens the probe "
            "classifies; capture more tokens (interp capture --n-tokens) or pass more --absorption-tokens"
        )
    return {"absorption_fraction": float(torch.stack(fractions).mean()),
            "full_absorption_rate": float(torch.stack(fulls).mean()),
            "absorption_n_main": sum(n_main) / len(n_main), "absorption_letters": float(len(fractions)),
            "absorption_probe_f1": sum(probe.f1 for probe in probes) / len(probes)}  # fmt: skip


def letter_tensors(data: LetterData, probes: list[LetterProbe]) -> dict[str, torch.Tensor]:
    """The letter data and its probes as named tensors (to keep them on disk); from_letter_tensors reverses it."""
    d = data.acts.shape[1]
    return {"acts": data.acts, "letters": data.letters, "test": data.test,
            "probe_c": torch.tensor([p.c for p in probes], dtype=torch.long),
            "probe_p": torch.stack([p.p for p in probes]) if probes else torch.zeros(0, d),
            "probe_predicted": torch.stack([p.predicted for p in probes]) if probes
            else torch.zeros(0, len(data.letters), dtype=torch.bool),
            "probe_f1": torch.tensor([p.f1 for p in probes], dtype=torch.float64)}  # fmt: skip


def from_letter_tensors(t: dict[str, torch.Tensor]) -> tuple[LetterData, list[LetterProbe]]:
    """(LetterData, probes) from letter_tensors' dict."""
    probes = [LetterProbe(int(c), p, predicted, float(f1)) for c, p, predicted, f1
              in zip(t["probe_c"], t["probe_p"], t["probe_predicted"], t["probe_f1"], strict=True)]  # fmt: skip
    return LetterData(t["acts"], t["letters"], t["test"]), probes
