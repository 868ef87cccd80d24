"""`interp steer-judge`: a steering run's texts judged again by the LLM judge, without the steered model."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from fixed_decomposer import FixedConfig, FixedDirections
from test_steer import fixed_method, judge_server, steer_args  # noqa: F401 (fixtures)
from typer.testing import CliRunner

from interp.cli import app
from interp.core.io import atomic_write_json
from interp.steer.llm_judge import JudgeError
from interp.steer.rejudge import RejudgeError, rejudge
from interp.steer.report import select_strengths
from interp.steer.run import SteerEvalConfig

PROMPTS, SELECT = ("The", "A"), ("Yesterday,",)
N_SAMPLES = 2


class CountingJudge:
    """A judge by table: 2 for a text with "good", 1 with "meh", no rating for "junk"; counts the prompts.

    Each text names the concept and the prompt it continues (`_split`): a judge prompt whose concept or prompt
    block is not the text's own is recorded in `mismatched` (the rejudge passed the wrong instruction or concept)."""

    def __init__(self):
        self.prompts: list[str] = []
        self.mismatched: list[str] = []

    def __call__(self, prompts: list[str]) -> list[str]:
        self.prompts += prompts
        self.mismatched += [p for p in prompts if not self.matches(p)]
        return [self.reply(p) for p in prompts]

    @staticmethod
    def matches(prompt: str) -> bool:
        text = re.search(r"\[Text Fragment Start\]\n(.*)\n\[Text Fragment End\]", prompt, re.S)
        if text is None:
            return True  # the endpoint check
        concept, instruction = text.group(1).split(" | ")[:2]
        for block, own in (("Concept", concept), ("Prompt", instruction)):
            given = re.search(rf"\[{block} Start\]\n(.*)\n\[{block} End\]", prompt, re.S)
            if given is not None and given.group(1) != own:
                return False
        return True

    @staticmethod
    def reply(prompt: str) -> str:
        fragment = prompt.split("[Text Fragment Start]")[-1]
        return "Rating: [[2]]" if "good" in fragment else "Rating: [[1]]" if "meh" in fragment else "no idea"


def _split(concept: str, prompts: tuple[str, ...], word: str, offline: float) -> tuple[list[str], dict]:
    """Texts prompt-major as a run samples them, each naming its concept and prompt; offline scores `offline`."""
    texts = [f"{concept} | {p} | a {word} text {i}" for p in prompts for i in range(N_SAMPLES)]
    scores = {f"offline_{k}": [offline] * len(texts) for k in ("score", "concept", "fluency", "on_topic")}
    return texts, {**scores, **{k[8:]: v for k, v in scores.items()}}


def _cell(concept, method, target, select_word, select_offline, test_word, test_offline, keep_select=True):
    select_texts, select = _split(concept, SELECT, select_word, select_offline)
    texts, test = _split(concept, PROMPTS, test_word, test_offline)
    kind, sign = ("none", 0) if method == "unsteered" else ("kl", 1)
    row = {"concept": concept, "method": method, "kind": kind, "sign": sign, "target": target, "alpha": target,
           "kl": target, "reached": True, "reason": "", "site": "-" if kind == "none" else "1.mlp_out",
           "texts": texts, "select": select, "test": test}  # fmt: skip
    return {**row, "select_texts": select_texts} if keep_select else row


