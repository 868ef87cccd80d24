"""Import of other libraries' dictionaries, against golden files their own code wrote (tests/golden/make_golden.py):
interp's codes and reconstructions equal the library's; converted folders round-trip to SAELens' files; bad files
are refused with the fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from interp.cli import app
from interp.decompose import DecomposerError, load_decomposer
from interp.decompose.formats import detect_format, import_dictionary, read_dictionary
from interp.decompose.formats.imported import IMPORT_FILE, FormatError, to_decomposer
from interp.decompose.formats.saelens import read_saelens
from interp.models.sites import SiteError, site_of_hook

GOLDEN = Path(__file__).parent / "golden"
X = load_file(str(GOLDEN / "input.safetensors"))["x"]  # [16, 64]
GEMMA = GOLDEN / "gemma_scope" / "layer_6" / "width_128" / "average_l0_20"
# golden folder -> (format, the interp architecture it must come back as)
CASES = {
    "saelens/standard": ("saelens", "relu"),
    "saelens/topk": ("saelens", "topk"),
    "saelens/topk_rescaled": ("saelens", "topk"),
    "saelens/jumprelu": ("saelens", "jumprelu"),
    "saelens/jumprelu_no_bdec": ("saelens", "jumprelu"),
    "saelens/batchtopk": ("saelens", "batchtopk"),
    "saelens/matryoshka": ("saelens", "matryoshka"),
    "saelens/matching_pursuit": ("saelens", "mpsae"),
    "saelens/gated": ("saelens", "gated"),
    "sparsify/layers.6": ("sparsify", "topk"),
    "dictionary_learning/standard/trainer_0": ("dictionary_learning", "relu"),
    "dictionary_learning/topk/trainer_0": ("dictionary_learning", "topk"),
    "dictionary_learning/batchtopk/trainer_0": ("dictionary_learning", "batchtopk"),
    "dictionary_learning/matryoshka/trainer_0": ("dictionary_learning", "matryoshka"),
    "dictionary_learning/jumprelu/trainer_0": ("dictionary_learning", "jumprelu"),
    "gemma_scope/layer_6/width_128/average_l0_20": ("gemma_scope", "jumprelu"),
}
ATOL = 1e-5


def expected(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "expected.safetensors"))


@pytest.mark.parametrize("case", list(CASES))
def test_codes_and_reconstructions_equal_the_librarys(case):
    folder = GOLDEN / case
    fmt, architecture = CASES[case]
    assert detect_format(folder) == fmt
    decomposer = load_decomposer(folder)  # read directly, no conversion step
    assert decomposer.method == architecture and decomposer.d_in == 64 and decomposer.n_features == 128
    want = expected(folder)
    codes = decomposer.encode(X)
    assert torch.equal(codes > 0, want["codes"] > 0)  # the same latents fire
    assert torch.allclose(codes, want["codes"], atol=ATOL, rtol=0), float((codes - want["codes"]).abs().max())
    assert torch.allclose(decomposer.decode(want["codes"]), want["recon"], atol=ATOL, rtol=0)
    assert (want["codes"] > 0).any() and not (want["codes"] > 0).all()  # a golden file that tests something


def test_matryoshka_widths_and_batch_threshold_survive_import():
    saelens = load_decomposer(GOLDEN / "saelens" / "matryoshka")
    assert saelens.config.widths == (16, 48, 128) and saelens.config.k == 8
    dl = load_decomposer(GOLDEN / "dictionary_learning" / "matryoshka" / "trainer_0")
    assert dl.config.widths == (16, 48, 128)  # group_sizes 16, 32, 80


def test_import_writes_an_interp_folder_that_round_trips_to_saelens(tmp_path):
    result = CliRunner().invoke(
        app, ["import", str(GOLDEN / "saelens" / "topk_rescaled"), "--out", str(tmp_path / "t")]
    )
    assert result.exit_code == 0, result.output
    assert "topk" in result.output and "6.resid_post" in result.output
    record = json.loads((tmp_path / "t" / IMPORT_FILE).read_text())
    assert record["format"] == "saelens" and record["original_config"]["rescale_acts_by_decoder_norm"] is True
    assert record["site"] == "6.resid_post" and record["model_name"] == "gpt2"
    want = expected(GOLDEN / "saelens" / "topk_rescaled")["codes"]
    assert torch.allclose(
        load_decomposer(tmp_path / "t").encode(X), want, atol=ATOL, rtol=0
    )  # interp's files
    back = read_saelens(tmp_path / "t")  # the SAELens files written beside them
    cfg = json.loads((tmp_path / "t" / "cfg.json").read_text())
    assert (
        cfg["architecture"] == "topk"
        and cfg["k"] == 8
        and cfg["metadata"]["hook_name"] == "blocks.6.hook_resid_post"
    )
    from interp.decompose.formats.imported import to_decomposer

    assert torch.allclose(to_decomposer(back).encode(X), want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("case", ["gemma_scope/layer_6/width_128/average_l0_20", "dictionary_learning/matryoshka/trainer_0",
                                  "sparsify/layers.6", "saelens/matching_pursuit"])  # fmt: skip
def test_every_format_converts_and_its_saelens_export_reads_back(tmp_path, case):
    source = GOLDEN / case
    if (source / "params.npz").exists():
        source = source / "params.npz"
    import_dictionary(source, tmp_path / "out", model_name="m", site="6.resid_post")
    again = to_codes(read_saelens(tmp_path / "out"))
    assert torch.allclose(again, expected(GOLDEN / case)["codes"], atol=ATOL, rtol=0)


def to_codes(imported) -> torch.Tensor:
    from interp.decompose.formats.imported import to_decomposer

    return to_decomposer(imported).encode(X)


def test_hook_names_map_to_sites():
    assert site_of_hook("blocks.6.hook_resid_post").name == "6.resid_post"
    assert site_of_hook("blocks.3.mlp.hook_post").name == "3.mlp_hidden"
    assert site_of_hook("blocks.2.hook_mlp_out").name == "2.mlp_out"
    assert site_of_hook("model.layers.4").name == "4.resid_post"
    assert site_of_hook("layers.5.mlp").name == "5.mlp_out"
    assert site_of_hook("blocks.7.ln2.hook_normalized").name == "7.mlp_in"  # the MLP's input, after its norm
    assert site_of_hook("blocks.7.mlp.hook_in").name == "7.mlp_in"
    assert site_of_hook("model.layers.7.mlp.input").name == "7.mlp_in"
    assert read_saelens(GOLDEN / "saelens" / "jumprelu").site == "3.mlp_hidden"
    with pytest.raises(SiteError, match="--site"):
        site_of_hook("blocks.3.attn.hook_z")
    with pytest.raises(SiteError, match="out of range"):
        site_of_hook("blocks.30.hook_resid_post", n_layers=12)


def edited_saelens(tmp_path: Path, name: str = "topk", **changes) -> Path:
    folder = tmp_path / name
    shutil.copytree(GOLDEN / "saelens" / name, folder)
    cfg = json.loads((folder / "cfg.json").read_text())
    for key, value in changes.items():
        if key == "metadata":
            cfg["metadata"].update(value)
        else:
            cfg[key] = value
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


TRANSCODER_CASES = {"transcoder": "relu", "skip_transcoder": "relu", "jumprelu_transcoder": "jumprelu",
                    "jumprelu_skip_transcoder": "jumprelu"}  # fmt: skip


@pytest.mark.parametrize("name", list(TRANSCODER_CASES))
def test_saelens_transcoders_encode_and_predict_the_target_as_saelens(name):
    """SAELens' transcoders (d_in 64 -> d_out 48): interp's codes and y_hat (with W_skip x) equal SAELens' own
    (catches b_dec subtracted from the input, a dropped skip term, the decoder's width taken as d_in)."""
    folder = GOLDEN / "saelens_transcoders" / name
    tc = load_decomposer(folder)
    want = expected(folder)
    assert tc.method == name.removeprefix("jumprelu_") and tc.config.activation == TRANSCODER_CASES[name]
    assert tc.d_in == 64 and tc.module.d_out == 48 and tc.config.target_site == "6.mlp_out"
    codes = tc.encode(X)
    assert torch.equal(codes > 0, want["codes"] > 0) and (codes > 0).any() and not (codes > 0).all()
    assert torch.allclose(codes, want["codes"], atol=ATOL, rtol=0), float((codes - want["codes"]).abs().max())
    y_hat = tc.reconstruct_target(X)
    assert torch.allclose(y_hat, want["recon"], atol=ATOL, rtol=0), float((y_hat - want["recon"]).abs().max())
    assert read_saelens(folder).site == "6.mlp_in"


@pytest.mark.parametrize("name", list(TRANSCODER_CASES))
def test_transcoder_export_reads_back_as_saelens(tmp_path, name):
    """interp's SAELens export of a transcoder (cfg.json + weights, W_skip and threshold included) reads back to
    the same codes and y_hat (catches a lost W_skip or threshold, or apply_b_dec_to_input left true)."""
    tc = load_decomposer(GOLDEN / "saelens_transcoders" / name)
    tc.save(tmp_path / "out", "gpt2", "blocks.6.ln2.hook_normalized")
    cfg = json.loads((tmp_path / "out" / "cfg.json").read_text())
    assert cfg["architecture"] == name and cfg["apply_b_dec_to_input"] is False and cfg["d_out"] == 48
    back = to_decomposer(read_saelens(tmp_path / "out"))
    assert torch.allclose(back.reconstruct_target(X), tc.reconstruct_target(X), atol=1e-6)
    assert torch.equal(back.encode(X) > 0, tc.encode(X) > 0)


def test_gated_sae_is_not_trained_but_refused_with_the_fix():
    """interp reads gated SAEs; fitting one must fail clearly rather than train with the wrong loss."""
    gated = load_decomposer(GOLDEN / "saelens" / "gated")
    with pytest.raises(DecomposerError, match="does not train gated"):
        gated.fit(X)


def test_bad_saelens_files_are_refused_with_the_fix(tmp_path):
    with pytest.raises(
        FormatError, match="architecture 'temporal' is not supported; interp reads standard, topk"
    ):
        read_saelens(edited_saelens(tmp_path / "a", architecture="temporal"))
    with pytest.raises(FormatError, match="lacks r_mag, b_mag"):  # gated needs its magnitude path
        read_saelens(edited_saelens(tmp_path / "g", architecture="gated"))
    with pytest.raises(
        FormatError, match=r"sae-lens 7\.0\.1; interp reads the cfg.json of sae-lens 1\.x-6\.x"
    ):
        read_saelens(edited_saelens(tmp_path / "b", metadata={"sae_lens_version": "7.0.1"}))
    with pytest.raises(FormatError, match="normalize_activations='layer_norm'"):
        read_saelens(edited_saelens(tmp_path / "c", normalize_activations="layer_norm"))
    with pytest.raises(FormatError, match="stop_on_duplicate_support"):
        read_saelens(edited_saelens(tmp_path / "d", "matching_pursuit", stop_on_duplicate_support=True))
    with pytest.raises(FormatError, match=r"W_enc has shape \[64, 128\], expected \[32, 128\]"):
        read_saelens(edited_saelens(tmp_path / "e", d_in=32))
    folder = edited_saelens(tmp_path / "f")
    weights = load_file(str(folder / "sae_weights.safetensors"))
    del weights["b_enc"]
    save_file(weights, str(folder / "sae_weights.safetensors"))
    with pytest.raises(FormatError, match="lacks b_enc"):
        read_saelens(folder)
    with pytest.raises(FormatError, match="no dictionary format"):
        read_dictionary(tmp_path)
    with pytest.raises(FormatError, match="several dictionaries; pick one: layers.6"):
        read_dictionary(GOLDEN / "sparsify")
    with pytest.raises(DecomposerError, match="convert one with `interp import`"):
        load_decomposer(tmp_path)


def test_bad_gemma_scope_files_are_refused(tmp_path):
    params = dict(np.load(GEMMA / "params.npz"))
    np.savez(tmp_path / "missing.npz", **{k: v for k, v in params.items() if k != "threshold"})
    with pytest.raises(FormatError, match="lacks threshold"):
        read_dictionary(tmp_path / "missing.npz", "gemma_scope")
    np.savez(tmp_path / "shape.npz", **{**params, "b_dec": params["b_dec"][:10]})
    with pytest.raises(FormatError, match=r"b_dec has shape \[10\], expected \[64\]"):
        read_dictionary(tmp_path / "shape.npz", "gemma_scope")
    np.savez(tmp_path / "pickled.npz", W_enc=np.array([{"a": 1}], dtype=object))
    with pytest.raises(FormatError, match="without pickle"):
        read_dictionary(tmp_path / "pickled.npz", "gemma_scope")


def test_dictionary_learning_pickles_and_unknown_classes_are_refused(tmp_path):
    folder = tmp_path / "dl"
    shutil.copytree(GOLDEN / "dictionary_learning" / "topk" / "trainer_0", folder)
    config = json.loads((folder / "config.json").read_text())
    config["trainer"]["dict_class"] = "GatedAutoEncoder"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        FormatError, match="dict_class 'GatedAutoEncoder'.*interp reads AutoEncoder, AutoEncoderTopK"
    ):
        read_dictionary(folder)
    config["trainer"]["dict_class"] = "AutoEncoderTopK"
    (folder / "config.json").write_text(json.dumps(config))
    torch.save({"weights": Path("x")}, folder / "ae.pt")  # an arbitrary object: weights_only refuses it
    with pytest.raises(FormatError, match="not a plain state dict"):
        read_dictionary(folder)


