"""SNMF: planted-feature recovery, the algorithm's invariants, out-of-core == in-memory, resume, files, errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from interp.decompose import DecomposerError, load_decomposer
from interp.decompose.snmf import SNMF, SNMFConfig, multiplicative_update, winner_take_all
from interp.store import ActivationStore, StoreManifest


def planted(
    d: int = 512, n: int = 4000, k: int = 16, sparsity: float = 0.01, noise: float = 0.01, seed: int = 0
):
    """x = (Z* Y*)^T + noise: Z* [d, k] keeps ceil(sparsity * d) mixed-sign neurons per feature, Y* sparse >= 0."""
    gen = torch.Generator().manual_seed(seed)
    m = math.ceil(sparsity * d)
    z = torch.zeros(d, k)
    for j in range(k):  # a loop over planted features, building the test data
        z[torch.randperm(d, generator=gen)[:m], j] = torch.randn(m, generator=gen)
    y = torch.rand(k, n, generator=gen) * (torch.rand(k, n, generator=gen) < 0.1)
    a = z @ y
    a = a + noise * a.std() * torch.randn(d, n, generator=gen)
    return a.T.contiguous(), z


def recovery(f: torch.Tensor, z: torch.Tensor) -> float:
    """Mean over true features of the best |cosine| with a recovered feature."""
    cos = torch.nn.functional.normalize(z, dim=0).T @ torch.nn.functional.normalize(f, dim=0)
    return float(cos.abs().max(dim=1).values.mean())


@pytest.fixture(scope="module")
def data():
    return planted()


@pytest.fixture(scope="module")
def fitted(data):
    x, _ = data
    return SNMF(SNMFConfig(n_features=16)).fit(x, progress=False)


def test_recovers_planted_features_with_defaults(data, fitted):
    x, z = data
    assert recovery(fitted.f, z) >= 0.95
    assert fitted.state.best_loss < 0.01


def test_degrades_gracefully_with_noise():
    scores = []
    for noise in (0.1, 0.5):
        x, z = planted(noise=noise, seed=1)
        scores.append(recovery(SNMF(SNMFConfig(n_features=16)).fit(x, progress=False).f, z))
    assert scores[0] >= 0.95 and 0.6 <= scores[1] <= scores[0] + 1e-3


def test_random_init_is_seeded_and_recovers_most(data):
    x, z = data
    a = SNMF(SNMFConfig(n_features=16, init="random", seed=3, max_iter=60)).fit(x, progress=False)
    b = SNMF(SNMFConfig(n_features=16, init="random", seed=3, max_iter=60)).fit(x, progress=False)
    assert torch.equal(a.f, b.f)
    c = SNMF(SNMFConfig(n_features=16, init="random", seed=4, max_iter=60)).fit(x, progress=False)
    assert not torch.equal(a.f, c.f)
    kmeans = SNMF(SNMFConfig(n_features=16, init="kmeans", max_iter=100)).fit(x, progress=False)
    assert recovery(kmeans.f, z) > 0.8 and recovery(a.f, z) > 0.8


def test_winner_take_all_keeps_exactly_m_per_feature(fitted):
    f = torch.randn(100, 7)
    idx, vals = winner_take_all(f, 3)
    assert idx.shape == (7, 3)
    for j in range(7):
        assert set(idx[j].tolist()) == set(f[:, j].abs().topk(3).indices.tolist())
    assert ((fitted.f != 0).sum(dim=0) == math.ceil(0.01 * 512)).all()


def test_winner_take_all_breaks_ties_to_exactly_m():
    """Equal magnitudes at the threshold: still exactly m kept, each with the threshold magnitude."""
    f = torch.tensor([[3.0, 1.0], [-2.0, -1.0], [2.0, 1.0], [2.0, -1.0], [0.5, 1.0]])
    idx, vals = winner_take_all(f, 2)
    assert idx.shape == (2, 2) and len(set(idx[0].tolist())) == 2 and len(set(idx[1].tolist())) == 2
    assert idx[0, 0] == 0 and vals[0, 1].abs() == 2.0 and (vals[1].abs() == 1.0).all()


def test_codes_nonnegative_and_best_iterate_returned(data, fitted):
    x, _ = data
    assert (fitted.g_best >= 0).all()
    losses = fitted.state.losses
    assert fitted.state.best_loss == min(losses) == losses[fitted.state.best_iteration - 1]
    # the returned F with the returned G reproduces the best loss. The loss comes from products already formed
    # (||A||^2 - 2 <P, G> + <Q, G^T G>), whose float32 sums carry an error of a few float32 epsilons of ||A||^2.
    g = fitted.g_best.double()
    error = (x.double() - g @ fitted.f.T.double()).square().sum() / x.double().square().sum()
    assert abs(float(error) - fitted.state.best_loss) < 20 * torch.finfo(torch.float32).eps
    assert fitted.state.stop_reason in ("patience", "max_iter")


def test_multiplicative_update_never_increases_the_g_objective():
    """With F fixed, the Ding-Li-Jordan rule is monotone: ||A - F G^T|| does not grow (their Theorem)."""
    x, _ = planted(seed=2)
    f = torch.randn(512, 16)
    q, p = f.T @ f, f.T @ x.T  # feature-major: P^T [k, n]
    g = torch.rand(16, x.shape[0])
    errors = []
    for _ in range(20):
        g = multiplicative_update(g, p, q, 1e-9)
        errors.append(float((x - g.T @ f.T).square().sum()))
        assert (g >= 0).all()
    assert all(b <= a * (1 + 1e-5) for a, b in zip(errors, errors[1:], strict=False))


def test_fast_matmul_fits_as_strict_float32_and_restores_the_precision(data, monkeypatch):
    """fast_matmul runs only A G at precision "medium" (oneDNN on CPU, TF32 on GPU): float rounding, the same fit;
    the loss does not use that product, and torch's global setting is left as it was."""
    x, _ = data
    config = SNMFConfig(n_features=16, max_iter=40, patience=40)
    strict = SNMF(SNMFConfig(**{**config.__dict__, "fast_matmul": False})).fit(x, progress=False)
    before = torch.get_float32_matmul_precision()
    asked, set_precision = [], torch.set_float32_matmul_precision
    monkeypatch.setattr(torch, "set_float32_matmul_precision", lambda p: (asked.append(p), set_precision(p)))
    fast = SNMF(config).fit(x, progress=False)
    assert asked.count("medium") >= 40  # the fast path ran: once per iteration at least (not the strict one)
    assert torch.get_float32_matmul_precision() == before
    assert fast.state.best_loss == pytest.approx(strict.state.best_loss, rel=1e-3)
    assert recovery(fast.f, strict.f) >= 0.999  # each strict feature has its twin in the fast fit


