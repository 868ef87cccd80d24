"""Transcoders: paired stores share rows, training beats the zero baseline on the target, the replacement model
writes the target site, a wrong pairing is refused, save / load keeps y_hat."""

from __future__ import annotations

import pytest
import torch

from interp.capture import capture
from interp.corpus import Document, pack
from interp.decompose import load_decomposer
from interp.decompose.base import DecomposerError
from interp.decompose.fitting import fit_store
from interp.decompose.sae.transcoder import Transcoder, TranscoderConfig
from interp.evaluate.splice import spliced_metrics
from interp.store import StoreError
from interp.store.paired import PairedStore

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "while",
    "dogs",
    "ran",
    "far",
    "away",
    "from",
    "home",
    "at",
    "night",
]


def docs(n: int = 60, shift: int = 0) -> list[Document]:
    return [
        Document(" ".join(WORDS[(i + j * 3 + shift) % len(WORDS)] for j in range(12 + i % 5)))
        for i in range(n)
    ]


@pytest.fixture
def paired(tiny_llama, tmp_path):
    contexts = pack(docs(), tiny_llama.tokenizer, context_len=24, n_tokens=1200)
    stores, _ = capture(tiny_llama, contexts, "1.mlp_in,1.mlp_out", tmp_path / "run", batch_size=8,
                        shard_tokens=300, progress=False)  # fmt: skip
    return stores["1.mlp_in"], stores["1.mlp_out"], contexts


def test_paired_capture_shares_row_order(paired):
    """Both sites of one capture hold the same token ids, contexts and positions in every row (catches stores
    written in another order, which would pair x of one token with y of another)."""
    x_store, y_store, _ = paired
    a, b = x_store.tokens(), y_store.tokens()
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = torch.tensor([5, 0, 700, 301])
    xy = PairedStore(x_store, y_store).read_rows(rows)
    assert torch.equal(xy[:, : x_store.d], x_store.read_rows(rows))
    assert torch.equal(xy[:, x_store.d :], y_store.read_rows(rows))


def _fvu(transcoder, x_store, y_store) -> float:
    x, y = x_store.load_all(), y_store.load_all()
    y_hat = transcoder.reconstruct_target(x)
    return float((y - y_hat).square().sum() / (y - y.mean(0)).square().sum())


@pytest.mark.parametrize("method,activation", [("transcoder", "topk"), ("skip_transcoder", "relu")])
def test_transcoder_beats_zero_baseline_and_splices(paired, tiny_llama, tmp_path, method, activation):
    """Training lowers the target FVU well below the zero / mean baseline (>= 1); the saved folder reloads to the
    same y_hat; the replacement model's CE is computed at the target site (catches a loss on x instead of y, a
    lost W_skip on save, a splice at the input site)."""
    x_store, y_store, contexts = paired
    config = TranscoderConfig(architecture=method, activation=activation, n_features=64, k=8, l1_coeff=0.5,
                              batch_size=128, n_steps=300, lr=3e-3, warmup_steps=10, target=str(y_store.path),
                              device="cpu")  # fmt: skip
    tc = fit_store(x_store.path, method, config, tmp_path / "tc", progress=False, log=lambda *a: None)
    assert tc.config.target_site == "1.mlp_out" and tc.d_in == x_store.d
    fvu = _fvu(tc, x_store, y_store)
    assert fvu < 0.7, fvu
    again = load_decomposer(tmp_path / "tc")
    x = x_store.read_rows(torch.arange(50))
    assert torch.allclose(again.reconstruct_target(x), tc.reconstruct_target(x), atol=1e-5)
    metrics = spliced_metrics(tiny_llama, tc, "1.mlp_in", contexts, n_contexts=8)
    assert metrics["n_tokens"] > 0 and metrics["kl"] < metrics["kl_zero"]


def test_null_transcoder_replacement_equals_zero_ablating_the_mlp(paired, tiny_llama):
    """A transcoder whose y_hat is 0 makes the replacement model exactly the MLP-zero-ablated model (catches the
    replacement written at the wrong site or the input site edited)."""
    x_store, _, contexts = paired
    tc = Transcoder(
        TranscoderConfig(n_features=16, k=4, d_target=x_store.d, target_site="1.mlp_out"), x_store.d
    )
    with torch.no_grad():
        for p in tc.module.parameters():
            p.zero_()
    metrics = spliced_metrics(tiny_llama, tc, "1.mlp_in", contexts, n_contexts=4)
    assert metrics["ce_spliced"] == pytest.approx(metrics["ce_zero"], abs=1e-5)
    assert metrics["kl"] == pytest.approx(metrics["kl_zero"], abs=1e-5) and metrics["kl_zero"] > 1e-4


