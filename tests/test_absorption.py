"""Absorption (first-letter task) on planted tokens whose letter direction is known."""

from __future__ import annotations

import torch

from interp.evaluate.absorption import LetterData, absorption, letter_of

N_LETTERS, PER_LETTER, D = 4, 80, 64


class Lookup:
    """A planted dictionary: decoder rows `W [m, d]`, codes looked up per planted token (exact reconstruction)."""

    def __init__(self, x, codes, w):
        self.x, self.codes, self.w = x, codes, w

    def encode(self, x):
        return self.codes[torch.cdist(x, self.x).argmin(1)]

    def decode(self, c):
        return c @ self.w


def planted(absorb: bool):
    """Tokens x = 4 e_letter + 3 u_token. Clean: a latent per letter direction and one per token remainder.
    Absorbing: half of letter 0's tokens get one token-specific latent along their whole x instead."""
    gen = torch.Generator().manual_seed(0)
    n = N_LETTERS * PER_LETTER
    letters = torch.arange(N_LETTERS).repeat_interleave(PER_LETTER)
    u = torch.randn(n, D, generator=gen)
    u[:, :N_LETTERS] = 0
    u = u / u.norm(dim=1, keepdim=True)
    e = torch.eye(D)[letters]
    x = 4 * e + 3 * u
    w = torch.cat([torch.eye(D)[:N_LETTERS], u])  # [4 + n, d]
    codes = torch.zeros(n, N_LETTERS + n)
    codes[torch.arange(n), letters] = 4.0
    codes[torch.arange(n), N_LETTERS + torch.arange(n)] = 3.0
    if absorb:
        taken = (letters == 0) & (torch.arange(n) % 2 == 0)
        idx = taken.nonzero()[:, 0]
        w[N_LETTERS + idx] = x[idx] / x[idx].norm(dim=1, keepdim=True)
        codes[idx] = 0
        codes[idx, N_LETTERS + idx] = x[idx].norm(dim=1)
    assert torch.allclose(codes @ w, x, atol=1e-5)
    test = torch.rand(n, generator=gen) < 0.4
    return LetterData(x, letters, test), Lookup(x, codes, w)


def test_a_clean_letter_latent_scores_no_absorption():
    """Catches a fraction that counts the main latent's own projection or token remainders as absorbed."""
    data, dictionary = planted(absorb=False)
    out = absorption(data, dictionary)
    assert out["absorption_letters"] == N_LETTERS
    assert out["absorption_fraction"] < 0.02
    assert out["full_absorption_rate"] == 0
    assert out["absorption_n_main"] == 1


def test_a_token_latent_that_absorbs_the_letter_is_counted():
    """Half of letter 0's held-out tokens are fully absorbed: per-letter mean ~0.5, over 4 letters ~0.125.
    Catches a score blind to absorbing latents (0) or one that ignores the main latent (near 1)."""
    data, dictionary = planted(absorb=True)
    out = absorption(data, dictionary)
    assert 0.06 < out["absorption_fraction"] < 0.2
    assert 0.06 < out["full_absorption_rate"] < 0.2


def test_letter_of_keeps_alphabetic_tokens_with_their_first_letter():
    assert letter_of("\u2581Apple") == 0 and letter_of(" zebra") == 25 and letter_of("Gx") == 6
    assert letter_of("a") == -1 and letter_of(" 12") == -1 and letter_of("caf\u00e9") == -1


def test_letter_probes_fitted_once_serve_every_dictionary():
    """The probes depend on the data only: fitted once, they give each dictionary the scores of a fit per call,
    and each points along its own letter (catches a shared probe fitted on another letter's labels, or scores that
    differ once probes are shared)."""
    from interp.evaluate.absorption import letter_probes

    data, absorbing = planted(absorb=True)
    _, clean = planted(absorb=False)
    probes = letter_probes(data)
    assert [p.c for p in probes] == list(range(N_LETTERS))
    assert all(int(probe.p[:N_LETTERS].argmax()) == probe.c and probe.p[probe.c] > 0.5 for probe in probes)
    for dictionary in (absorbing, clean):
        assert absorption(data, dictionary, probes=probes) == absorption(data, dictionary)