def test_randomized_svd_init_matches_the_exact_eigendecomposition():
    """The default SVD init finds A's top singular vectors by randomized subspace iteration; on data with a
    spectrum that decays (16 planted features, then noise) it starts where the exact Gram eigh starts."""
    x, _ = planted(k=16, seed=3)
    fits = [SNMF(SNMFConfig(n_features=16, max_iter=5, svd_power_iters=it)).fit(x, progress=False)
            for it in (0, 4)]  # fmt: skip
    exact, randomized = (f.state.losses for f in fits)
    assert randomized == pytest.approx(exact, rel=1e-4)


def test_sparsity_one_is_plain_semi_nmf_with_a_monotone_loss(data):
    """Keeping every neuron, each iteration is an exact least-squares F and a Ding-Li-Jordan G step, both descent
    steps: the loss never rises (beyond float error), and it ends below the 1%-sparse fit's."""
    x, _ = data
    dense = SNMF(SNMFConfig(n_features=16, sparsity=1.0, max_iter=30, patience=30)).fit(x, progress=False)
    losses = dense.state.losses
    assert all(b <= a + 1e-6 for a, b in zip(losses, losses[1:], strict=False))
    assert (dense.f != 0).all()
    sparse = SNMF(SNMFConfig(n_features=16, max_iter=30, patience=30)).fit(x, progress=False)
    assert dense.state.best_loss < sparse.state.best_loss


