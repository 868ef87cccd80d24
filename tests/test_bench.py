"""`interp bench` end to end: the synthetic bench on a tiny preset (outputs, resume, changed settings refused) and
the store bench on a tiny model (core metrics and probing on a user csv)."""

from __future__ import annotations

import csv
import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from interp.cli import app

runner = CliRunner()


def tiny_store(tmp_path, n_tokens: int) -> str:
    """A tiny-llama `1.resid_post` store of `n_tokens` from a small cats-and-dogs corpus; returns its folder."""
    corpus = tmp_path / "c.txt"
    corpus.write_text(
        "\n\n".join(f"Paragraph {i} talks about cats, dogs and the number {i * 7}." for i in range(40))
    )
    capture = ["capture", "--model", "tiny-llama", "--sites", "1.resid_post", "--corpus", str(corpus),
               "--n-tokens", str(n_tokens), "--context-len", "32", "--out", str(tmp_path / "run"), "--device", "cpu"]  # fmt: skip
    assert runner.invoke(app, capture).exit_code == 0
    return str(tmp_path / "run" / "1.resid_post")


def labelled_csv(path, n_texts: int):
    """A text,label csv of `n_texts` alternating cat (1) and stock-price (0) sentences; returns `path`."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in range(n_texts):
            writer.writerow([f"the cat sat on mat {i}" if i % 2 else f"stock prices rose {i} percent", i % 2])
    return path


TINY = ["--preset", "tiny", "--device", "cpu", "--set", "n_steps=8", "--set", "n_train=1024",
        "--set", "n_eval=512", "--set", "batch_size=128"]  # fmt: skip


def read_metrics(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_synthetic_bench_writes_report_resumes_and_refuses_other_settings(tmp_path):
    out = tmp_path / "bench"
    result = runner.invoke(app, ["bench", "synthetic", "--out", str(out), "--methods", "topk,snmf", *TINY])
    assert result.exit_code == 0, result.output
    rows = read_metrics(out / "metrics.csv")
    assert set(rows[0]) == {"decomposer", "method", "site", "metric", "value", "settings"}
    by = {(r["method"], r["metric"]): float(r["value"]) for r in rows}
    assert 5 < by[("topk", "l0")] <= 6.0  # the preset's k bounds TopK's L0
    assert by[("snmf", "mcc")] > 0 and 0 <= by[("topk", "f1")] <= 1
    assert {"mcc", "f1", "precision", "recall", "uniqueness", "explained_variance", "dead_fraction",
            "parent_f1", "child_f1"} <= {r["metric"] for r in rows}  # fmt: skip
    assert json.loads(rows[0]["settings"])["data"] == "dense"
    report = (out / "report.md").read_text()
    assert "| topk-w64-k6 | topk | synthetic-dense |" in report and "| snmf-w32-k6 | snmf |" in report
    assert "FVU" in (out / "frontier.html").read_text() or "fvu vs L0" in (out / "frontier.html").read_text()

    stamp = (out / "results" / "dense-topk.json").stat().st_mtime_ns
    again = runner.invoke(
        app, ["bench", "synthetic", "--out", str(out), "--methods", "topk,batchtopk", *TINY]
    )
    assert again.exit_code == 0, again.output
    assert (out / "results" / "dense-topk.json").stat().st_mtime_ns == stamp  # finished: not recomputed
    assert "dense/topk" not in again.output and "dense/batchtopk" in again.output  # a new method is added
    assert {r["method"] for r in read_metrics(out / "metrics.csv")} == {"topk", "snmf", "batchtopk"}

    changed = runner.invoke(app, ["bench", "synthetic", "--out", str(out), "--methods", "topk", *TINY,
                                  "--set", "k=5", "--set", "data.seed=7"])  # fmt: skip
    assert changed.exit_code == 2
    assert "k: 6 -> 5" in changed.output and "data.seed: 42 -> 7" in changed.output
    own = runner.invoke(app, ["bench", "synthetic", "--out", str(out), "--methods", "topk", *TINY,
                              "--set", "topk.aux_coeff=0.5"])  # fmt: skip
    assert own.exit_code == 2 and "config.aux_coeff: 0.03125 -> 0.5" in own.output
    assert "delete it and" in own.output and "decomposers/dense/topk" in own.output


def test_synthetic_bench_errors_are_one_line(tmp_path):
    result = runner.invoke(app, ["bench", "synthetic", "--out", str(tmp_path), "--methods", "nope", *TINY])
    assert result.exit_code == 2 and "unknown method or variant ['nope']" in result.output
    result = runner.invoke(app, ["bench", "synthetic", "--out", str(tmp_path), "--preset", "huge"])
    assert result.exit_code == 2 and "valid: tiny, cpu, gpu" in result.output
    result = runner.invoke(app, ["bench", "synthetic", "--out", str(tmp_path), "--set", "widht=3"])
    assert result.exit_code == 2 and "no such setting" in result.output


@pytest.mark.slow
def test_store_bench_core_metrics_and_probing_on_a_user_csv(tmp_path):
    store = tiny_store(tmp_path, 800)
    fit = ["fit", "--method", "topk", "--store", store, "--out", str(tmp_path / "topk"), "--k", "32",
           "--topk-k", "4", "--n-steps", "10", "--batch-size", "128", "--device", "cpu"]  # fmt: skip
    assert runner.invoke(app, fit).exit_code == 0
    labelled = labelled_csv(tmp_path / "probe.csv", 24)
    args = ["bench", "store", str(tmp_path / "topk"), "--out", str(tmp_path / "b"), "--n-contexts", "2",
            "--probe", str(labelled), "--n-texts", "24", "--device", "cpu"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    by = {r["metric"]: float(r["value"]) for r in read_metrics(tmp_path / "b" / "metrics.csv")}
    assert by["l0"] <= 4 and 0 <= by["alive_fraction"] <= 1 and by["shrinkage"] > 0
    assert {"ce_score", "kl_score", "probe_full", "probe_k1", "probe_random_k1", "tpp_n20"} <= set(by)
    assert {"core_seconds", "probing_seconds"} <= set(by)  # absorption skipped: no time either
    assert by["probe_full"] > 0.8  # two very different kinds of text: the activations separate them
    assert "absorption skipped" in result.output  # 800 tokens: too few distinct words per letter, said
    assert not any(m.startswith(("autointerp", "absorption")) for m in by)  # absent: empty, not faked
    # explanations written after the bench (columns of interp explain's explanations.parquet) enter on a rerun
    (tmp_path / "topk" / "index").mkdir()
    nan = float("nan")
    pd.DataFrame({"feature": [0, 1, 2], "detection_f1": [0.9, 0.7, nan], "fuzzing_f1": [0.6, 0.8, nan],
                  "detection_f1_shuffled": [0.5, 0.4, nan], "fuzzing_f1_shuffled": [0.5, 0.3, nan]}
                 ).to_parquet(tmp_path / "topk" / "index" / "explanations.parquet")  # fmt: skip
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "FVU" not in again.output  # finished: not recomputed
    by = {r["metric"]: float(r["value"]) for r in read_metrics(tmp_path / "b" / "metrics.csv")}
    assert by["autointerp_detection_f1"] == pytest.approx(0.8) and by[
        "autointerp_fuzzing_f1"
    ] == pytest.approx(0.7)
    assert by["autointerp_detection_f1_shuffled"] == pytest.approx(0.45) and by["autointerp_n_scored"] == 2
    report = (tmp_path / "b" / "report.md").read_text()
    assert "autointerp_detection_f1" in report and report.count("| topk |") == 1  # one row, not a second one


def test_store_bench_times_each_evaluation():
    """`<name>_seconds` per evaluation, none for one that measured nothing, and the suite's total (catches one
    evaluation's time booked to another, a skipped one given a time, or the total measured around the wrong
    span)."""
    import time

    from interp.evaluate.store_bench import timed

    def slow():
        time.sleep(0.2)
        return {"b": 2.0}

    def skipped():
        time.sleep(0.1)
        return {}

    metrics = timed({"fast": lambda: {"a": 1.0}, "slow": slow, "skipped": skipped})
    assert metrics["a"] == 1.0 and metrics["b"] == 2.0 and "skipped_seconds" not in metrics
    assert metrics["fast_seconds"] < 0.1 <= 0.2 <= metrics["slow_seconds"] < 1.0
    assert metrics["eval_seconds"] >= metrics["fast_seconds"] + metrics["slow_seconds"] + 0.1
