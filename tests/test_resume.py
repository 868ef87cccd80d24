"""Resumes and refits check a fingerprint of the settings and the data (interp.core.fingerprint): other settings
are refused naming each field (old -> new); settings that cannot change the result do not block."""

from __future__ import annotations

import json

import pytest
import torch

from interp.core.fingerprint import differences
from interp.decompose import DecomposerError
from interp.decompose.fitting import default_fit_dir, fit_store
from interp.decompose.mp_sae import MPSAE, MPSAEConfig
from interp.decompose.sae import SAE, SAEConfig
from interp.decompose.snmf import SNMF, SNMFConfig
from interp.store import ActivationStore, StoreManifest


def planted(n: int = 1200, d: int = 16, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    atoms = torch.randn(24, d, generator=gen)
    codes = torch.rand(n, 24, generator=gen) * (torch.rand(n, 24, generator=gen) < 0.15)
    return codes @ atoms


def make_store(path, x: torch.Tensor, rows: int = 400, model: str = "tiny-a") -> ActivationStore:
    manifest = StoreManifest(model=model, site="0.resid_post", d=x.shape[1], dtype="float32",
                             corpus_fingerprint="c", context_len=8, drop_bos=True)  # fmt: skip
    store = ActivationStore.create(path, manifest)
    for i, start in enumerate(range(0, x.shape[0], rows)):
        ids = torch.arange(min(rows, x.shape[0] - start))
        store.append(x[start : start + rows], ids, ids, ids, context_end=i + 1)
    return store


SAE_BASE = dict(architecture="topk", n_features=32, k=4, batch_size=100, n_steps=10, checkpoint_every=5,
                warmup_steps=2, device="cpu")  # fmt: skip


def test_differences_name_each_field_old_to_new():
    saved = {"settings": {"k": 16, "lr": 0.1}, "data": {"n_tokens": 10}}
    now = {"settings": {"k": 32, "lr": 0.1}, "data": {"n_tokens": 12}}
    assert differences(saved, now) == ["data.n_tokens: 10 -> 12", "settings.k: 16 -> 32"]


def test_sae_resume_with_another_k_is_refused(tmp_path):
    x = planted()
    SAE(SAEConfig(**SAE_BASE)).fit(x, checkpoint_dir=tmp_path, progress=False)
    # the old code went on training the k=4 weights with k=8
    with pytest.raises(DecomposerError, match=r"settings\.k: 4 -> 8"):
        SAE(SAEConfig(**{**SAE_BASE, "k": 8, "n_steps": 20})).fit(x, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(DecomposerError, match=r"settings\.n_features: 32 -> 48"):  # the old code: a traceback
        SAE(SAEConfig(**{**SAE_BASE, "n_features": 48})).fit(x, checkpoint_dir=tmp_path, progress=False)


def test_sae_resume_on_other_data_is_refused(tmp_path):
    x = planted()
    store = make_store(tmp_path / "s", x)
    SAE(SAEConfig(**SAE_BASE)).fit(store, checkpoint_dir=tmp_path / "ck", progress=False)
    longer = make_store(tmp_path / "s2", torch.cat([x, planted(seed=1)[:400]]))
    with pytest.raises(DecomposerError, match=r"data\.n_tokens: 1200 -> 1600"):
        SAE(SAEConfig(**SAE_BASE)).fit(longer, checkpoint_dir=tmp_path / "ck", progress=False)
    with pytest.raises(DecomposerError, match=r"data\.tensor"):
        SAE(SAEConfig(**SAE_BASE)).fit(x, checkpoint_dir=tmp_path / "ck", progress=False)


def test_settings_that_do_not_change_results_do_not_block_a_resume(tmp_path):
    x = planted()
    first = SAE(SAEConfig(**SAE_BASE)).fit(x, checkpoint_dir=tmp_path, progress=False)
    again = SAE(SAEConfig(**{**SAE_BASE, "checkpoint_every": 3, "device": "auto"}))
    again.fit(x, checkpoint_dir=tmp_path, progress=False)  # finished checkpoint: nothing left to train
    assert again.history == first.history
    assert torch.equal(again.module.W_dec, first.module.W_dec)


def test_mpsae_resume_with_another_k_is_refused(tmp_path):
    x = planted()
    base = dict(n_features=32, k=3, batch_size=100, n_steps=6, checkpoint_every=3, device="cpu")
    MPSAE(MPSAEConfig(**base)).fit(x, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(DecomposerError, match=r"settings\.k: 3 -> 5"):
        MPSAE(MPSAEConfig(**{**base, "k": 5})).fit(x, checkpoint_dir=tmp_path, progress=False)
    # inference-only settings may change: the same training resumes
    MPSAE(MPSAEConfig(**{**base, "inference_steps": 7})).fit(x, checkpoint_dir=tmp_path, progress=False)


def test_snmf_resume_with_another_sparsity_is_refused(tmp_path):
    x = planted().abs()
    base = dict(n_features=6, max_iter=10, checkpoint_every=5, device="cpu")
    SNMF(SNMFConfig(**base)).fit(x, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(DecomposerError, match=r"settings\.sparsity: 0\.01 -> 0\.5"):
        SNMF(SNMFConfig(**{**base, "sparsity": 0.5})).fit(x, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(DecomposerError, match=r"settings\.init: \"svd\" -> \"random\""):
        SNMF(SNMFConfig(**{**base, "init": "random"})).fit(x, checkpoint_dir=tmp_path, progress=False)
    more = SNMF(SNMFConfig(**{**base, "max_iter": 12, "g_on_disk": False})).fit(x, checkpoint_dir=tmp_path,
                                                                                progress=False)  # fmt: skip
    assert more.state.iteration == 12  # went on from the checkpoint at 10


def test_fitting_into_a_finished_folder_with_other_settings_needs_overwrite(tmp_path):
    store_path = tmp_path / "run" / "0.resid_post"
    make_store(store_path, planted())
    out = tmp_path / "fit"
    first = fit_store(store_path, "topk", SAEConfig(**SAE_BASE), out, progress=False, log=lambda m: None)
    messages = []
    same = fit_store(store_path, "topk", SAEConfig(**{**SAE_BASE, "device": "auto"}), out, progress=False,
                     log=messages.append)  # fmt: skip
    assert "already holds this fit" in messages[0] and torch.equal(same.directions, first.directions)
    other = SAEConfig(**{**SAE_BASE, "k": 8})
    with pytest.raises(DecomposerError, match=r"settings\.k: 4 -> 8.*--overwrite"):
        fit_store(store_path, "topk", other, out, progress=False, log=lambda m: None)
    assert json.loads((out / "config.json").read_text())["config"]["k"] == 4  # nothing replaced
    fit_store(store_path, "topk", other, out, progress=False, log=lambda m: None, overwrite=True)
    assert json.loads((out / "config.json").read_text())["config"]["k"] == 8


def test_default_fit_folder_tells_models_apart(tmp_path):
    a = make_store(tmp_path / "a" / "bbc" / "0.resid_post", planted(), model="org/model-a")
    b = make_store(tmp_path / "b" / "bbc" / "0.resid_post", planted(), model="model-b")
    dir_a, dir_b = default_fit_dir(a.path, "topk", 32), default_fit_dir(b.path, "topk", 32)
    assert dir_a != dir_b and "model-a" in dir_a.parts and "model-b" in dir_b.parts


def test_sae_training_names_the_store_row_of_a_nan_past_the_first_rows(tmp_path):
    """A NaN at store row 5000 (beyond the 4,096 rows checked up front): the old code said "the training loss
    became nan at step 0; lower --lr"."""
    x = planted(n=6000)
    x[5000, 3] = float("nan")
    store = make_store(tmp_path / "s", x, rows=1000)
    config = SAEConfig(**{**SAE_BASE, "batch_size": 500, "n_steps": 40})
    with pytest.raises(
        DecomposerError, match=r"store at .* contain NaN or inf \(rows \[5000\], met in batch"
    ):
        SAE(config).fit(store, progress=False)
    with pytest.raises(DecomposerError, match=r"NaN or inf \(rows \[5000\]"):  # a tensor is checked whole
        MPSAE(MPSAEConfig(n_features=32, k=3, batch_size=500, n_steps=40, device="cpu")).fit(
            x, progress=False
        )


def test_the_index_names_the_store_row_of_a_nan(tmp_path, tiny_llama):
    from interp.features import FeatureIndexError, build_index
    from interp.features.build import IndexConfig

    x = planted(n=1200)
    sae = SAE(SAEConfig(**SAE_BASE)).fit(x, progress=False)
    x[1100, 0] = float("inf")
    store = make_store(tmp_path / "s", x)
    config = IndexConfig(batch_tokens=64, checkpoint_every=0, device="cpu")
    with pytest.raises(FeatureIndexError, match=r"rows \[1100\]"):  # the old code named the row in its batch
        build_index(sae, store, tmp_path / "idx", config, model=tiny_llama, progress=False)


def test_a_successful_fit_removes_its_checkpoint_unless_asked_to_keep_it(tmp_path):
    store_path = tmp_path / "run" / "0.resid_post"
    make_store(store_path, planted())
    quiet = dict(progress=False, log=lambda m: None)
    fit_store(store_path, "topk", SAEConfig(**SAE_BASE), tmp_path / "a", **quiet)
    assert (tmp_path / "a" / "model.safetensors").exists() and not (tmp_path / "a" / "checkpoint").exists()
    fit_store(store_path, "snmf", SNMFConfig(n_features=6, max_iter=5, device="cpu"), tmp_path / "b", **quiet,
              keep_checkpoint=True)  # fmt: skip
    assert (tmp_path / "b" / "checkpoint" / "layout.json").exists()


def test_snmf_with_g_on_disk_and_no_checkpoint_folder_leaves_no_temporary_files(tmp_path, monkeypatch):
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    x = planted().abs()
    snmf = SNMF(SNMFConfig(n_features=6, max_iter=12, checkpoint_every=5, g_on_disk=True, device="cpu"))
    snmf.fit(x, progress=False)
    assert list(scratch.iterdir()) == []  # the old code left snmf-*/G.npy, G.spare.npy and checkpoints
    assert snmf.g_best.shape == (1200, 6) and bool(snmf.g_best.isfinite().all())  # the codes stay readable


def test_saelens_cfg_names_the_model_and_the_transformer_lens_hook(tmp_path):
    store_path = tmp_path / "run" / "0.resid_post"
    make_store(store_path, planted(), model="org/model-a")
    fit_store(store_path, "topk", SAEConfig(**SAE_BASE), tmp_path / "sae", progress=False, log=lambda m: None)
    meta = json.loads((tmp_path / "sae" / "cfg.json").read_text())["metadata"]
    assert meta["model_name"] == "org/model-a" and meta["hook_name"] == "blocks.0.hook_resid_post"  # old: ""