def make_store(path, x: torch.Tensor, rows: int = 700) -> ActivationStore:
    manifest = StoreManifest(model="synthetic", site="0.mlp_hidden", d=x.shape[1], dtype="float32",
                             corpus_fingerprint="x", context_len=8, drop_bos=True)  # fmt: skip
    store = ActivationStore.create(path, manifest)
    for i, start in enumerate(range(0, x.shape[0], rows)):
        chunk = x[start : start + rows]
        ids = torch.arange(chunk.shape[0])
        store.append(chunk, ids, ids, ids, context_end=i + 1)
    return store


def test_out_of_core_equals_in_memory(tmp_path, data):
    x, _ = data
    config = SNMFConfig(n_features=16, max_iter=40, chunk_tokens=1000, stream=True)
    memory = SNMF(config).fit(x, progress=False)
    disk = SNMF(config).fit(make_store(tmp_path / "s", x), checkpoint_dir=tmp_path / "ck", progress=False)
    assert (tmp_path / "ck" / "G.npy").exists()  # G was memory-mapped on disk
    assert torch.allclose(memory.f, disk.f, rtol=1e-3, atol=1e-4 * memory.f.abs().max())
    assert math.isclose(memory.state.best_loss, disk.state.best_loss, rel_tol=1e-4)


@pytest.mark.parametrize("on_disk", [False, True])
def test_interrupted_fit_resumes_to_the_same_result(tmp_path, data, on_disk):
    x, _ = data
    config = SNMFConfig(n_features=16, max_iter=30, checkpoint_every=10, g_on_disk=on_disk)
    full = SNMF(config).fit(x, progress=False)
    SNMF(SNMFConfig(**{**config.__dict__, "max_iter": 20})).fit(x, checkpoint_dir=tmp_path, progress=False)
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["iteration"] == 20
    resumed = SNMF(config).fit(x, checkpoint_dir=tmp_path, progress=False)  # continues from iteration 20
    assert resumed.state.iteration == 30
    assert torch.allclose(resumed.f, full.f, atol=1e-5 * full.f.abs().max())


