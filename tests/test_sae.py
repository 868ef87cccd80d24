"""The SAE family and MP-SAE: planted recovery, each architecture's mechanics, resume, files, metrics, errors."""

from __future__ import annotations

import json

import pytest
import torch

from interp.decompose import DecomposerError, load_decomposer
from interp.decompose.mp_sae import MPSAE, MPSAEConfig, pursuit_reference, symmetric_gram
from interp.decompose.sae.model import SAE, SAEConfig
from interp.decompose.sae.sparse import JumpReLU, Step
from interp.evaluate.losses import ce_loss_recovered
from interp.evaluate.recon import evaluate, fvu


def planted(d=32, n=8000, atoms=64, active=3, seed=0, offset=0.3):
    """x = codes D + offset: unit atoms D [atoms, d], `active` random atoms per token with weights in [0.5, 2.5]."""
    gen = torch.Generator().manual_seed(seed)
    dictionary = torch.nn.functional.normalize(torch.randn(atoms, d, generator=gen), dim=1)
    idx = torch.stack([torch.randperm(atoms, generator=gen)[:active] for _ in range(n)])
    codes = torch.zeros(n, atoms).scatter_(1, idx, torch.rand(n, active, generator=gen) * 2 + 0.5)
    return codes @ dictionary + offset, dictionary


def hierarchical(d=32, n=8000, parents=8, children=4, seed=0):
    """Parents fire alone or with one of their children; a child fires only with its parent, and its atom is
    correlated with the parent's (cosine ~0.6)."""
    gen = torch.Generator().manual_seed(seed)
    parent_atoms = torch.nn.functional.normalize(torch.randn(parents, d, generator=gen), dim=1)
    noise = torch.nn.functional.normalize(torch.randn(parents, children, d, generator=gen), dim=-1)
    child_atoms = torch.nn.functional.normalize(0.6 * parent_atoms[:, None] + 0.8 * noise, dim=-1)
    atoms = torch.cat([parent_atoms, child_atoms.reshape(-1, d)])
    x = torch.zeros(n, d)
    for _ in range(2):  # two active parents per token, each with a child half of the time
        p = torch.randint(parents, (n,), generator=gen)
        x += (torch.rand(n, 1, generator=gen) + 0.5) * parent_atoms[p]
        c = torch.randint(children, (n,), generator=gen)
        with_child = (torch.rand(n, 1, generator=gen) < 0.5).float()
        x += with_child * (torch.rand(n, 1, generator=gen) + 0.5) * child_atoms[p, c]
    return x, atoms


def recovered(decoder: torch.Tensor, atoms: torch.Tensor, threshold: float = 0.9) -> float:
    cos = torch.nn.functional.normalize(decoder, dim=1) @ atoms.T
    return float((cos.max(dim=0).values >= threshold).float().mean())


TRAIN = {"batch_size": 256, "n_steps": 800, "lr": 3e-3, "dead_tokens": 20_000, "warmup_steps": 20}


@pytest.fixture(scope="module")
def data():
    return planted()


@pytest.fixture(scope="module")
def topk(data):
    return SAE(SAEConfig(architecture="topk", n_features=128, k=3, **TRAIN)).fit(data[0], progress=False)


@pytest.fixture(scope="module")
def mpsae(data):
    return MPSAE(MPSAEConfig(n_features=128, k=3, **{**TRAIN, "lr": 3e-3})).fit(data[0], progress=False)


def test_topk_and_mpsae_recover_planted_atoms(data, topk, mpsae):
    _, atoms = data
    assert recovered(topk.module.W_dec.detach(), atoms) >= 0.9
    assert recovered(mpsae.module.W_dec.detach(), atoms) >= 0.9
    assert evaluate(topk, data[0])["fvu"] < 0.1 and evaluate(mpsae, data[0])["fvu"] < 0.1


@pytest.mark.parametrize("architecture", ["relu", "batchtopk", "jumprelu"])
def test_other_architectures_train_and_reconstruct(data, architecture):
    config = SAEConfig(architecture=architecture, n_features=128, k=3, l1_coeff=0.3, l0_coeff=0.05, **TRAIN)
    sae = SAE(config).fit(data[0], progress=False)
    metrics = evaluate(sae, data[0])
    assert metrics["fvu"] < 0.2, metrics
    assert recovered(sae.module.W_dec.detach(), data[1]) >= 0.7


