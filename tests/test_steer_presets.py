"""`steer-eval --preset`: a preset expands to its documented settings, the TOML file and explicit flags override it,
its values are recorded in config.json (a resume with a changed preset is refused), bad use is a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixed_decomposer import FixedConfig, FixedDirections
from repo_scripts import load_script
from typer.testing import CliRunner

from interp.cli import app
from interp.cli.steer_eval import steer_eval_config
from interp.decompose import base
from interp.steer.presets import PRESETS, PresetError
from interp.steer.run import SteerEvalConfig

DOCS = Path(__file__).resolve().parents[1] / "docs" / "steering.md"


def test_paper_preset_expands_to_the_papers_settings():
    config = steer_eval_config(None, {}, "paper")
    assert config.kl_targets == (0.025, 0.05, 0.1, 0.2, 0.5)
    assert config.steer_at == "paper" and config.signs == (1,)
    assert config.methods == ("features", "diff_in_means", "random") and config.n_random == 0
    assert (config.top_k, config.top_p) == (30, 0.3)
    assert config.n_samples * len(config.prompts) == 8  # the paper's 8 samples per setting
    for name, value in PRESETS["paper"].settings.items():  # every preset value reaches the config
        assert getattr(config, name) == value, name
    assert config != SteerEvalConfig()  # the preset changes something (it is not silently ignored)


def test_the_docs_table_lists_every_preset_value():
    text = DOCS.read_text()
    for name, value in PRESETS["paper"].settings.items():
        shown = ", ".join(str(v) for v in value) if isinstance(value, tuple) else str(value)
        assert f"| `{name}` | {shown} |" in text, name


def test_toml_and_explicit_flags_override_the_preset(tmp_path):
    toml = tmp_path / "s.toml"
    toml.write_text("max_new_tokens = 7\ntop_p = 0.5\n")
    config = steer_eval_config(toml, {"n_samples": 5, "signs": (1, -1), "top_p": 0.9}, "paper")
    assert (config.n_samples, config.signs) == (5, (1, -1))  # flags win over the preset
    assert config.max_new_tokens == 7  # the TOML file wins over the preset
    assert config.top_p == 0.9  # flags win over the TOML file
    assert config.kl_targets == PRESETS["paper"].settings["kl_targets"]  # the rest stays the preset's
    with pytest.raises(PresetError, match="valid: paper"):
        steer_eval_config(None, {}, "axbench")


def test_preset_run_records_its_values_and_a_changed_preset_is_refused(tmp_path, monkeypatch):
    monkeypatch.setitem(base.METHODS, "fixed", "fixed_decomposer:FixedDirections")
    FixedDirections(FixedConfig(n_features=6, d_in=128)).save(tmp_path / "fixed")
    rows = [{"text": f"the {w} {w} is here and the {w} sat {i}", "concept": c}
            for i in range(8) for c, w in (("cats", "cat"), ("dogs", "dog"))]  # fmt: skip
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "s.toml").write_text('prompts = ["The cat", "The dog"]\nselect_prompts = ["Yesterday,"]\n')
    base_args = ["steer-eval", "--preset", "paper", "--config", str(tmp_path / "s.toml"), "--model", "tiny-llama",
                 "--site", "1.mlp_hidden", "--concepts", str(tmp_path / "c.jsonl"), "--device", "cpu",
                 "--out", str(tmp_path / "out")]  # fmt: skip
    runner = CliRunner()
    missing = runner.invoke(app, base_args)
    assert missing.exit_code != 0 and "--preset paper needs --decomposer" in missing.output
    assert "Traceback" not in missing.output and not (tmp_path / "out").exists()
    args = [*base_args, "--decomposer", str(tmp_path / "fixed"), "--kl-targets", "0.002", "--max-new-tokens", "3",
            "--methods", "features,diff_in_means"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["kl_targets"] == [0.002] and saved["max_new_tokens"] == 3  # the flags'
    assert saved["signs"] == [1] and saved["n_samples"] == 2 and saved["top_k"] == 30  # the preset's
    cells = (tmp_path / "out" / "cells.jsonl").read_text().splitlines()
    assert len(cells) == 2 + 2 * 2  # unsteered per concept + concepts x methods, one sign, one target
    changed = {**PRESETS["paper"].settings, "top_p": 0.5}
    monkeypatch.setitem(PRESETS, "paper", type(PRESETS["paper"])(PRESETS["paper"].about, changed))
    refused = runner.invoke(app, args)
    assert refused.exit_code != 0 and "top_p" in refused.output and "Traceback" not in refused.output


def _table_module():
    return load_script("benchmarks/steer_paper_table.py", "steer_paper_table")


def _fake_run(folder: Path, site: str, scores: dict[str, float], **config) -> None:
    """A run folder: config.json and cells.jsonl with constant scores (2 prompts x 1 sample, one KL target)."""
    folder.mkdir()
    settings = {"model": "m", "concepts": "c", "concept_names": [], "per_concept": 4, "prompts": ["a", "b"],
                "select_prompts": ["s"], "n_samples": 1, "max_new_tokens": 3, "top_k": 30, "top_p": 0.3,
                "seed": 0, "judge": "offline", "kl_targets": [0.1], "signs": [1], "site": site, **config}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(settings))
    lines = []
    for method, score in scores.items():
        for concept in ("x", "y"):
            split = {k: [score, score] for k in ("score", "on_topic", "concept", "fluency")}
            lines.append({"concept": concept, "method": method, "kind": "kl", "sign": 1, "target": 0.1,
                          "reached": True, "site": site, "select": split, "test": split})  # fmt: skip
    (folder / "cells.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")


def test_paper_table_merges_runs_and_names_a_baseline_found_at_two_sites(tmp_path):
    table = _table_module().table
    _fake_run(tmp_path / "a", "9.mlp_hidden", {"snmf": 1.5, "diff_in_means": 1.0, "unsteered": 0.5})
    _fake_run(tmp_path / "b", "9.mlp_out", {"topk": 1.2, "diff_in_means": 0.8, "unsteered": 0.5})
    text = table([tmp_path / "a", tmp_path / "b"])
    assert "| snmf | 9.mlp_hidden | 1.500 [1.500, 1.500]" in text and "| topk | 9.mlp_out | 1.200" in text
    assert "| diff_in_means@9.mlp_hidden |" in text and "| diff_in_means@9.mlp_out |" in text  # not merged
    assert "| snmf - topk | 0.300 [0.300, 0.300] | higher |" in text  # paired across the two runs
    assert "| snmf | 9.mlp_hidden | 1.500 [1.500, 1.500] | 1.500 [1.500, 1.500] | 1.500 [1.500, 1.500] | " \
           "1.500 [1.500, 1.500] | 2 / 2 |" in text  # fmt: skip
    _fake_run(tmp_path / "c", "9.mlp_out", {"topk": 1.2}, n_samples=2)
    with pytest.raises(SystemExit, match="n_samples"):
        table([tmp_path / "a", tmp_path / "c"])


def test_per_target_table_keeps_unreached_cells_out_and_counts_them(tmp_path):
    by_target = _table_module().by_target
    _fake_run(tmp_path / "a", "9.mlp_hidden", {"snmf": 1.5, "unsteered": 0.5})
    cells = tmp_path / "a" / "cells.jsonl"
    rows = [json.loads(line) for line in cells.read_text().splitlines()]
    missed = {**rows[1], "test": {k: [0.0, 0.0] for k in rows[1]["test"]}, "reached": False}  # concept y
    cells.write_text("\n".join(json.dumps(r) for r in [rows[0], missed, *rows[2:]]) + "\n")
    text = by_target([tmp_path / "a"])
    # concept y's unreached cell (score 0) would pull the mean below 1.5 if it were counted
    assert "| 0.1 | 1.500 [1.500, 1.500] / 1.500 [1.500, 1.500] (1 not reached) |" in text