def test_d_in_and_site_mismatches_name_the_fix(tmp_path):
    from interp.store import ActivationStore, StoreManifest

    sae = load_decomposer(GOLDEN / "saelens" / "topk")
    with pytest.raises(DecomposerError, match="width 32 but this decomposer was fitted on d_in=64"):
        sae.encode(torch.randn(3, 32))
    for name, site, d in (
        ("narrow", "6.resid_post", 32),
        ("other", "5.resid_post", 64),
        ("good", "6.resid_post", 64),
    ):
        store = ActivationStore.create(
            tmp_path / name, StoreManifest("gpt2", site, d, "float32", "x", 8, True)
        )
        ids = torch.arange(10)
        store.append(torch.randn(10, d), ids, ids, ids, context_end=1)
    with pytest.raises(FormatError, match="d_in=64 but the store .* holds 32-wide"):
        import_dictionary(GOLDEN / "saelens" / "topk", tmp_path / "o1", store=tmp_path / "narrow")
    with pytest.raises(FormatError, match="trained on 6.resid_post but the store .* is 5.resid_post"):
        import_dictionary(GOLDEN / "saelens" / "topk", tmp_path / "o2", store=tmp_path / "other")
    import_dictionary(GOLDEN / "saelens" / "topk", tmp_path / "o0", store=tmp_path / "good")
    from interp.decompose.base import read_source

    assert read_source(tmp_path / "o0")["site"] == "6.resid_post"  # index / evaluate find the store
    gemma = tmp_path / "g" / "params.npz"  # no layer in the path, no hook name in the file: --site is needed
    gemma.parent.mkdir()
    shutil.copy(GEMMA / "params.npz", gemma)
    result = CliRunner().invoke(app, ["import", str(gemma), "--out", str(tmp_path / "o3")])
    assert result.exit_code == 2 and "--site" in result.output
    result = CliRunner().invoke(
        app, ["import", str(gemma), "--out", str(tmp_path / "o3"), "--site", "2.resid_post"]
    )
    assert result.exit_code == 0, result.output


