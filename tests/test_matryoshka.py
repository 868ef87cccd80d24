"""Matryoshka BatchTopK: the nested loss (dense reference), parents of a planted hierarchy in the first prefix,
SAELens export, bad widths."""

from __future__ import annotations

import json

import pytest
import torch

from interp.decompose import DecomposerError, load_decomposer
from interp.decompose.sae.model import SAE, SAEConfig


def hierarchy(d=32, n=8000, parents=8, children=4, seed=7):
    """Every token has two parents, each with one of its children half of the time; a child's atom leans towards
    its parent's (cosine ~0.6), so a flat SAE tends to absorb parents into children."""
    gen = torch.Generator().manual_seed(seed)
    parent_atoms = torch.nn.functional.normalize(torch.randn(parents, d, generator=gen), dim=1)
    noise = torch.nn.functional.normalize(torch.randn(parents, children, d, generator=gen), dim=-1)
    child_atoms = torch.nn.functional.normalize(0.6 * parent_atoms[:, None] + 0.8 * noise, dim=-1)
    x = torch.zeros(n, d)
    for _ in range(2):
        p = torch.randint(parents, (n,), generator=gen)
        x += (torch.rand(n, 1, generator=gen) + 0.5) * parent_atoms[p]
        c = torch.randint(children, (n,), generator=gen)
        with_child = (torch.rand(n, 1, generator=gen) < 0.5).float()
        x += with_child * (torch.rand(n, 1, generator=gen) + 0.5) * child_atoms[p, c]
    return x, parent_atoms, child_atoms.reshape(-1, d)


TRAIN = {"batch_size": 256, "n_steps": 300, "lr": 3e-3, "dead_tokens": 20_000, "warmup_steps": 20}


def test_nested_loss_equals_the_dense_mean_over_prefixes():
    torch.manual_seed(0)
    config = SAEConfig(architecture="matryoshka", n_features=48, k=4, matryoshka_widths=(6, 18))
    module = SAE(config, d_in=16).module.double()
    with torch.no_grad():
        module.b_enc.normal_(0, 0.1)
        module.b_dec.normal_(0, 0.1)
    x = torch.randn(40, 16, dtype=torch.float64)
    loss, _ = module.training_loss(x, torch.zeros(48, dtype=torch.bool), 0.0)
    pre = (x - module.b_dec) @ module.W_enc + module.b_enc
    relu = pre.clamp_min(0)
    cut = relu.flatten().topk(4 * 40).values[-1]
    codes = relu * (relu >= cut)
    losses = [((codes[:, :w] @ module.W_dec[:w] + module.b_dec - x) ** 2).sum(-1).mean() for w in (6, 18, 48)]
    reference = sum(losses) / 3
    assert float(loss.detach()) == pytest.approx(float(reference.detach()), rel=1e-10)
    grads = torch.autograd.grad(loss, [module.W_enc, module.W_dec, module.b_dec])
    ref_grads = torch.autograd.grad(reference, [module.W_enc, module.W_dec, module.b_dec])
    for a, b in zip(grads, ref_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10)


def recovered_where(decoder: torch.Tensor, atoms: torch.Tensor, threshold: float = 0.8) -> torch.Tensor:
    """For each atom, the index of its best latent, or -1 when none reaches the cosine threshold."""
    cos = torch.nn.functional.normalize(decoder, dim=1) @ atoms.T
    best, where = cos.max(dim=0)
    return torch.where(best >= threshold, where, -1)


def test_parents_of_a_planted_hierarchy_settle_in_the_first_prefix(tmp_path):
    x, parents, children = hierarchy()
    config = SAEConfig(architecture="matryoshka", n_features=64, k=4, matryoshka_widths=(8, 24), **TRAIN)
    sae = SAE(config).fit(x, progress=False)
    where = recovered_where(sae.module.W_dec.detach(), parents)
    in_first = ((where >= 0) & (where < 8)).float().mean()
    print("parents recovered in the first 8 latents:", float(in_first), where.tolist())
    assert in_first >= 0.75
    # a flat BatchTopK SAE on the same data, same size: its first 8 latents hold no more parents than chance
    flat = SAE(SAEConfig(architecture="batchtopk", n_features=64, k=4, **TRAIN)).fit(x, progress=False)
    flat_where = recovered_where(flat.module.W_dec.detach(), parents)
    assert ((flat_where >= 0) & (flat_where < 8)).float().mean() < in_first
    # inference: the batch threshold (as BatchTopK) gives about k latents per token
    assert 2 <= float((sae.encode(x) > 0).sum(1).float().mean()) <= 6
    sae.save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu" and cfg["metadata"]["interp_architecture"] == "matryoshka"
    again = load_decomposer(tmp_path / "m")
    assert again.config.widths == (8, 24, 64) and torch.equal(again.encode(x[:100]), sae.encode(x[:100]))


@pytest.mark.parametrize("widths", [(16, 8), (8, 100), (8, 8)])
def test_bad_widths_are_refused(widths):
    with pytest.raises(DecomposerError, match="matryoshka_widths"):
        SAEConfig(architecture="matryoshka", n_features=64, k=4, matryoshka_widths=widths)


def test_default_widths_double():
    assert SAEConfig(architecture="matryoshka", n_features=256).widths == (16, 32, 64, 128, 256)


def test_training_loss_equals_saelens_matryoshka_on_its_golden_weights():
    """SAELens' MatryoshkaBatchTopKTrainingSAE (tests/golden/make_golden.py) sums the prefixes' MSEs; interp takes
    their mean (as dictionary_learning's equal group weights): same selection, same prefix reconstructions."""
    from pathlib import Path

    from safetensors.torch import load_file

    folder = Path(__file__).parent / "golden" / "saelens_training" / "matryoshka"
    weights = load_file(str(folder / "sae_weights.safetensors"))
    want = load_file(str(folder / "expected_loss.safetensors"))
    x = load_file(str(folder.parent.parent / "input.safetensors"))["x"]
    config = SAEConfig(architecture="matryoshka", n_features=128, k=8, matryoshka_widths=(16, 48, 128))
    module = SAE(config, d_in=64).module
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(module, name).copy_(weights[name])
    loss, stats = module.training_loss(x, torch.zeros(128, dtype=torch.bool), 0.0)
    assert float(loss.detach()) * 3 == pytest.approx(float(want["loss"]), rel=1e-5)
    assert stats["mse"] == pytest.approx(float(want["mse_loss"]), rel=1e-5)
