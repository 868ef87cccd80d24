"""Autointerp and the LLM client: parsers, metrics and example choice against planted data; the whole pipeline
through a real `transformers serve` of a planted chat model (known replies to known prompts)."""

from __future__ import annotations

import dataclasses
import http.server
import json
import math
import shutil
import threading
from pathlib import Path

import pytest
import torch
from llm_server import Server, planted_chat_model, serve_command

from interp.autointerp import ExplainConfig, explain_index, explanation_client, parse_features
from interp.autointerp.examples import (
    FeatureExamples,
    Snippet,
    candidate_pool,
    load_encoder,
    non_activating,
    pool_codes,
)
from interp.autointerp.prompts import (
    DETECTION_ASK,
    EXPLAINER_ASK,
    FUZZING_ASK,
    marked,
    parse_explanation,
    parse_labels,
)
from interp.autointerp.scoring import derangement, detection_trials, fuzzing_trials, metrics, score
from interp.autointerp.simulation import (
    SIMULATION_ASK,
    correlation,
    parse_numbers,
    simulation_score,
    simulation_trials,
)
from interp.features import FeatureIndex
from interp.llm import LLMClient, LLMConfig, LLMError, ResponseCache

EXPLANATION = "planted pattern"
REPLIES = {  # last word of a prompt -> the planted model's reply
    EXPLAINER_ASK.split()[-1]: f"[EXPLANATION]: {EXPLANATION}",
    DETECTION_ASK.split()[-1]: "[1, 1, 1, 1]",  # says "fires" to every example of a 4-example prompt
    FUZZING_ASK.split()[-1]: "I am not sure",  # malformed: no list
    SIMULATION_ASK.split()[-1]: "[0, 0, 0, 10, 0, 0, 0]",  # the centre token of a 7-token window fires
}
SIMULATED = [0.0, 0.0, 0.0, 10.0, 0.0, 0.0, 0.0]
SMALL = ExplainConfig(n_explain=4, n_test=4, per_prompt=4, chunk=2, context=3)


# ------------------------------------------------------------------------------------------ parsing, metrics
def test_replies_are_parsed_or_counted_malformed():
    assert parse_explanation("thinking...\n[EXPLANATION]: dates in headlines") == (
        "dates in headlines",
        "tagged",
    )
    assert parse_explanation("no tag here\nthe word cat") == ("the word cat", "untagged")
    assert parse_explanation("  ") == ("", "empty") and parse_explanation(None) == ("", "empty")
    assert parse_labels("Sure: [1, 0, 1]", 3) == [1, 0, 1]
    assert parse_labels("[EXPLANATION] then [true, false]", 2) == [1, 0]
    assert parse_labels("[1 0 1]", 3) == [1, 0, 1]
    for bad in ("[1, 0]", "1, 0, 1", "[1, 2, 0]", "", None):
        assert parse_labels(bad, 3) is None
    # one example: a reply that starts with its label counts (small models answer so); not for longer lists
    assert parse_labels("No, the text does not", 1) == [0] and parse_labels(" Yes.", 1) == [1]
    assert parse_labels("1", 1) == [1] and parse_labels("[0]", 1) == [0]
    assert parse_labels("Nothing fires", 1) is None and parse_labels("No, no, yes", 3) is None


def test_simulation_parses_numbers_and_correlates_over_all_tokens():
    assert parse_numbers("Sure: [0, 3, 12, -1]", 4) == [0.0, 3.0, 10.0, 0.0]  # clipped to 0-10
    assert parse_numbers("0 7 0", 3) == [0.0, 7.0, 0.0]  # no brackets: exactly n numbers
    for bad in ("[1, 2]", "[1, 2, 3] and", "", None, "none of them"):
        assert parse_numbers(bad, 4 if bad == "[1, 2, 3] and" else 3) is None
    true = torch.tensor([0.0, 1.0, 4.0, 0.0])
    assert correlation(true * 3 + 1, true) == pytest.approx(1.0)  # scale- and shift-free
    assert correlation(-true, true) == pytest.approx(-1.0)
    assert math.isnan(correlation(torch.zeros(4), true)) and math.isnan(correlation(true[:1], true[:1]))
    pos = [Snippet(f"{i}:1", ["a", "b", "c"], [0.0, 2.0, 0.5], True, 1) for i in range(2)]
    neg = [Snippet("9:1", ["x", "y", "z"], [0.0, 0.0, 0.0], False, 1)]
    trials = simulation_trials(FeatureExamples(3, pos, pos, neg, "planted"))
    assert [t.labels for t in trials] == [[0.0, 2.0, 0.5]] * 2 + [[0.0] * 3] and trials[0].texts == [
        "a\nb\nc"
    ]
    # predictions equal to the truth (scaled) correlate 1 over the concatenation; a malformed reply is left out
    result, malformed = simulation_score(trials, ["[0, 8, 2]", "[0, 8, 2]", "[0, 0]"])
    assert malformed == 1 and result["n"] == 6 and result["correlation"] == pytest.approx(1.0)
    result, _ = simulation_score(trials, ["[5, 0, 0]", "[5, 0, 0]", "[0, 0, 0]"])  # the wrong token
    assert result["correlation"] < 0