def test_hierarchical_features_mpsae_vs_topk():
    """The paper's claim on hierarchical data, as it holds here: both find the parents; report children too."""
    x, atoms = hierarchical()
    config = {**TRAIN, "n_steps": 1000}
    topk = SAE(SAEConfig(architecture="topk", n_features=96, k=4, **config)).fit(x, progress=False)
    mp = MPSAE(MPSAEConfig(n_features=96, k=4, **config)).fit(x, progress=False)
    parents, children = atoms[:8], atoms[8:]
    scores = {name: (recovered(m.module.W_dec.detach(), parents, 0.8), recovered(m.module.W_dec.detach(), children, 0.8))
              for name, m in (("topk", topk), ("mpsae", mp))}  # fmt: skip
    print("hierarchical recovery (parents, children) at cos >= 0.8:", scores)
    assert scores["mpsae"][0] >= 0.75 and scores["topk"][0] >= 0.75
    assert (
        scores["mpsae"][1] > scores["topk"][1]
    )  # MP-SAE separates more children (paper: it does better here)


def test_mp_residual_never_grows_and_more_steps_help(data, mpsae):
    x = data[0][:300]
    module = mpsae.module
    residual = x - module.b_dec
    idx, coefs = module.pursue(residual, steps=8)
    norms = [residual.norm(dim=1)]
    for step in range(8):
        residual = residual - coefs[:, step : step + 1] * module.W_dec[idx[:, step]].detach()
        norms.append(residual.norm(dim=1))
    for before, after in zip(norms, norms[1:], strict=False):
        assert (after <= before + 1e-4).all()
    errors = [fvu(x, m.decode(m.encode(x))) for m in (mpsae.with_steps(s) for s in (1, 2, 3, 6, 12))]
    assert all(b <= a + 1e-6 for a, b in zip(errors, errors[1:], strict=False)) and errors[-1] < errors[0]
    loose = mpsae.with_steps(12, residual_threshold=1e6)  # every token already below the threshold: no steps
    assert float(loose.encode(x).abs().sum()) == 0.0


def test_mp_codes_match_a_plain_reference(data, mpsae):
    x = data[0][:40]
    module = mpsae.module
    reference = pursuit_reference(x, module.W_dec.detach(), module.b_dec.detach(), steps=3)
    assert torch.allclose(mpsae.encode(x), reference, atol=1e-4)


@pytest.mark.parametrize("blocks", [1, 3, 4, 7])
def test_symmetric_gram_is_the_full_product(blocks):
    """The Gram matrix from the blocks on and above the diagonal (n not a multiple of blocks) is W W^T."""
    atoms = torch.randn(45, 9, dtype=torch.float64)
    gram = symmetric_gram(atoms, blocks)
    assert torch.allclose(gram, atoms @ atoms.T, rtol=1e-12, atol=1e-12)


def test_mp_score_updates_agree(data, mpsae, monkeypatch):
    """The CPU sparse score update and the gathered one (accelerators) select the same atoms and coefficients."""
    residual = data[0][:64] - mpsae.module.b_dec
    sparse = mpsae.module.pursue(residual, 6)
    monkeypatch.setattr("interp.decompose.mp_sae.SCORE_UPDATE", {})
    gathered = mpsae.module.pursue(residual, 6)
    assert torch.equal(sparse[0], gathered[0]) and torch.allclose(sparse[1], gathered[1], atol=1e-5)
    assert (sparse[1] > 0).all()


def test_jumprelu_threshold_receives_gradient():
    pre = torch.tensor([[0.1, 0.5, 1.0005, 2.0]], requires_grad=True)
    theta = torch.full((4,), 1.0, requires_grad=True)
    out = JumpReLU.apply(pre, theta, 0.01)
    assert torch.equal(out.detach(), torch.tensor([[0.0, 0.0, 1.0005, 2.0]]))
    out.sum().backward()
    assert theta.grad[2] != 0 and theta.grad[[0, 1, 3]].abs().sum() == 0
    theta.grad = None
    Step.apply(pre, theta, 0.01).sum().backward()
    assert theta.grad[2] < 0  # raising the threshold lowers L0


@pytest.fixture(scope="module")
def six_active():
    return planted(d=32, n=8000, atoms=64, active=6)


def _jumprelu_l0(x: torch.Tensor, **settings) -> float:
    config = SAEConfig(architecture="jumprelu", n_features=128, **{**TRAIN, "n_steps": 300, **settings})
    return evaluate(SAE(config).fit(x, progress=False), x)["l0"]


def test_jumprelu_l0_coefficient_controls_sparsity(six_active):
    """The L0 penalty moves the thresholds: a 100x larger coefficient gives a several times sparser SAE (with the
    old bandwidth and threshold learning rate both ended at the same L0, ~45)."""
    loose, tight = _jumprelu_l0(six_active[0], l0_coeff=0.05), _jumprelu_l0(six_active[0], l0_coeff=5.0)
    assert tight < loose / 4, (loose, tight)


@pytest.mark.parametrize("target", [4, 12])
def test_jumprelu_trained_to_a_target_l0_ends_within_10_percent(six_active, target):
    l0 = _jumprelu_l0(six_active[0], target_l0=target, l0_coeff=1.0)
    assert abs(l0 - target) <= 0.1 * target, l0