def test_wrong_pairing_is_refused(paired, tiny_llama, tmp_path):
    """A target store of another capture (other tokens) is refused, naming the fix; so is a transcoder without one."""
    x_store, _, _ = paired
    other = pack(docs(shift=5), tiny_llama.tokenizer, context_len=24, n_tokens=1200)
    stores, _ = capture(tiny_llama, other, "1.mlp_out", tmp_path / "other", batch_size=8, shard_tokens=300,
                        progress=False)  # fmt: skip
    with pytest.raises(StoreError, match="capture both sites in one run"):
        PairedStore(x_store, stores["1.mlp_out"])
    with pytest.raises(DecomposerError, match="--target"):
        Transcoder(TranscoderConfig(n_features=16, k=4, n_steps=1, batch_size=64)).fit(
            x_store, progress=False
        )


def test_cli_fits_and_evaluates_a_skip_transcoder(paired, tmp_path):
    """`interp fit --method skip_transcoder --store IN --target OUT` then `interp evaluate`: the table's FVU is of
    the target (a value well below 1 only when y is predicted from x; catches FVU measured on x or y_hat without
    the skip term) and the replacement-model columns are numbers; a fit without --target fails naming it."""
    from typer.testing import CliRunner

    from interp.cli import app

    runner = CliRunner()
    x_store, y_store, _ = paired
    args = ["fit", "--method", "skip_transcoder", "--store", str(x_store.path), "--k", "64", "--n-steps", "200",
            "--batch-size", "128", "--lr", "3e-3", "--device", "cpu", "--set", "activation=relu"]  # fmt: skip
    refused = runner.invoke(app, [*args, "--out", str(tmp_path / "bad")])
    assert refused.exit_code != 0 and "--target" in refused.output
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "tc"), "--target", str(y_store.path)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["evaluate", str(tmp_path / "tc"), "--n-contexts", "4", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    header, row = result.output.strip().splitlines()[:2]
    fvu = float(row.split()[header.split().index("fvu")])
    assert fvu < 0.7 and "nan" not in result.output, result.output


def test_index_of_a_transcoder_reads_its_input_and_lenses_its_decoder(paired, tiny_llama, tmp_path):
    """`interp index` on a transcoder folder: top contexts come from codes of the input site (catches encoding the
    target, or paired [x | y] rows) and the logit lens is of the decoder rows `[k, d_out]` at the target site."""
    from safetensors import safe_open
    from typer.testing import CliRunner

    from interp.cli import app
    from interp.features import FeatureIndex
    from interp.features.logit_lens import logit_lens

    runner = CliRunner()
    x_store, y_store, _ = paired
    fit = ["fit", "--method", "transcoder", "--store", str(x_store.path), "--target", str(y_store.path), "--k",
           "32", "--topk-k", "4", "--n-steps", "40", "--batch-size", "128", "--device", "cpu", "--out",
           str(tmp_path / "tc")]  # fmt: skip
    assert runner.invoke(app, fit).exit_code == 0
    result = runner.invoke(app, ["index", str(tmp_path / "tc"), "--top-k", "3", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    index = FeatureIndex.open(tmp_path / "tc" / "index")
    tc = load_decomposer(tmp_path / "tc")
    assert index.n_features == 32 and index.manifest.site == "1.mlp_in"
    with safe_open(str(tmp_path / "tc" / "index" / "index.safetensors"), "pt") as f:
        shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118
        promoted = f.get_tensor("logit_promoted_ids")
    assert shapes["top_values"] == (32, 3) and shapes["logit_promoted_ids"][0] == 32
    codes = tc.encode(x_store.load_all())  # [n, 32]
    lens = logit_lens(tiny_llama, "1.mlp_out", tc.directions, top=shapes["logit_promoted_ids"][1])
    assert tc.directions.shape == (32, y_store.d)
    for feature in range(32):
        got = index.feature(feature)
        if codes[:, feature].max() <= 0:
            assert got.top == []
            continue
        assert got.max == pytest.approx(float(codes[:, feature].max()), rel=1e-4)
        assert float(codes[got.top[0].row, feature]) == pytest.approx(
            got.max, rel=1e-4
        )  # ties: repeated text
    assert torch.equal(promoted, lens.promoted_ids)