def test_metrics_by_hand():
    m = metrics([1, 1, 1, 0, 0, 0], [1, 1, 0, 1, 0, 0])  # tp 2, fn 1, fp 1, tn 2
    assert m["accuracy"] == pytest.approx(4 / 6) and m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3) and m["f1"] == pytest.approx(2 / 3) and m["n"] == 6
    always_yes = metrics([1, 0, 1, 0], [1, 1, 1, 1])
    assert (
        always_yes["accuracy"] == 0.5
        and always_yes["recall"] == 1
        and always_yes["f1"] == pytest.approx(2 / 3)
    )
    assert math.isnan(metrics([], [])["accuracy"])


def test_derangement_gives_every_feature_another_ones_explanation():
    donors = derangement(list(range(10)), seed=3)
    assert sorted(donors) == list(range(10)) and sorted(donors.values()) == list(range(10))
    assert all(f != d for f, d in donors.items())
    assert derangement([5], seed=0) == {}


def test_feature_selection():
    assert parse_features("0-3,7", None, 10) == [0, 1, 2, 3, 7]
    assert len(parse_features(None, 4, 10)) == 4 and parse_features(None, None, 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="out of range"):
        parse_features("8-12", None, 10)
    with pytest.raises(ValueError, match="not both"):
        parse_features("1", 3, 10)


def planted_examples() -> FeatureExamples:
    def snip(i: int, acts: list[float], activating: bool, texts: list[str]) -> Snippet:
        return Snippet(f"{i}:2", texts, acts, activating, 2)

    pos = [snip(i, [0, 0, 5, 2, 0], True, ["a", " b", " c", " d", " e"]) for i in range(3)]
    neg = [snip(10 + i, [0] * 6, False, ["p", " q", " r", " s", " t", " u"]) for i in range(3)]
    return FeatureExamples(7, pos, pos, neg, "planted")


def test_detection_and_fuzzing_trials_are_balanced_and_marked_right():
    fx = planted_examples()
    det = detection_trials(fx, per_prompt=4, seed=0)
    assert [len(t.labels) for t in det] == [4, 2] and sum(sum(t.labels) for t in det) == 3
    assert all("<<" not in text for t in det for text in t.texts)
    fuzz = fuzzing_trials(fx, threshold=0.0, per_prompt=6, seed=0)
    (trial,) = fuzz
    for text, label in zip(trial.texts, trial.labels, strict=True):  # 5 and 2 > 0.3 * 5 are marked; the
        assert text == ("a b<< c d>> e" if label else "p q<< r s>> t u")  # same offsets copied to the others
    assert sorted(trial.labels) == [0, 0, 0, 1, 1, 1]
    assert marked(["x", "y", "z"], {0, 2}) == "<<x>>y<<z>>"
    result, malformed = score(det, ["[1, 1, 1, 1]", "nonsense"])
    assert malformed == 1 and result["n"] == 4


def test_cache_keeps_whole_lines_after_a_torn_write(tmp_path):
    path = tmp_path / "cache.jsonl"
    cache = ResponseCache(path)
    cache.put("a", "first")
    cache.put("b", "second")
    with open(path, "a") as f:
        f.write('{"key": "c", "resp')  # a write cut short
    again = ResponseCache(path)
    assert again.get("a") == "first" and again.get("b") == "second" and again.torn == 1 and len(again) == 2
    again.put("d", "fourth")
    assert ResponseCache(path).get("d") == "fourth" and len(ResponseCache(path)) == 3