@pytest.mark.parametrize("on_disk", [False, True])
def test_a_checkpoint_of_other_data_is_refused(tmp_path, data, on_disk):
    x, _ = data
    config = SNMFConfig(n_features=16, max_iter=10, checkpoint_every=5, g_on_disk=on_disk)
    SNMF(config).fit(x, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(DecomposerError, match="(?i)delete the checkpoint folder"):
        SNMF(config).fit(x[:-100], checkpoint_dir=tmp_path, progress=False)


@pytest.mark.parametrize("on_disk", [False, True])
def test_resume_keeps_a_best_iterate_older_than_the_latest(tmp_path, data, on_disk):
    """With a tolerance of 90%, an iterate is "best" only when it cuts the best loss tenfold, so the best stays
    behind the latest iterate: the checkpoint holds both, and a resumed fit returns the best F and codes of an
    uninterrupted one."""
    x, _ = data
    config = SNMFConfig(n_features=16, max_iter=20, checkpoint_every=10, g_on_disk=on_disk, tol=0.9)
    full = SNMF(config).fit(x, progress=False)
    first = SNMF(SNMFConfig(**{**config.__dict__, "max_iter": 10}))
    first.fit(x, checkpoint_dir=tmp_path, progress=False)
    assert first.state.best_iteration < 10  # the checkpoint at 10 holds an older best beside the latest G
    resumed = SNMF(config).fit(x, checkpoint_dir=tmp_path, progress=False)
    assert resumed.state.best_iteration == full.state.best_iteration < 10  # from before the checkpoint
    assert resumed.state.losses == pytest.approx(full.state.losses, rel=1e-5)
    assert torch.allclose(resumed.f, full.f) and torch.allclose(resumed.g_best, full.g_best)
    latest = SNMF(SNMFConfig(**{**config.__dict__, "tol": 0.0})).fit(x, progress=False)
    assert not torch.allclose(latest.g_best, full.g_best)  # the best codes are not the latest ones


def killed_at_call(monkeypatch, module, name: str, call: int, run) -> None:
    """`run()` with `module.name` raising KeyboardInterrupt (a kill) at its `call`-th call; then restored."""
    real, calls = getattr(module, name), {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, dying)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(module, name, real)


def test_a_crash_inside_a_checkpoint_resumes_from_the_one_before(tmp_path, data, monkeypatch):
    """Killed after G's files of iteration 20 were written but before the checkpoint that names them: the fit
    resumes from iteration 10 as a whole (state, sums and G), and ends as an uninterrupted fit."""
    import interp.decompose.snmf.checkpoint as checkpoint_module

    x, _ = data
    config = SNMFConfig(n_features=16, max_iter=30, checkpoint_every=10, g_on_disk=True)
    full = SNMF(config).fit(x, progress=False)
    fit = lambda: SNMF(config).fit(x, checkpoint_dir=tmp_path, progress=False)  # noqa: E731
    killed_at_call(monkeypatch, checkpoint_module, "atomic_save_safetensors", 2, fit)
    assert (tmp_path / "G.checkpoint.20.npy").exists()  # written, but no checkpoint names it
    resumed = SNMF(config).fit(x, checkpoint_dir=tmp_path, progress=False)
    assert resumed.state.losses == pytest.approx(full.state.losses, rel=1e-5)
    assert torch.allclose(resumed.f, full.f, atol=1e-5 * full.f.abs().max())
    assert sorted(p.name for p in tmp_path.glob("G*.checkpoint*.npy")) == ["G.checkpoint.30.npy"]


def test_killed_fit_resumes_from_its_last_checkpoint(tmp_path, data, monkeypatch):
    import interp.decompose.snmf.model as snmf_module

    x, _ = data
    config = SNMFConfig(n_features=16, max_iter=30, checkpoint_every=10)
    full = SNMF(config).fit(x, progress=False)
    fit = lambda: SNMF(config).fit(x, checkpoint_dir=tmp_path, progress=False)  # noqa: E731
    killed_at_call(monkeypatch, snmf_module, "multiplicative_update", 25, fit)  # after the checkpoint of 20
    assert json.loads((tmp_path / "state.json").read_text())["iteration"] == 20
    resumed = SNMF(config).fit(x, checkpoint_dir=tmp_path, progress=False)
    assert resumed.state.losses == pytest.approx(full.state.losses, rel=1e-5)
    assert torch.allclose(resumed.f, full.f, atol=1e-5 * full.f.abs().max())


def test_encode_decode_save_load(tmp_path, data, fitted):
    x, _ = data
    codes = fitted.encode(x[:50])
    assert codes.shape == (50, 16) and (codes >= 0).all()
    x_hat = fitted.decode(codes)
    assert x_hat.shape == (50, 512)
    assert (x_hat - x[:50]).square().sum() / x[:50].square().sum() < 0.05
    assert fitted.directions.shape == (16, 512)
    assert torch.allclose(fitted.directions.norm(dim=1), torch.ones(16))
    cos = fitted.feature_activation(x[:50])
    assert cos.shape == (50, 16) and cos.abs().max() <= 1 + 1e-5
    neurons, weights = fitted.neurons(0)
    assert len(neurons) == math.ceil(0.01 * 512) and weights.abs().argsort(descending=True).tolist() == list(
        range(6)
    )
    fitted.save(tmp_path / "m")
    loaded = load_decomposer(tmp_path / "m")
    assert isinstance(loaded, SNMF) and torch.equal(loaded.f, fitted.f)
    assert torch.allclose(loaded.encode(x[:50]), codes)
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["method"] == "snmf" and meta["fit"]["stop_reason"] == fitted.state.stop_reason


def test_hierarchy_tree(tmp_path):
    x, _ = planted(n=3000, k=16, seed=5)
    snmf = SNMF(SNMFConfig(hierarchy=(16, 8, 4), max_iter=80)).fit(x, progress=False)
    assert snmf.n_features == 16 and [lvl["F"].shape[1] for lvl in snmf.levels] == [8, 4]
    assert all((lvl["G"] >= 0).all() for lvl in snmf.levels)
    tree = snmf.hierarchy_tree()
    assert tree["levels"] == [16, 8, 4] and len(tree["nodes"]) == 28
    level1 = [n for n in tree["nodes"] if n["level"] == 1]
    assert all(len(n["parents"]) == 1 and n["parents"][0]["id"].startswith("L2:") for n in level1)
    children = sum(len(n["children"]) for n in tree["nodes"] if n["level"] == 2)
    assert children == 16
    snmf.save(tmp_path / "h")
    assert json.loads((tmp_path / "h" / "hierarchy.json").read_text()) == tree
    assert len(load_decomposer(tmp_path / "h").levels) == 2
    with pytest.raises(DecomposerError, match="must decrease"):
        SNMF(SNMFConfig(hierarchy=(8, 16)))


def test_bad_input(tmp_path, data, fitted):
    x, _ = data
    with pytest.raises(DecomposerError, match="n_features=600 is larger than min"):
        SNMF(SNMFConfig(n_features=600)).fit(x[:1000], progress=False)
    bad = x[:200].clone()
    bad[3, 4] = float("nan")
    with pytest.raises(DecomposerError, match="NaN or inf"):
        SNMF(SNMFConfig(n_features=4)).fit(bad, progress=False)
    empty = ActivationStore.create(
        tmp_path / "e", StoreManifest("m", "0.mlp_hidden", 8, "float32", "x", 8, True)
    )
    with pytest.raises(DecomposerError, match="is empty"):
        SNMF(SNMFConfig(n_features=2)).fit(empty, progress=False)
    with pytest.raises(DecomposerError, match="width 100 but this decomposer was fitted on d_in=512"):
        fitted.encode(torch.randn(3, 100))
    with pytest.raises(DecomposerError, match="unknown init 'pca'"):
        SNMF(SNMFConfig(init="pca"))


def test_fit_cli_with_checkpoints_and_hierarchy(tmp_path, data):
    from typer.testing import CliRunner

    from interp.cli import app

    x, _ = data
    make_store(tmp_path / "run" / "0.mlp_hidden", x)
    args = [
        "fit",
        "--method",
        "snmf",
        "--store",
        str(tmp_path / "run" / "0.mlp_hidden"),
        "--out",
        str(tmp_path / "fit"),
        "--hierarchy",
        "16,8",
        "--max-iter",
        "30",
        "--init",
        "svd",
        "--sparsity",
        "0.02",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    snmf = load_decomposer(tmp_path / "fit")
    assert snmf.n_features == 16 and snmf.config.sparsity == 0.02 and len(snmf.levels) == 1
    assert not (tmp_path / "fit" / "checkpoint").exists()  # removed once the fit is saved
    assert json.loads((tmp_path / "fit" / "source.json").read_text())["site"] == "0.mlp_hidden"
    wrong = CliRunner().invoke(app, [*args[:7], "--topk-k", "4"])
    assert wrong.exit_code == 2 and "--topk-k does not apply to method 'snmf'" in wrong.output


def test_all_finite_catches_nan_and_inf_but_not_large_values():
    from interp.core.checks import all_finite

    x = torch.randn(64, 32)
    assert all_finite(x) and all_finite(torch.full((100, 100), 3e38)) and all_finite(x.bfloat16())
    for bad in (float("nan"), float("inf"), -float("inf")):
        y = x.clone()
        y[5, 7] = bad
        assert not all_finite(y) and not all_finite(y.half()) and not all_finite(y.double())