def test_an_imported_dictionary_indexes_and_evaluates_on_a_store(tmp_path, tiny_llama):
    """Downstream stages take the imported folder as any other: the index over a tiny-llama store (d_model 64)."""
    from interp.capture import capture
    from interp.corpus import Document, pack
    from interp.evaluate.recon import evaluate
    from interp.features import IndexConfig, build_index

    docs = [
        Document(" ".join(["the cat sat on a mat", "a dog ran far"][i % 2] for _ in range(3)))
        for i in range(20)
    ]
    contexts = pack(docs, tiny_llama.tokenizer, context_len=16, n_tokens=200)
    stores, _ = capture(tiny_llama, contexts, "1.resid_post", tmp_path / "run", batch_size=8, progress=False)
    store = stores["1.resid_post"]
    folder = tmp_path / "imported"
    result = CliRunner().invoke(app, ["import", str(GOLDEN / "saelens" / "topk"), "--out", str(folder),
                                      "--site", "1.resid_post", "--store", str(store.path)])  # fmt: skip
    assert result.exit_code == 0, result.output
    index = build_index(folder, config=IndexConfig(top_k=3, window=2), model=tiny_llama, progress=False)
    codes = load_decomposer(folder).encode(store.load_all())
    best = int(codes.max(0).values.argmax())
    assert index.n_features == 128 and index.feature(best).max == pytest.approx(
        float(codes[:, best].max()), rel=1e-4
    )
    assert evaluate(load_decomposer(folder), store)["l0"] == pytest.approx(8.0)