def test_the_map_bar_advances_per_reply_and_ends_at_the_request_count(monkeypatch):
    """The old `map` waited with FIRST_EXCEPTION (which returns only when every request is done), so the bar sat
    at 0 during the run and showed 1/N at its end (redirected to a file: the 959 later updates fell inside one
    refresh interval, then the bar was cleared)."""
    import io
    import time

    log = io.StringIO()
    monkeypatch.setattr("sys.stderr", log)
    n, saw_progress = 6, []
    client = LLMClient(LLMConfig(url="http://127.0.0.1:9/v1", model="m", concurrency=8))

    def chat(messages, **params):
        if messages[0]["content"] == "0":
            time.sleep(0.3)  # past tqdm's refresh interval, so the first reply is drawn
            return "0"
        deadline = time.monotonic() + 3
        while f"| 1/{n}" not in log.getvalue() and time.monotonic() < deadline:
            time.sleep(0.02)  # the others answer once the bar has counted the first reply
        saw_progress.append(f"| 1/{n}" in log.getvalue())
        return messages[0]["content"]

    monkeypatch.setattr(client, "chat", chat)
    replies = client.map([[{"role": "user", "content": str(i)}] for i in range(n)], desc="score")
    assert replies == [str(i) for i in range(n)]
    assert saw_progress == [True] * (n - 1)  # the bar moved while requests were still out
    last = [part for part in log.getvalue().replace("\n", "\r").split("\r") if part.strip()][-1]
    assert f"| {n}/{n}" in last, last


# ------------------------------------------------------------------------------------------ examples
@pytest.fixture(scope="module")
def toy_index(tmp_path_factory) -> Path:
    from test_features import shared_toy_cache

    root = shared_toy_cache(tmp_path_factory)
    return root / "decomposers" / "toy" / "1.mlp_hidden" / "topk-k32" / "index"


@pytest.fixture
def index_copy(toy_index, tmp_path) -> FeatureIndex:
    """A copy of the toy TopK index (its manifest still names the decomposer and store, so codes recompute)."""
    shutil.copytree(toy_index, tmp_path / "index")
    return FeatureIndex.open(tmp_path / "index")


def test_recomputed_codes_match_the_index_and_non_activating_examples_do_not_fire(toy_index):
    index = FeatureIndex.open(toy_index)
    encoder = load_encoder(index)
    assert encoder is not None
    live = [f for f in range(index.n_features) if index.feature(f).count > 0][:6]
    for f in live:  # the row arithmetic of windows: recomputed codes equal the activations the index stored
        own = index.feature(f).top[:3]
        for example, codes in zip(own, pool_codes(encoder, own, [f]), strict=True):
            stored = torch.tensor([a for a in example.acts if a is not None])
            torch.testing.assert_close(codes[:, 0], stored, atol=1e-4, rtol=1e-4)
    pool = candidate_pool(index, 64, seed=0)
    assert len({(e.context, e.position) for e in pool}) == len(pool)  # each window once
    codes = pool_codes(encoder, pool, live, context=3)
    found = 0
    for column, f in enumerate(live):
        feature = index.feature(f)
        negatives = non_activating(feature, pool, codes, column, 10, seed=0, context=3)
        assert all(
            max(s.acts) <= feature.threshold and not s.activating and len(s.texts) <= 7 for s in negatives
        )
        found += bool(negatives)
    assert found >= len(live) // 2


def test_test_examples_come_from_the_bands_or_say_they_do_not(toy_index):
    import dataclasses

    from interp.autointerp.examples import activating_examples, example_id

    index = FeatureIndex.open(toy_index)
    feature = next(index.feature(f) for f in range(index.n_features) if index.feature(f).count > 20)
    explain, test, note = activating_examples(feature, 3, 4)
    banded = {example_id(e) for _, _, ex in feature.bands for e in ex}
    assert note == "quantile bands" and len(test) == 4 and {example_id(e) for e in test} <= banded
    assert not {example_id(e) for e in test} & {example_id(e) for e in explain}
    shown = {example_id(e) for e in explain}
    unseen = [[e for e in ex if example_id(e) not in shown] for _, _, ex in feature.bands]
    lows = [ex[0] for ex in unseen if ex]  # round-robin: the first unseen example of each band, lowest first
    assert [example_id(e) for e in test[: len(lows)]] == [example_id(e) for e in lows][: len(test)]
    bare = dataclasses.replace(feature, bands=[(0.0, 1.0, [])])
    explain, test, note = activating_examples(bare, 3, 4)
    assert note == "top examples not shown (no quantile bands)" and test == feature.top[3:7]


