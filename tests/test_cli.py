"""The `interp` command line on a tiny model: capture, resume, summary, models, errors."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from interp.cli import app
from interp.store import ActivationStore

runner = CliRunner()


def write_corpus(path):
    path.write_text(
        "\n\n".join(f"Paragraph {i} talks about cats, dogs and the number {i * 7}." for i in range(60))
    )
    return path


def test_capture_then_resume_then_summary(tmp_path):
    corpus = write_corpus(tmp_path / "c.txt")
    args = [
        "capture",
        "--model",
        "tiny-llama",
        "--sites",
        "1.mlp_hidden,0.resid_post",
        "--corpus",
        str(corpus),
        "--n-tokens",
        "300",
        "--context-len",
        "32",
        "--out",
        str(tmp_path / "run"),
        "--device",
        "cpu",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "wrote 300 tokens" in result.output and "1.mlp_hidden" in result.output
    store = ActivationStore.open(tmp_path / "run" / "1.mlp_hidden")
    assert store.n_tokens == 300 and store.d == 128
    again = runner.invoke(app, args)  # nothing left to do: resumes at the end
    assert again.exit_code == 0 and "wrote 0 tokens" in again.output
    more = runner.invoke(
        app, [*args[:-4], "--out", str(tmp_path / "run"), "--n-tokens", "400", "--device", "cpu"]
    )
    assert more.exit_code == 0 and ActivationStore.open(tmp_path / "run" / "1.mlp_hidden").n_tokens == 400
    summary = runner.invoke(app, ["summary", str(tmp_path / "run" / "0.resid_post")])
    assert summary.exit_code == 0 and "0.resid_post" in summary.output


def test_models_lists_builtins():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    assert "gemma-3-270m" in result.output and "tiny-gemma2" in result.output


def test_errors_are_one_clear_line(tmp_path):
    corpus = write_corpus(tmp_path / "c.txt")
    base = [
        "capture",
        "--model",
        "tiny-gpt2",
        "--corpus",
        str(corpus),
        "--n-tokens",
        "50",
        "--out",
        str(tmp_path),
    ]
    cases = {
        "--sites=0.mlp": "unknown site '0.mlp'",
        "--sites=7.mlp_out": "out of range",
        "--backend=tl": "unknown backend 'tl'",
        "--context-len=999": "pass --context-len 256 or less",
    }
    for flag, message in cases.items():
        result = runner.invoke(app, [*base, flag])
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output
    missing = runner.invoke(app, ["capture", "--model", "nope", "--out", str(tmp_path)])
    assert missing.exit_code == 2 and "unknown model 'nope'" in missing.output
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    result = runner.invoke(
        app, ["capture", "--model", "tiny-gpt2", "--corpus", str(empty), "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "holds no text" in result.output
    result = runner.invoke(app, ["fit", "--method", "nmf", "--store", str(tmp_path)])
    assert result.exit_code == 2 and "unknown method 'nmf'" in result.output


def test_fit_then_evaluate_snmf_and_saes(tmp_path):
    corpus = write_corpus(tmp_path / "c.txt")
    capture = [
        "capture",
        "--model",
        "tiny-llama",
        "--sites",
        "1.mlp_hidden",
        "--corpus",
        str(corpus),
        "--n-tokens",
        "1500",
        "--context-len",
        "32",
        "--out",
        str(tmp_path / "run"),
        "--device",
        "cpu",
    ]
    assert runner.invoke(app, capture).exit_code == 0
    store = str(tmp_path / "run" / "1.mlp_hidden")
    fits = {
        "snmf": ["--k", "16", "--max-iter", "40"],
        "topk": ["--k", "64", "--topk-k", "4", "--n-steps", "30", "--batch-size", "256"],
        "mpsae": ["--k", "64", "--topk-k", "4", "--n-steps", "30", "--batch-size", "256"],
    }
    for method, flags in fits.items():
        result = runner.invoke(app, ["fit", "--method", method, "--store", store, "--out", str(tmp_path / method),
                                     "--device", "cpu", *flags])  # fmt: skip
        assert result.exit_code == 0, result.output
    result = runner.invoke(
        app, ["evaluate", *(str(tmp_path / m) for m in fits), "--n-contexts", "4", "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].split()[:4] == ["decomposer", "site", "n_features", "fvu"]
    assert [line.split()[0] for line in lines[1:]] == list(fits)
    assert "nan" not in result.output


def test_a_model_from_a_local_folder_reloads_from_any_directory(tmp_path, monkeypatch):
    """Stores record a local model by its absolute path, so evaluate, index (no --model) and the browser's live
    pages reload it from another working directory (the folder's basename alone did not load)."""
    from interp.models import load_model

    model = load_model("tiny-llama", device="cpu")
    model.hf.save_pretrained(tmp_path / "m")
    model.tokenizer.save_pretrained(tmp_path / "m")
    corpus = write_corpus(tmp_path / "c.txt")
    monkeypatch.chdir(tmp_path)
    capture = ["capture", "--model", "m", "--sites", "1.mlp_hidden", "--corpus", str(corpus), "--n-tokens",
               "300", "--context-len", "32", "--out", str(tmp_path / "run"), "--device", "cpu"]  # fmt: skip
    assert runner.invoke(app, capture).exit_code == 0
    store = ActivationStore.open(tmp_path / "run" / "1.mlp_hidden")
    assert store.manifest.model == str((tmp_path / "m").resolve())
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    fit = ["fit", "--method", "snmf", "--store", str(store.path), "--out", str(tmp_path / "snmf"), "--k", "8",
           "--max-iter", "10", "--device", "cpu"]  # fmt: skip
    assert runner.invoke(app, fit).exit_code == 0
    index = runner.invoke(app, ["index", str(tmp_path / "snmf"), "--device", "cpu"])
    assert index.exit_code == 0, index.output
    result = runner.invoke(app, ["evaluate", str(tmp_path / "snmf"), "--n-contexts", "2", "--device", "cpu"])
    assert result.exit_code == 0 and "nan" not in result.output.split("\n", 1)[1], result.output
    again = load_model(store.manifest.model, device="cpu")  # what the browser's live pages do
    assert torch.equal(again.hf.model.embed_tokens.weight, model.hf.model.embed_tokens.weight)
    assert again.transformer_lens().cfg.d_model == 64


def test_mistakes_and_interrupts_get_one_clear_line(tmp_path, monkeypatch):
    import interp.capture
    from interp.store import StoreManifest

    corpus = write_corpus(tmp_path / "c.txt")
    capture = ["capture", "--model", "tiny-gpt2", "--corpus", str(corpus), "--n-tokens", "50", "--out",
               str(tmp_path / "run"), "--device", "cpu"]  # fmt: skip

    def clear(result, code: int, message: str) -> None:
        assert result.exit_code == code and message in result.output, result.output
        assert "Traceback" not in result.output and "nan" not in result.output

    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    clear(runner.invoke(app, [*capture, "--distributed"]), 2, "--distributed needs torchrun")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("Un café crème, s'il vous plaît.\n\nEncore un café.".encode("latin-1"))
    clear(
        runner.invoke(app, [*capture[:3], "--corpus", str(latin), *capture[5:]]), 2, "is not UTF-8 text: byte"
    )
    empty = ActivationStore.create(tmp_path / "empty", StoreManifest(
        model="tiny-gpt2", site="0.resid_post", d=64, dtype="float32", corpus_fingerprint="x", context_len=8,
        drop_bos=True))  # fmt: skip
    clear(runner.invoke(app, ["summary", str(empty.path)]), 2, "is empty (0 tokens)")
    clear(runner.invoke(app, ["fit", "--method", "topk", "--store", str(empty.path), "--lr", "-1"]), 2,
          "--lr: lr=-1.0 must be >= 0")  # fmt: skip
    unknown = runner.invoke(app, ["fit", "--method", "topk", "--store", str(empty.path), "--set", "foo=1"])
    clear(unknown, 2, "--set foo=... does not apply to method 'topk'; its settings: ")
    assert "n_steps" in unknown.output and "lr" in unknown.output

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(interp.capture, "capture_corpus", ctrl_c)
    result = runner.invoke(app, capture)
    clear(result, 130, "interrupted; rerun the same command to resume")


def test_the_hub_is_off_unless_asked_and_the_error_says_how(tmp_path, monkeypatch):
    from interp.cli.common import offline_by_default

    assert offline_by_default({}) == {
        n: "1" for n in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    }
    online = offline_by_default({"INTERP_ONLINE": "1", "HF_HUB_OFFLINE": "1"})
    assert online["HF_HUB_OFFLINE"] == online["HF_DATASETS_OFFLINE"] == "0"
    assert (
        offline_by_default({"HF_HUB_OFFLINE": "0"})["HF_HUB_OFFLINE"] == "0"
    )  # the user's own setting stays
    monkeypatch.setenv("INTERP_ONLINE", "0")  # restored after the test
    assert runner.invoke(app, ["--online", "models"]).exit_code == 0
    import os

    assert os.environ["INTERP_ONLINE"] == "1"
    monkeypatch.setenv("INTERP_ONLINE", "0")
    for flag, name in (("--model", "no-such-org/no-such-model"), ("--corpus", "no-such-org/no-such-data")):
        result = runner.invoke(app, ["capture", "--model", "tiny-gpt2", flag, name, "--out", str(tmp_path),
                                     "--device", "cpu"])  # fmt: skip
        assert result.exit_code == 2 and "pass --online before the command" in result.output, result.output
        assert "INTERP_ONLINE=1" in result.output


def test_set_types_values_from_the_config_annotations():
    """`--set stream=false` on a `bool | None` field is False (it was the truthy string "false"); every command's
    --set goes through this one parser."""
    import pytest

    from interp.cli.common import coerce, parse_overrides
    from interp.cli.fit import method_config

    snmf = method_config(
        "snmf", parse_overrides(["stream=false", "g_on_disk=0", "hierarchy=40,20", "tol=1e-3"])
    )
    assert (
        snmf.stream is False and snmf.g_on_disk is False and snmf.hierarchy == (40, 20) and snmf.tol == 1e-3
    )
    assert method_config("snmf", parse_overrides(["stream=TRUE", "g_on_disk=none"])).stream is True
    assert method_config("snmf", {"g_on_disk": "None"}).g_on_disk is None
    assert (
        coerce("off", bool | None) is False
        and coerce("7", int | None) == 7
        and coerce("x", str | None) == "x"
    )
    with pytest.raises(ValueError, match="--set stream='maybe': expected true or false"):
        method_config("snmf", {"stream": "maybe"})
    with pytest.raises(ValueError, match="--set takes name=value"):
        parse_overrides(["stream"])
