"""The store bench's decomposer-independent references (clean / zero-ablated passes, probing activations, letter
probes): computed once, kept on disk, reused by a later call, recomputed when anything they depend on changes, and
giving the same numbers as without them."""

from __future__ import annotations

import csv
import json

import torch
from fixed_decomposer import FixedConfig, FixedDirections, SplitIdentity
from test_absorption import planted
from test_bench import labelled_csv, tiny_store
from test_splice import contexts
from typer.testing import CliRunner

from interp.cli import app
from interp.evaluate.absorption import absorption, from_letter_tensors, letter_probes, letter_tensors
from interp.evaluate.reference import cached, reference_folder
from interp.evaluate.splice import reference_key, splice_reference, spliced_metrics

runner = CliRunner()


def test_cached_reuses_the_same_key_and_recomputes_a_changed_or_unfinished_one(tmp_path):
    """Catches a stale reuse (a changed key served the old tensors), a cache never read, and a half-written
    folder (no key.json) taken as finished."""
    calls = []

    def compute(value):
        calls.append(value)
        return {"x": torch.tensor([value])}

    assert cached(tmp_path, "k", {"a": 1}, lambda: compute(1.0))["x"].item() == 1.0
    assert cached(tmp_path, "k", {"a": 1}, lambda: compute(9.0))["x"].item() == 1.0  # from disk
    assert cached(tmp_path, "k", {"a": 2}, lambda: compute(2.0))["x"].item() == 2.0  # changed key
    assert calls == [1.0, 2.0]
    (
        reference_folder(tmp_path, "k", {"a": 1}) / "key.json"
    ).unlink()  # as if killed before the key was written
    assert cached(tmp_path, "k", {"a": 1}, lambda: compute(3.0))["x"].item() == 3.0
    memo = {}
    assert cached(tmp_path, "k", {"a": 2}, lambda: compute(5.0), memo)["x"].item() == 2.0
    assert cached(tmp_path, "k", {"a": 7}, lambda: compute(7.0), memo)["x"].item() == 7.0  # memo: per key
    assert calls == [1.0, 2.0, 3.0, 7.0]


def test_spliced_metrics_are_identical_with_a_reference_read_from_disk(tiny_llama, tmp_path):
    """The same numbers, bit for bit, with the clean / zero passes computed in the call or read back from the
    cache (catches a reference of other batches or positions, or one cast to a lower precision on disk)."""
    ctx = contexts(tiny_llama)
    null = FixedDirections(FixedConfig(n_features=4, d_in=128), torch.randn(4, 128))
    for decomposer in (SplitIdentity(128), null):
        fresh = spliced_metrics(tiny_llama, decomposer, "1.mlp_hidden", ctx, n_contexts=5, batch_size=2)
        key = reference_key(tiny_llama, "1.mlp_hidden", ctx, 5, 2)
        cached(tmp_path, "splice", key, lambda: splice_reference(tiny_llama, "1.mlp_hidden", ctx, 5, 2))
        reference = cached(tmp_path, "splice", key, lambda: {})  # read back from disk
        again = spliced_metrics(tiny_llama, decomposer, "1.mlp_hidden", ctx, 5, 2, reference=reference)
        assert again == fresh


def test_the_reference_key_changes_with_tokens_site_and_settings(tiny_llama):
    """Catches a key that leaves out what the reference depends on (it would be served for other tokens)."""
    ctx = contexts(tiny_llama)
    base = reference_key(tiny_llama, "1.mlp_hidden", ctx, 4, 2)
    other_tokens = contexts(tiny_llama)
    other_tokens.token_ids[1, 3] += 1
    changed = [reference_key(tiny_llama, "1.mlp_hidden", other_tokens, 4, 2),
               reference_key(tiny_llama, "0.mlp_hidden", ctx, 4, 2),
               reference_key(tiny_llama, "1.mlp_hidden", ctx, 3, 2),
               reference_key(tiny_llama, "1.mlp_hidden", ctx, 4, 1),
               reference_key(tiny_llama, "1.mlp_hidden", ctx, 4, 2, target_site="1.mlp_out")]  # fmt: skip
    assert all(key != base for key in changed)
    assert reference_key(tiny_llama, "1.mlp_hidden", contexts(tiny_llama), 4, 2) == base