def test_batchtopk_inference_threshold_gives_the_trained_l0(data):
    sae = SAE(SAEConfig(architecture="batchtopk", n_features=128, k=3, **TRAIN)).fit(data[0], progress=False)
    l0 = evaluate(sae, data[0])["l0"]
    assert abs(l0 - 3) <= 0.3, l0


def test_fvu_definition():
    x = torch.randn(500, 8) * 3 + 10  # a large mean: variance about zero would flatter
    assert fvu(x, x.mean(0).expand_as(x)) == pytest.approx(1.0)
    assert fvu(x, x) == 0.0
    assert ce_loss_recovered(2.0, 2.5, 7.0) == pytest.approx(0.9)


def test_save_load_and_saelens_files(tmp_path, data, topk, mpsae):
    x = data[0][:100]
    topk.save(tmp_path / "topk")
    again = load_decomposer(tmp_path / "topk")
    assert torch.allclose(again.encode(x), topk.encode(x)) and torch.allclose(
        again.decode(again.encode(x)), topk.decode(topk.encode(x))
    )
    cfg = json.loads((tmp_path / "topk" / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["k"] == 3 and cfg["d_in"] == 32 and cfg["d_sae"] == 128
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "topk" / "sae_weights.safetensors"))
    assert weights["W_enc"].shape == (32, 128) and weights["W_dec"].shape == (128, 32)
    assert weights["b_enc"].shape == (128,) and weights["b_dec"].shape == (32,)
    mpsae.save(tmp_path / "mp")
    assert torch.allclose(load_decomposer(tmp_path / "mp").encode(x), mpsae.encode(x), atol=1e-5)
    assert topk.directions.shape == (128, 32) and torch.allclose(topk.directions.norm(dim=1), torch.ones(128))


def test_killed_training_resumes_to_the_same_result(tmp_path, data, monkeypatch):
    import interp.decompose.train as train_module

    x = data[0][:4000]
    config = SAEConfig(
        architecture="topk", n_features=64, k=3, batch_size=256, n_steps=60, checkpoint_every=20
    )
    full = SAE(config).fit(x, progress=False)
    real, calls = train_module.learning_rate_factor, {"n": 0}

    def dying(*args):
        calls["n"] += 1
        if calls["n"] == 45:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(train_module, "learning_rate_factor", dying)
    with pytest.raises(KeyboardInterrupt):
        SAE(config).fit(x, checkpoint_dir=tmp_path, progress=False)
    monkeypatch.setattr(train_module, "learning_rate_factor", real)
    assert json.loads((tmp_path / "trainer.json").read_text())["step"] == 40
    resumed = SAE(config).fit(x, checkpoint_dir=tmp_path, progress=False)
    assert torch.allclose(resumed.module.W_dec, full.module.W_dec, atol=1e-5)
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in full.history], rel=1e-4)


def test_trains_from_a_store(tmp_path, data):
    from interp.store import ActivationStore, StoreManifest

    store = ActivationStore.create(
        tmp_path / "s", StoreManifest("m", "0.resid_post", 32, "float32", "x", 8, True)
    )
    for i in range(4):
        ids = torch.arange(2000)
        store.append(data[0][i * 2000 : (i + 1) * 2000], ids, ids, ids, context_end=i + 1)
    sae = SAE(SAEConfig(architecture="topk", n_features=64, k=3, batch_size=256, n_steps=100)).fit(
        store, progress=False
    )
    assert evaluate(sae, store)["fvu"] < 0.5


def test_bad_input(data, topk):
    with pytest.raises(DecomposerError, match="width 7 but this decomposer was fitted on d_in=32"):
        topk.encode(torch.randn(3, 7))
    bad = data[0][:600].clone()
    bad[5, 2] = float("nan")
    with pytest.raises(DecomposerError, match="NaN or inf"):
        SAE(SAEConfig(n_features=16, k=2, batch_size=64, n_steps=2)).fit(bad, progress=False)
    with pytest.raises(DecomposerError, match="k=40 must be between 1 and n_features=16"):
        SAEConfig(n_features=16, k=40)
    with pytest.raises(DecomposerError, match="k=40 must be between 1 and n_features=16"):
        MPSAEConfig(n_features=16, k=40)
    with pytest.raises(DecomposerError, match="unknown SAE architecture 'temporal'"):
        SAEConfig(architecture="temporal")
    with pytest.raises(DecomposerError, match="batch_size=4096 is larger than the 600 tokens"):
        SAE(SAEConfig(n_features=16, k=2)).fit(data[0][:600], progress=False)