# ------------------------------------------------------------------------------------------ a real server
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if serve_command() is None:
        pytest.skip("transformers[serving] is not installed (pip install 'transformers[serving]')")
    folder = planted_chat_model(tmp_path_factory.mktemp("planted") / "chat", REPLIES)
    running = Server(folder, folder.parent / "serve.log")
    yield running
    running.stop()


@pytest.mark.slow
def test_explain_writes_scores_and_baseline_then_resumes(server, index_copy, monkeypatch):
    import pandas as pd

    monkeypatch.setenv("PLANTED_LLM_KEY", "sk-planted-secret")  # the server ignores keys; no file may hold it
    llm = LLMConfig(url=server.url, model=server.model, key_env="PLANTED_LLM_KEY", concurrency=4, retries=1,
                    backoff=0.1)  # fmt: skip
    live = [f for f in range(index_copy.n_features) if index_copy.feature(f).count > 0]
    dead = [f for f in range(index_copy.n_features) if index_copy.feature(f).count == 0]
    features = live[:4] + dead[:1]
    client = explanation_client(index_copy, llm)
    explain_index(index_copy, features, client, SMALL, progress=False)
    table = pd.read_parquet(index_copy.path / "explanations.parquet")
    summary = json.loads((index_copy.path / "explanations.json").read_text())
    assert table["feature"].tolist() == live[:4] and summary["skipped_no_activations"] == dead[:1]
    assert (table["explanation"] == EXPLANATION).all() and (table["explanation_status"] == "tagged").all()
    assert summary["non_activating_examples"] == "verified"
    sent = malformed = 0
    for _, row in table.iterrows():
        m = len(
            row["activating_ids"]
        )  # the planted truth: 2m examples, 4 to a prompt, a last one of 2 when m is odd
        assert 1 <= m <= 4 and len(row["non_activating_ids"]) == m and len(row["explain_ids"]) == 4
        assert len(set(row["non_activating_ids"])) == m
        assert row["shuffled_from"] in live[:4] and row["shuffled_from"] != row["feature"]
        prompts, short = math.ceil(2 * m / 4), (2 * m) % 4 != 0
        # the planted scorer says "fires" to all: recall 1, accuracy = precision = the share of positives
        assert row["detection_recall"] == 1 and row["detection_accuracy"] == row["detection_precision"]
        assert row["detection_n"] == 4 * (2 * m // 4) and (short or row["detection_accuracy"] == 0.5)
        assert row["detection_accuracy_shuffled"] == row["detection_accuracy"]  # same examples, same replies
        assert math.isnan(row["fuzzing_accuracy"]) and math.isnan(row["fuzzing_f1_shuffled"])
        assert (
            row["n_malformed"] == 2 * prompts + 2 * short
        )  # fuzzing: none parsed; detection: a short prompt
        sent += 1 + 2 * 2 * prompts
        malformed += row["n_malformed"]
    assert row["llm_model"] == server.model and row["prompt_version"]
    assert summary["requests_sent"] == sent and summary["n_malformed_replies"] == malformed

    again = explanation_client(index_copy, llm)  # a rerun asks nothing: every reply is in the cache
    explain_index(index_copy, features, again, SMALL, progress=False)
    assert again.n_sent == 0 and again.n_cached == sent
    pd.testing.assert_frame_equal(pd.read_parquet(index_copy.path / "explanations.parquet"), table)
    assert not [p for p in index_copy.path.iterdir() if b"sk-planted-secret" in p.read_bytes()]


@pytest.mark.slow
def test_simulation_scores_the_planted_predictions_against_the_true_activations(server, index_copy):
    """The planted simulator predicts the centre token of every 7-token window: the score must be the
    correlation of that prediction with the examples' true activations, recomputed here from the same examples;
    windows of other lengths are malformed replies."""
    import pandas as pd

    from interp.autointerp.run import gather

    config = dataclasses.replace(SMALL, scorers=("simulation",))
    llm = LLMConfig(url=server.url, model=server.model, concurrency=4, retries=1, backoff=0.1)
    features = [f for f in range(index_copy.n_features) if index_copy.feature(f).count > 0][:3]
    explain_index(index_copy, features, explanation_client(index_copy, llm), config, progress=False)
    table = pd.read_parquet(index_copy.path / "explanations.parquet").set_index("feature")
    data, _, _ = gather(index_copy, features, config)
    for f in features:
        shown = [s for s in data[f][1].activating + data[f][1].non_activating]
        full = [s for s in shown if len(s.texts) == len(SIMULATED)]
        expected = correlation(torch.tensor(SIMULATED * len(full), dtype=torch.float64),
                               torch.tensor([a for s in full for a in s.acts], dtype=torch.float64))  # fmt: skip
        row = table.loc[f]
        assert row["simulation_n"] == len(SIMULATED) * len(full)
        assert row["simulation_correlation"] == pytest.approx(expected, nan_ok=True)
        assert row["simulation_correlation_shuffled"] == pytest.approx(expected, nan_ok=True)  # same replies
        assert row["n_malformed"] == 2 * (len(shown) - len(full))  # own and shuffled explanation
        assert math.isnan(row["detection_accuracy"])  # not asked for
    assert any(not math.isnan(table.loc[f, "simulation_correlation"]) for f in features)


@pytest.mark.slow
def test_explain_command_against_the_server(server, index_copy):
    from typer.testing import CliRunner

    from interp.cli import app

    result = CliRunner().invoke(app, ["explain", str(index_copy.path.parent / "index"), "--features", "0-3",
                                      "--llm-url", server.url, "--llm-model", server.model, "--n-test", "4",
                                      "--per-prompt", "4", "--n-explain", "4", "--context", "2",
                                      "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "detection_accuracy" in result.output and "shuffled baseline" in result.output
    assert "malformed replies" in result.output
    explained = index_copy.explanations()
    fired = [f for f in range(4) if index_copy.feature(f).count > 0]
    assert explained["feature"].tolist() == fired and (explained["explanation"] == EXPLANATION).all()
    summary = json.loads((index_copy.path / "explanations.json").read_text())
    assert summary["config"]["context"] == 2 and summary["llm_url"] == server.url


@pytest.mark.slow
def test_wrong_model_name_is_explained(server):
    client = LLMClient(LLMConfig(url=server.url, model="no-such-model", retries=0))
    with pytest.raises(LLMError, match=f"does not serve model 'no-such-model'; it serves: {server.model}"):
        client.check()


def test_unreachable_endpoint_is_a_clear_cli_error(index_copy):
    from llm_server import free_port
    from typer.testing import CliRunner

    from interp.cli import app

    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    result = CliRunner().invoke(app, ["explain", str(index_copy.path), "--features", "0-1", "--llm-url", url,
                                      "--llm-model", "m", "--retries", "1", "--timeout", "2"])  # fmt: skip
    assert result.exit_code == 2 and "unreachable" in result.output and "2 tries" in result.output
    assert "Traceback" not in result.output and not (index_copy.path / "explanations.parquet").exists()


class Refuses(http.server.BaseHTTPRequestHandler):
    """An endpoint that refuses every key (HTTP 401, as hosted APIs answer)."""

    def do_GET(self):  # noqa: N802
        body = json.dumps(
            {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}
        )
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    do_POST = do_GET  # noqa: N815

    def log_message(self, *args):
        pass


def test_refused_key_and_missing_key_variable(monkeypatch):
    httpd = http.server.HTTPServer(("127.0.0.1", 0), Refuses)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("TEST_LLM_KEY", "sk-wrong")
        client = LLMClient(LLMConfig(url=f"http://127.0.0.1:{httpd.server_port}/v1", model="m",
                                     key_env="TEST_LLM_KEY", retries=0))  # fmt: skip
        with pytest.raises(LLMError, match="refused the key .* set TEST_LLM_KEY to a valid key"):
            client.check()
        with pytest.raises(LLMError, match="refused the key"):
            client.chat([{"role": "user", "content": "hi"}])
    finally:
        httpd.shutdown()
    monkeypatch.delenv("TEST_LLM_KEY")
    with pytest.raises(LLMError, match="TEST_LLM_KEY .* is not set"):
        LLMClient(LLMConfig(url="http://127.0.0.1:1/v1", model="m", key_env="TEST_LLM_KEY"))


# ------------------------------------------------------------------------------------------ index API, browser
def planted_explanations(index_path: Path) -> None:
    import pandas as pd

    row = {"feature": 5, "explanation": "planted: cats on mats", "explanation_status": "tagged",
           "detection_accuracy": 0.8, "detection_f1": 0.75, "detection_accuracy_shuffled": 0.5,
           "detection_f1_shuffled": 0.4, "fuzzing_accuracy": math.nan, "fuzzing_f1": math.nan,
           "fuzzing_accuracy_shuffled": math.nan, "fuzzing_f1_shuffled": math.nan, "n_malformed": 3,
           "llm_model": "planted-llm", "prompt_version": "v-test"}  # fmt: skip
    pd.DataFrame([row]).to_parquet(index_path / "explanations.parquet", index=False)


def test_scores_line_shows_simulation_only_when_it_ran():
    from interp.browser.views import scores_line

    base = {"detection_accuracy": 0.8, "detection_accuracy_shuffled": 0.5, "n_malformed": 0}
    ran = scores_line(base | {"simulation_correlation": 0.42, "simulation_correlation_shuffled": math.nan})
    assert (
        "simulation correlation 0.42 (shuffled –)" in ran and "detection accuracy 0.80 (shuffled 0.50)" in ran
    )
    skipped = scores_line(
        base | {"simulation_correlation": math.nan, "simulation_correlation_shuffled": math.nan}
    )
    assert "simulation" not in skipped and "detection accuracy 0.80" in skipped


def test_index_api_and_browser_show_explanations(monkeypatch, tmp_path_factory, tmp_path):
    from streamlit.testing.v1 import AppTest
    from test_browser import APP, texts
    from test_features import shared_toy_cache

    cache = tmp_path / "cache"
    shutil.copytree(shared_toy_cache(tmp_path_factory), cache)
    folder = cache / "decomposers" / "toy" / "1.mlp_hidden" / "snmf-k16"
    assert (
        FeatureIndex.open(folder).explanation(5) is None and FeatureIndex.open(folder).explanations() is None
    )
    planted_explanations(folder / "index")
    index = FeatureIndex.open(folder)
    assert index.explanation(5)["detection_accuracy"] == 0.8 and index.explanation(4) is None
    assert (
        index.table.at[5, "explanation"] == "planted: cats on mats" and index.table.at[4, "explanation"] == ""
    )

    monkeypatch.setenv("INTERP_CACHE", str(cache))
    monkeypatch.delenv("INTERP_INDEX", raising=False)
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["page"], at.query_params["feature"] = "Feature", "5"
    at.run()
    box = at.sidebar.selectbox(key="run_decomposer")
    box.set_value(next(o for o in box.options if o.startswith("snmf-k16"))).run()
    assert not at.exception, at.exception
    page = texts(at)
    assert "planted: cats on mats" in page and "planted-llm" in page
    assert "detection accuracy 0.80 (shuffled 0.50)" in page and "fuzzing accuracy – (shuffled –)" in page
    assert "simulation" not in page  # not run for this feature: not shown
    assert "3 malformed replies" in page
    at.button(key="next").click().run()
    assert "no explanation for this feature" in texts(at)
    at.sidebar.radio(key="page").set_value("Features").run()
    at.text_input(key="search").input("cats on mats").run()
    shown = at.dataframe[0].value
    assert shown["feature"].tolist() == [5] and "1 of 16 features" in texts(at)


@pytest.mark.slow
def test_server_going_down_mid_run_keeps_what_was_scored(server, index_copy):
    """Last in this module: it stops the server. After the explanations and the first chunk, the real server
    goes away; the run stops with a clear error and the parquet keeps the explanations and the first chunk."""
    import pandas as pd

    class StopsTheServer(LLMClient):
        calls = 0

        def map(self, conversations, desc="LLM", progress=True, **params):
            self.calls += 1
            if self.calls == 3:  # 1: explanations, 2: the first chunk's scores, 3: the server is gone
                server.stop()
            return super().map(conversations, desc, progress, **params)

    llm = LLMConfig(url=server.url, model=server.model, retries=1, backoff=0.1, timeout=5)
    live = [f for f in range(index_copy.n_features) if index_copy.feature(f).count > 0][:4]
    client = StopsTheServer(llm, index_copy.path / "explanations.cache.jsonl")
    with pytest.raises(LLMError, match="unreachable"):
        explain_index(index_copy, live, client, SMALL, progress=False)  # chunks of 2 features
    table = pd.read_parquet(index_copy.path / "explanations.parquet")
    assert table["feature"].tolist() == live and (table["explanation"] == EXPLANATION).all()
    scored = table["detection_accuracy"].notna().tolist()
    assert scored == [
        True,
        True,
        False,
        False,
    ]  # the first chunk's scores were written before the server went