def test_letter_probes_survive_the_round_trip_to_tensors():
    """The letter data and probes kept on disk give the same absorption scores as the ones fitted in memory."""
    data, dictionary = planted(absorb=True)
    probes = letter_probes(data)
    back, back_probes = from_letter_tensors(letter_tensors(data, probes))
    assert absorption(back, dictionary, probes=back_probes) == absorption(data, dictionary, probes=probes)


def _metrics(path):
    with open(path, newline="") as f:
        return {(r["decomposer"], r["metric"]): float(r["value"]) for r in csv.DictReader(f)
                if not r["metric"].endswith("_seconds")}  # fmt: skip


def test_store_bench_reuses_references_across_calls_and_matches_a_fresh_run(tmp_path, monkeypatch):
    """A second `bench store` call with another decomposer reads the first call's references (the clean /
    zero passes and the probing texts are not recomputed) and scores it exactly as a run without them; other
    settings (another --n-contexts) in a new folder are computed afresh."""
    store = tiny_store(tmp_path, 400)
    for name, k in (("a", 4), ("b", 8)):
        fit = ["fit", "--method", "topk", "--store", store, "--out", str(tmp_path / name), "--k", "32",
               "--topk-k", str(k), "--n-steps", "5", "--batch-size", "128", "--device", "cpu"]  # fmt: skip
        assert runner.invoke(app, fit).exit_code == 0
    labelled = labelled_csv(tmp_path / "probe.csv", 16)
    common = ["--n-contexts", "3", "--probe", str(labelled), "--n-texts", "16", "--device", "cpu",
              "--absorption-tokens", "0"]  # fmt: skip
    shared, alone = tmp_path / "shared", tmp_path / "alone"
    assert (
        runner.invoke(app, ["bench", "store", str(tmp_path / "a"), "--out", str(shared), *common]).exit_code
        == 0
    )
    kinds = sorted(p.name.split("-")[0] for p in (shared / "references").iterdir())
    assert kinds == ["probing", "splice"]
    import interp.evaluate.probing as probing
    import interp.evaluate.splice as splice

    with monkeypatch.context() as patch:  # the second call must not run the shared passes again
        patch.setattr(splice, "splice_reference", _refuse)
        patch.setattr(probing, "text_tokens", _refuse)
        patch.setattr("interp.evaluate.store_bench.splice_reference", _refuse)
        patch.setattr("interp.evaluate.store_bench.text_tokens", _refuse)
        args = ["bench", "store", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(shared), *common]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["bench", "store", str(tmp_path / "b"), "--out", str(alone), *common])
    assert result.exit_code == 0, result.output
    both, fresh = _metrics(shared / "metrics.csv"), _metrics(alone / "metrics.csv")
    assert {m: v for (d, m), v in both.items() if d == "b"} == {m: v for (d, m), v in fresh.items()}
    assert both[("a", "ce_clean")] == both[("b", "ce_clean")] and both[("a", "l0")] != both[("b", "l0")]
    # another number of contexts: a new reference, not the old one (its ce_clean differs from a 3-context one)
    other = tmp_path / "other"
    args = ["bench", "store", str(tmp_path / "b"), "--out", str(other), *common[2:], "--n-contexts", "6"]
    assert runner.invoke(app, args).exit_code == 0
    assert _metrics(other / "metrics.csv")[("b", "ce_clean")] != fresh[("b", "ce_clean")]
    key = json.loads(next((other / "references").glob("splice-*/key.json")).read_text())
    assert key["n_contexts"] == 6


def _refuse(*args, **kwargs):
    raise AssertionError("a shared reference was recomputed instead of read from the cache")
