"""`interp fit --live` on a tiny random model: happy path, equality with a store fit, resume, refusals."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from interp.cli import app
from interp.decompose import load_decomposer, method_class
from interp.decompose.live import LiveBatches
from interp.store import ActivationStore

runner = CliRunner()
TRAIN = ["--k", "32", "--topk-k", "4", "--batch-size", "64", "--device", "cpu", "--seed", "3"]


def write_corpus(path):
    path.write_text(
        "\n\n".join(f"Paragraph {i} talks about cats, dogs and the number {i * 7}." for i in range(80))
    )
    return path


def live_args(tmp_path, *extra):
    corpus = write_corpus(tmp_path / "c.txt")
    return ["fit", "--method", "topk", "--out", str(tmp_path / "fit"), *TRAIN, "--live", "--model", "tiny-llama",
            "--corpus", str(corpus), "--site", "1.mlp_hidden", "--context-len", "32", "--n-tokens", "620",
            *extra]  # fmt: skip


def test_live_fit_records_source_and_equals_store_fit(tmp_path):
    """Catches a CLI that streams another site / seed / order than the store-based fit of the same rows, a config
    without the live record, a wrong default n_steps, a rerun that trains again instead of
    returning the finished fit, and `interp index` on the live folder failing with a traceback (no store in source.json)."""
    args = live_args(tmp_path, "--buffer-tokens", "1000000")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "live topk" in result.output and "tok" in result.output  # the progress bar over tokens
    live = load_decomposer(tmp_path / "fit")
    assert live.directions.shape == (32, 128)
    meta = json.loads((tmp_path / "fit" / "config.json").read_text())
    assert meta["live"] == {"model": "tiny-llama", "corpus": [str(tmp_path / "c.txt")], "context_len": 32,
                            "site": "1.mlp_hidden", "n_tokens": 620, "buffer_tokens": 1000000, "seed": 3}  # fmt: skip
    n_steps = meta["config"]["n_steps"]
    assert n_steps == 620 // 64  # one pass over the live tokens
    capture = ["capture", "--model", "tiny-llama", "--sites", "1.mlp_hidden", "--corpus", str(tmp_path / "c.txt"),
               "--n-tokens", "620", "--context-len", "32", "--out", str(tmp_path / "run"), "--device", "cpu",
               "--backend", "torch"]  # fmt: skip
    assert runner.invoke(app, capture).exit_code == 0
    # a store is read shard-group by shard-group; its rows as one tensor are read in the live order randperm(n)
    rows = ActivationStore.open(tmp_path / "run" / "1.mlp_hidden").load_all().float()
    cls = method_class("topk")
    tensor_fit = cls(cls.config_class(**{**meta["config"], "n_steps": n_steps})).fit(rows, progress=False)
    assert torch.allclose(live.directions, tensor_fit.directions, atol=1e-5)
    index = ["index", str(tmp_path / "fit"), "--top-k", "3", "--device", "cpu"]
    no_store = runner.invoke(app, index)
    assert no_store.exit_code == 2 and "--store" in no_store.output and "Traceback" not in no_store.output
    indexed = runner.invoke(app, [*index, "--store", str(tmp_path / "run" / "1.mlp_hidden")])
    assert indexed.exit_code == 0, indexed.output
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "already holds this fit" in again.output
    other = runner.invoke(app, [*args[:-1], "500"])  # --buffer-tokens 500
    assert other.exit_code == 2 and "buffer_contexts" in other.output and "Traceback" not in other.output


def test_live_fit_resumes_after_interrupt_and_refuses_other_settings(tmp_path, monkeypatch):
    """Catches a rerun that starts afresh or rebuilds another order, and a resume with another seed."""
    args = live_args(tmp_path, "--buffer-tokens", "200", "--set", "checkpoint_every=2")
    whole = runner.invoke(app, [*args[:4], str(tmp_path / "whole"), *args[5:]])
    assert whole.exit_code == 0, whole.output
    original = LiveBatches.batch

    def killed(self, step):
        if step == 5:
            raise KeyboardInterrupt
        return original(self, step)

    monkeypatch.setattr(LiveBatches, "batch", killed)
    assert runner.invoke(app, args).exit_code == 130
    monkeypatch.setattr(LiveBatches, "batch", original)
    assert (tmp_path / "fit" / "checkpoint" / "trainer.json").exists()
    seed_index = args.index("--seed")
    reseeded = [*args[: seed_index + 1], "4", *args[seed_index + 2 :]]
    refused = runner.invoke(app, reseeded)
    assert refused.exit_code == 2 and "seed" in refused.output, refused.output
    steps = []

    def recorded(self, step):
        steps.append(step)
        return original(self, step)

    monkeypatch.setattr(LiveBatches, "batch", recorded)
    resumed = runner.invoke(app, args)
    assert resumed.exit_code == 0, resumed.output
    assert steps == list(range(4, 9))  # from the last checkpoint (step 4), not from 0
    a, b = load_decomposer(tmp_path / "whole"), load_decomposer(tmp_path / "fit")
    assert torch.allclose(a.directions, b.directions, atol=1e-6)


@pytest.mark.parametrize(
    ("swap", "message"),
    [
        ({"--method": "snmf"}, "interp capture"),
        ({"--method": "transcoder"}, "--target"),
        ({"--site": "7.mlp_hidden"}, "out of range"),
        ({"--site": "1.attn_foo"}, "unknown site"),
        ({"--model": "no-such-model"}, "no-such-model"),
        ({"--n-tokens": None}, "--live needs --n-tokens"),
        ({"--store": "somewhere"}, "takes no --store"),
    ],
)
def test_live_fit_clear_errors(tmp_path, swap, message):
    """Catches a traceback (or a silent fit) for SNMF, a transcoder, a bad site or model, a missing or extra flag."""
    args = live_args(tmp_path)
    for flag, value in swap.items():
        if flag in args:
            i = args.index(flag)
            args = [*args[:i], *args[i + 2 :]] if value is None else [*args[: i + 1], value, *args[i + 2 :]]
        else:
            args = [*args, flag, value]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "fit").exists()


def test_fit_without_store_or_live_says_what_to_give(tmp_path):
    result = runner.invoke(app, ["fit", "--method", "topk"])
    assert result.exit_code == 2 and "--store" in result.output and "--live" in result.output