def test_gemma_scope_site_comes_from_the_release_folders(tmp_path):
    for release, site in (("gemma-scope-2b-pt-mlp", "3.mlp_out"), ("gemma-scope-2b-pt-res", "3.resid_post")):
        folder = tmp_path / release / "layer_3" / "width_16k" / "average_l0_50"
        folder.mkdir(parents=True)
        shutil.copy(GEMMA / "params.npz", folder / "params.npz")
        imported = read_dictionary(folder, model_name="google/gemma-2-2b")
        assert imported.site == site and imported.model_name == "google/gemma-2-2b"
    folder = tmp_path / "gemma-scope-2b-pt-att" / "layer_3" / "width_16k" / "average_l0_50"
    folder.mkdir(parents=True)
    shutil.copy(GEMMA / "params.npz", folder / "params.npz")
    assert read_dictionary(folder).site is None  # attention outputs: no interp site, so --site is asked for


SPARSIFY_TC = GOLDEN / "sparsify_transcoders"


@pytest.mark.parametrize("name", ["transcoder", "skip_transcoder"])
def test_sparsify_transcoders_encode_and_predict_the_target_as_sparsify(name):
    """sparsify's transcoders of hookpoint layers.6.mlp read 6.mlp_in and predict 6.mlp_out; codes and y_hat equal
    sparsify's own (catches b_dec subtracted from the input as for its SAEs, a dropped W_skip x, the input mapped
    to mlp_out as for an SAE of that hookpoint)."""
    folder = SPARSIFY_TC / name / "layers.6.mlp"
    assert detect_format(folder) == "sparsify"
    tc = load_decomposer(folder)
    want = expected(folder)
    assert tc.method == name and tc.config.activation == "topk" and tc.config.k == 8
    assert tc.d_in == 64 and tc.module.d_out == 64 and tc.config.target_site == "6.mlp_out"
    assert read_dictionary(folder).site == "6.mlp_in"
    codes = tc.encode(X)
    assert torch.equal(codes > 0, want["codes"] > 0) and bool(((codes > 0).sum(1) == 8).all())
    assert torch.allclose(codes, want["codes"], atol=ATOL, rtol=0), float((codes - want["codes"]).abs().max())
    y_hat = tc.reconstruct_target(X)
    assert torch.allclose(y_hat, want["recon"], atol=ATOL, rtol=0), float((y_hat - want["recon"]).abs().max())
    skip_matters = not torch.allclose(tc.decode(codes), want["recon"], atol=1e-2)
    assert skip_matters == (name == "skip_transcoder")  # the golden skip term is not negligible