def _dense_topk_loss(module, x: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
    """The dense formulation of the TopK / BatchTopK loss with AuxK: codes [B, d_sae], autograd through all."""
    cfg = module.config
    pre = (x - module.b_dec) @ module.W_enc + module.b_enc
    if cfg.architecture == "topk":
        keep = torch.zeros_like(pre, dtype=torch.bool).scatter_(1, pre.topk(cfg.k, dim=1).indices, True)
    else:
        relu = pre.detach().clamp_min(0)
        keep = relu >= relu.reshape(-1).topk(cfg.k * x.shape[0]).values.min()
    error = x - (pre.clamp_min(0) * keep @ module.W_dec + module.b_dec)
    loss = error.square().sum(-1).mean()
    aux_k = min(cfg.aux_k or module.d_in // 2, int(dead.sum()))
    vals, idx = pre.masked_fill(~dead, float("-inf")).topk(aux_k, dim=1)
    residual = error.detach()
    residual_hat = torch.zeros_like(pre).scatter(1, idx, vals.clamp_min(0)) @ module.W_dec
    variance = (residual - residual.mean(0)).square().sum(-1).mean()
    return loss + cfg.aux_coeff * (residual - residual_hat).square().sum(-1).mean() / variance


@pytest.mark.parametrize("architecture", ["topk", "batchtopk"])
def test_sparse_training_path_has_the_dense_gradients(architecture):
    """TopK / BatchTopK training touches only the kept latents; loss and gradients equal the dense formulation."""
    torch.manual_seed(0)
    config = SAEConfig(architecture=architecture, n_features=96, k=5, aux_k=7)
    module = SAE(config, d_in=24).module.double()
    with torch.no_grad():
        module.b_enc.normal_(0, 0.1)
        module.b_dec.normal_(0, 0.1)
        module.W_enc.add_(torch.randn_like(module.W_enc) * 0.3)
    x = torch.randn(64, 24, dtype=torch.float64)
    dead = torch.rand(96) < 0.5
    loss, stats = module.training_loss(x, dead, 0.0)
    sparse = torch.autograd.grad(loss, [module.W_enc, module.b_enc, module.W_dec, module.b_dec])
    dense_loss = _dense_topk_loss(module, x, dead)
    dense = torch.autograd.grad(dense_loss, [module.W_enc, module.b_enc, module.W_dec, module.b_dec])
    assert float(loss.detach()) == pytest.approx(float(dense_loss.detach()), rel=1e-12)
    for name, a, b in zip(("W_enc", "b_enc", "W_dec", "b_dec"), sparse, dense, strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12), name
    assert stats["l0"] == pytest.approx(5, abs=1e-9)  # BatchTopK: exactly k * B kept over the batch (no ties)


@pytest.mark.parametrize("backward_rows", [256, 7])  # one block of tokens, and blocks with a ragged last one
def test_mp_training_gradients_match_autograd_through_the_plain_loop(backward_rows, monkeypatch):
    """MP-SAE's hand-written backward (chosen atoms only) equals autograd through the plain pursuit loop."""
    monkeypatch.setattr("interp.decompose.mp_sae.BACKWARD_ROWS", backward_rows)
    torch.manual_seed(0)
    module = MPSAE(MPSAEConfig(n_features=48, k=6), d_in=16).module.double()
    with torch.no_grad():
        module.b_dec.normal_(0, 0.1)
    x = torch.randn(50, 16, dtype=torch.float64)
    loss, stats = module.training_loss(x, torch.zeros(48, dtype=torch.bool), 0.0)
    fast = torch.autograd.grad(loss, [module.W_dec, module.b_dec])
    idx, coefs = module.pursue(x - module.b_dec, 6)
    blocked = module.pursue(x - module.b_dec, 6, block_rows=7)  # token blocks do not change the selection
    assert torch.equal(blocked[0], idx) and torch.allclose(blocked[1], coefs, atol=1e-12)
    assert (idx[:, :, None] == idx[:, None, :]).sum() > idx.numel()  # some atoms are chosen twice
    residual = x - module.b_dec
    for step in range(6):
        atom = module.W_dec[idx[:, step]]
        c = (residual * atom).sum(-1).clamp_min(0)
        assert torch.allclose(c, coefs[:, step], atol=1e-10)  # Gram-updated scores = exact inner products
        residual = residual - c[:, None] * atom
    plain_loss = residual.square().sum(-1).mean()
    plain = torch.autograd.grad(plain_loss, [module.W_dec, module.b_dec])
    assert float(loss.detach()) == pytest.approx(float(plain_loss.detach()), rel=1e-10)
    for a, b in zip(fast, plain, strict=True):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10)
    codes = module.codes_from(idx, coefs)
    assert stats["l0"] == pytest.approx(float((codes > 0).sum(1).double().mean()))