def write_run(folder, keep_select=True):
    """A finished run by hand: for method snmf the selection prompts favour KL 0.1 under the LLM judge (its
    selection texts are "good") but KL 0.5 under the offline judge; KL 0.5's test texts are the "good" ones."""
    folder.mkdir(parents=True)
    config = SteerEvalConfig(prompts=PROMPTS, select_prompts=SELECT, n_samples=N_SAMPLES, concepts="x.jsonl")
    (folder / "config.json").write_text(json.dumps(dataclasses.asdict(config)))
    cells = [_cell(c, "unsteered", 0.0, "meh", 0.5, "junk", 0.5) for c in ("cats", "dogs")]
    for concept in ("cats", "dogs"):
        cells += [_cell(concept, "snmf", 0.1, "good", 0.2, "meh", 0.3, keep_select),
                  _cell(concept, "snmf", 0.5, "meh", 1.5, "good", 1.6, keep_select),
                  _cell(concept, "random", 0.1, "meh", 0.4, "meh", 0.4, keep_select)]  # fmt: skip
    (folder / "cells.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cells))
    (folder / "detection.csv").write_text(
        "concept,method,feature,train_auroc,held_out_auroc,log_ratio\n"
        "cats,snmf,3,0.9,0.8,1.0\ndogs,snmf,4,0.9,0.7,1.0\ncats,random,-1,0.6,0.5,\ndogs,random,-1,0.6,0.5,\n"
    )
    return folder


def test_the_new_judge_chooses_the_strength_on_the_selection_prompts_only(tmp_path):
    run = write_run(tmp_path / "run")
    judge = CountingJudge()
    rows = rejudge(run, tmp_path / "out", "both", judge, {"model": "table"}, progress=False)
    chosen = select_strengths([r for r in rows if r["method"] != "unsteered"])
    # the LLM's selection scores pick KL 0.1 (the offline ones would pick 0.5, the test scores would pick 0.5)
    assert {chosen[c, "snmf"]["target"] for c in ("cats", "dogs")} == {0.1}
    assert chosen["cats", "snmf"]["test"]["score"] == [1.0] * 4  # "meh" texts: the three ratings are 1
    assert chosen["cats", "snmf"]["test"]["offline_score"] == [0.3] * 4  # the run's offline scores are kept
    # every cell's both splits were judged (3 ratings per text), the unsteered rows too
    assert len(judge.prompts) == 1 + 8 * 3 * (4 + 2)  # the endpoint check first
    assert not judge.mismatched  # each text judged against its own concept and prompt, on both splits
    summary = (tmp_path / "out" / "summary.md").read_text()
    # the unsteered test texts are "junk": 2 concepts x 4 texts x 3 ratings could not be parsed
    assert "LLM ratings that could not be parsed (rated 0): 24 of 144." in summary
    assert "rejudged (both)" in summary and "offline_score" in summary
    assert "| cats | 1.000 | 1.000 | 0.000 |" in summary  # per concept: snmf, random, unsteered (junk: 0)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["judge"] == "both" and config["prompts"] == list(PROMPTS)


def test_an_old_run_without_selection_texts_keeps_its_selection_and_says_so(tmp_path):
    run = write_run(tmp_path / "run", keep_select=False)
    judge = CountingJudge()
    rows = rejudge(run, tmp_path / "out", "llm", judge, progress=False)
    chosen = select_strengths([r for r in rows if r["method"] != "unsteered"])
    assert chosen["cats", "snmf"]["target"] == 0.5 and chosen["cats", "snmf"]["test"]["score"] == [2.0] * 4
    # the test splits, and the selection splits of the two unsteered rows (they kept their texts)
    assert len(judge.prompts) == 1 + 8 * 3 * 4 + 2 * 3 * 2 and not judge.mismatched
    snmf = next(r for r in rows if r["method"] == "snmf" and r["target"] == 0.1)
    assert (
        snmf["select_judge"] == "offline" and snmf["select"]["score"] == [0.2] * 2
    )  # the source's, untouched
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "6 of 6 cells kept no selection texts" in summary
    assert "offline_score" not in summary.split("Paired")[0]  # llm only: no offline column


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_resume_judges_only_the_cells_not_yet_judged(tmp_path):
    run = write_run(tmp_path / "run")
    fresh = rejudge(run, tmp_path / "fresh", "both", CountingJudge(), progress=False)
    lines = (run / "cells.jsonl").read_text().splitlines()
    (run / "cells.jsonl").write_text("\n".join(lines[:5]) + "\n" + lines[5][:30])  # a run still writing
    first = CountingJudge()
    rejudge(run, tmp_path / "out", "both", first, progress=False)
    assert len(first.prompts) == 1 + 5 * 3 * 6
    (run / "cells.jsonl").write_text("\n".join(lines) + "\n")  # the run went on
    again = CountingJudge()
    rows = rejudge(run, tmp_path / "out", "both", again, progress=False)
    assert len(again.prompts) == 1 + 3 * 3 * 6  # the endpoint check, then the three new cells only
    # as if judged in one go, in the run's order (compared as JSON: a constant score's Spearman is NaN)
    assert json.dumps(rows) == json.dumps(fresh) == json.dumps(_lines(tmp_path / "out" / "cells.jsonl"))
    assert (tmp_path / "out" / "summary.md").read_text() == (tmp_path / "fresh" / "summary.md").read_text()
    with pytest.raises(RejudgeError, match=r"settings\.judge: \"both\" -> \"llm\""):
        rejudge(run, tmp_path / "out", "llm", again, progress=False)


class DiesAfter(CountingJudge):
    """A judge that answers `n` calls (the endpoint check is one), then fails as a dropped endpoint does."""

    def __init__(self, n: int):
        super().__init__()
        self.calls_left = n

    def __call__(self, prompts: list[str]) -> list[str]:
        if self.calls_left == 0:
            raise JudgeError("the LLM endpoint stopped answering")
        self.calls_left -= 1
        return super().__call__(prompts)


def test_a_judge_failing_midway_keeps_what_was_judged_and_a_rerun_resumes(tmp_path):
    run = write_run(tmp_path / "run")
    fresh = rejudge(run, tmp_path / "fresh", "llm", CountingJudge(), progress=False)
    # the check, then 2 calls per cell (test and selection split): 3 cells are judged, the 4th fails
    with pytest.raises(JudgeError, match="stopped answering"):
        rejudge(run, tmp_path / "out", "llm", DiesAfter(1 + 2 * 3 + 1), progress=False)
    assert _lines(tmp_path / "out" / "cells.jsonl") == fresh[:3]
    # an interruption while a line was being written: that cell is judged again
    cells = tmp_path / "out" / "cells.jsonl"
    cells.write_text(cells.read_text() + json.dumps(fresh[3])[:40])
    again = CountingJudge()
    rows = rejudge(run, tmp_path / "out", "llm", again, progress=False)
    assert len(again.prompts) == 1 + 5 * 3 * 6 and rows == fresh == _lines(cells)


def test_an_interruption_before_the_first_cell_does_not_lock_the_folder(tmp_path, monkeypatch):
    """Killed between writing the settings and the config: the folder is still the rejudge's to resume."""
    import interp.steer.rejudge as module

    written = []

    def interrupted(path, value):
        if written:
            raise KeyboardInterrupt
        written.append(path)
        atomic_write_json(path, value)

    run = write_run(tmp_path / "run")
    monkeypatch.setattr(module, "atomic_write_json", interrupted)
    with pytest.raises(KeyboardInterrupt):
        rejudge(run, tmp_path / "out", "llm", CountingJudge(), progress=False)
    monkeypatch.undo()
    rows = rejudge(run, tmp_path / "out", "llm", CountingJudge(), progress=False)
    assert len(rows) == 8


def test_bad_sources_and_a_dead_endpoint_are_refused_with_nothing_written(tmp_path):
    judge = CountingJudge()
    with pytest.raises(RejudgeError, match="not a steer-eval run folder"):
        rejudge(tmp_path / "missing", tmp_path / "o1", "llm", judge)
    run = write_run(tmp_path / "run")
    cells = _lines(run / "cells.jsonl")
    untexted = write_run(tmp_path / "untexted")
    (untexted / "cells.jsonl").write_text("".join(json.dumps({**c, "texts": []}) + "\n" for c in cells))
    with pytest.raises(RejudgeError, match="have no generated texts"):
        rejudge(untexted, tmp_path / "o2", "llm", judge)
    with pytest.raises(RejudgeError, match="unknown judge 'offline'"):
        rejudge(run, tmp_path / "o3", "offline", judge)

    def dead(prompts):
        raise JudgeError("the LLM endpoint is unreachable")

    with pytest.raises(JudgeError):
        rejudge(run, tmp_path / "o4", "llm", dead)
    llm_only = write_run(tmp_path / "llm_only")  # a run judged by the LLM alone: no offline scores to keep
    llm_cells = [
        {**c, "test": {k: v for k, v in c["test"].items() if not k.startswith("offline_")}} for c in cells
    ]
    (llm_only / "cells.jsonl").write_text("".join(json.dumps(c) + "\n" for c in llm_cells))
    with pytest.raises(RejudgeError, match="no offline scores to compare with"):
        rejudge(llm_only, tmp_path / "o5", "both", judge)
    assert not judge.prompts and not any((tmp_path / f"o{i}").exists() for i in range(1, 6))
    source = (run / "cells.jsonl").read_text()
    with pytest.raises(RejudgeError, match="another folder than the run judged"):
        rejudge(run, run, "llm", judge)
    with pytest.raises(RejudgeError, match="holds a steer-eval run"):
        rejudge(run, untexted, "llm", judge)  # a steer-eval folder as --out is not overwritten
    assert not judge.prompts and (run / "cells.jsonl").read_text() == source
    assert "texts" in _lines(untexted / "cells.jsonl")[0] and not (untexted / "rejudge.json").exists()


@pytest.mark.slow
def test_steer_judge_through_a_real_server(tmp_path, fixed_method, judge_server, monkeypatch):  # noqa: F811
    """A tiny steer-eval run (offline judge), judged again through `transformers serve` of a planted model
    that rates every text 2: the rejudged scores are the LLM's, not the offline ones; a rerun sends only the
    endpoint check; a dead endpoint is refused before anything is written."""
    FixedDirections(FixedConfig(n_features=6, d_in=128)).save(tmp_path / "fixed")
    runner = CliRunner()
    result = runner.invoke(app, steer_args(tmp_path, tmp_path / "fixed"))
    assert result.exit_code == 0, result.output
    monkeypatch.setenv("INTERP_JUDGE_URL", judge_server.url)
    monkeypatch.setenv("INTERP_JUDGE_MODEL", judge_server.model)
    args = ["steer-judge", str(tmp_path / "out"), "--judge", "both", "--out", str(tmp_path / "judged")]
    judged = runner.invoke(app, args)
    assert judged.exit_code == 0, judged.output
    source = [json.loads(line) for line in (tmp_path / "out" / "cells.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in (tmp_path / "judged" / "cells.jsonl").read_text().splitlines()]
    assert len(rows) == len(source) == 14 and all(r["select_texts"] for r in source)
    for old, new in zip(source, rows, strict=True):
        for split in ("select", "test"):
            assert new[split]["score"] == [2.0] * len(old[split]["score"]) != old[split]["score"]
            assert new[split]["offline_score"] == old[split]["score"] and new[split]["unparseable"] == 0
    assert "could not be parsed (rated 0): 0 of" in judged.output and "Rank agreement" in judged.output
    posts = judge_server.log.read_text().count("POST /v1/chat/completions")
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert judge_server.log.read_text().count("POST /v1/chat/completions") == posts + 1  # only the check
    monkeypatch.setenv("INTERP_JUDGE_URL", "http://127.0.0.1:9/v1")  # nothing listens on port 9
    dead = runner.invoke(app, [*args[:-1], str(tmp_path / "dead"), "--timeout", "2"])
    assert dead.exit_code == 2 and "unreachable" in dead.output and "Traceback" not in dead.output
    assert not (tmp_path / "dead").exists()
    assert re.search(r"\| unsteered \| - \| 2\.000", judged.output)


def test_a_rating_without_brackets_is_read_and_other_numbers_are_not():
    """SmolLM2-135M, asked for `Rating: [[N]]`, often answers `Rating: 2` followed by more text."""
    from interp.steer.llm_judge import parse_rating

    assert parse_rating("Rating: 2\n\nThe text fragment below is rated 2 out of 5.") == 2.0
    assert parse_rating("Careful.\n\nRating: 1. You need to be careful.\n\nThe rating is 1.") == 1.0
    assert parse_rating("rating: 0 at first; Rating: 2 on reflection") == 2.0
    assert parse_rating("Rating: 2/5") is None and parse_rating("Rating: 1.5 stars") is None
    assert parse_rating("It is rated 2 out of 5") is None and parse_rating("Rating: 7") is None
    assert parse_rating("Rating: [[0]] though Rating: 2") == 0.0  # the bracketed form wins