def test_sparsify_transcoder_converts_with_its_sites_and_block_hookpoints_map_to_the_residual(tmp_path):
    source = SPARSIFY_TC / "skip_transcoder" / "layers.6.mlp"
    _, imported = import_dictionary(source, tmp_path / "out", model_name="gpt2")
    record = json.loads((tmp_path / "out" / IMPORT_FILE).read_text())
    assert record["site"] == "6.mlp_in" and record["architecture"] == "skip_transcoder"
    again = load_decomposer(tmp_path / "out")  # interp's own folder now
    assert again.config.target_site == "6.mlp_out"
    assert torch.allclose(again.reconstruct_target(X), expected(source)["recon"], atol=ATOL, rtol=0)
    block = tmp_path / "model.layers.3"  # a transcoder of a whole block: its input and output
    shutil.copytree(source, block)
    imported = read_dictionary(block)
    assert imported.site == "3.resid_pre" and imported.options["target_site"] == "3.resid_post"


def test_sparsify_mlp_hookpoints_of_gemma_are_refused_naming_the_post_norm(tmp_path):
    """Gemma 2 / 3 norm the MLP module's output before the residual add: no interp site holds that value."""
    source = SPARSIFY_TC / "transcoder" / "layers.6.mlp"
    for model in ("gemma-3-270m", "google/gemma-2-2b"):
        with pytest.raises(
            FormatError, match="before post_feedforward_layernorm, which is not an interp site"
        ):
            read_dictionary(source, model_name=model)
    sae = tmp_path / "sae" / "layers.6.mlp"  # an SAE of that output is refused the same way
    shutil.copytree(GOLDEN / "sparsify" / "layers.6", sae)
    with pytest.raises(FormatError, match="post_feedforward_layernorm"):
        read_dictionary(sae, model_name="gemma-3-270m")
    assert read_dictionary(sae, model_name="gpt2").site == "6.mlp_out"
    assert read_dictionary(GOLDEN / "sparsify" / "layers.6", model_name="gemma-3-270m").site == "6.resid_post"
    result = CliRunner().invoke(
        app, ["import", str(source), "--out", str(tmp_path / "o"), "--model", "gemma-3-270m"]
    )
    assert result.exit_code != 0 and "post_feedforward_layernorm" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o").exists()
    from interp.store import ActivationStore, StoreManifest  # the model named by the store, when not given

    store = ActivationStore.create(
        tmp_path / "st", StoreManifest("gemma-3-270m", "6.mlp_in", 64, "float32", "x", 8, True)
    )
    ids = torch.arange(4)
    store.append(torch.randn(4, 64), ids, ids, ids, context_end=1)
    with pytest.raises(FormatError, match="post_feedforward_layernorm"):
        import_dictionary(source, tmp_path / "o2", store=tmp_path / "st")


def test_sparsify_skip_autoencoder_is_refused_with_what_is_read(tmp_path):
    folder = tmp_path / "layers.6"
    shutil.copytree(GOLDEN / "sparsify" / "layers.6", folder)
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "skip_connection": True}))
    with pytest.raises(FormatError, match="skip connections of transcoders"):
        read_dictionary(folder)
    (folder / "cfg.json").write_text(json.dumps({**cfg, "multi_topk": True}))
    with pytest.raises(FormatError, match="Multi-TopK"):
        read_dictionary(folder)
