"""Steering evaluation: placement (--steer-at), per-sign KL, held-out strength selection, matched random
baseline, bootstrap intervals, the AxBench LLM judge's prompts and parsing, backends, and the run end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
from fixed_decomposer import two_concept_run

from interp.models.edits import AddDirection
from interp.models.hooks import steered_logits
from interp.models.sites import parse_site
from interp.steer.calibration import Prompts, Sampling, alpha_for_kl, kl_function, steered_samples
from interp.steer.concepts import make_concept_set
from interp.steer.detection import TextActivations, auroc, detect, random_directions
from interp.steer.judges import ConceptClassifier, spearman
from interp.steer.llm_judge import axbench_score, judge_prompt, parse_rating, rate_texts
from interp.steer.placement import PlacementError, place, steer_kinds
from interp.steer.report import UNSTEERED, headline, select_strengths
from interp.steer.run import SteerEvalError, run_steer_eval
from interp.steer.scoring import Judges, Texts
from interp.steer.stats import Draws, Interval, bootstrap, paired_difference

BACKENDS = ("torch", "transformer_lens", "nnsight")


def test_steer_kinds_follow_the_paper_and_the_overrides():
    methods = {"snmf-k100": "snmf", "topk": "topk", "diff_in_means": "diff_in_means", "random": "random"}
    llama = steer_kinds("paper", methods, "llama", "mlp_hidden")
    assert llama == {
        "snmf-k100": "mlp_hidden",
        "topk": "mlp_out",
        "diff_in_means": "mlp_out",
        "random": "mlp_out",
    }
    assert set(steer_kinds("paper", methods, "gemma3", "mlp_hidden").values()) == {"mlp_out"}  # post-MLP norm
    assert set(steer_kinds("site", methods, "gemma3", "mlp_hidden").values()) == {"mlp_hidden"}
    assert set(steer_kinds("resid", methods, "llama", "mlp_hidden").values()) == {"resid_post"}
    mixed = steer_kinds("site,topk=mlp_out,random=resid", methods, "llama", "mlp_hidden")
    assert mixed == {
        "snmf-k100": "mlp_hidden",
        "topk": "mlp_out",
        "diff_in_means": "mlp_hidden",
        "random": "resid_post",
    }
    assert set(steer_kinds("paper", methods, "llama", "resid_post").values()) == {"resid_post"}
    with pytest.raises(PlacementError, match="unknown --steer-at base 'mlp'"):
        steer_kinds("mlp", methods, "llama", "mlp_hidden")
    with pytest.raises(PlacementError, match="bad --steer-at item 'sae=mlp_out'"):
        steer_kinds("paper,sae=mlp_out", methods, "llama", "mlp_hidden")


def _ids() -> torch.Tensor:
    ids = torch.randint(3, 200, (2, 7), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = 1
    return ids


def test_a_hidden_direction_mapped_to_mlp_out_steers_the_same(tiny):
    """Without a post-MLP norm, alpha * v at mlp_hidden == alpha * |W v| * unit(W v) at mlp_out (and at resid)."""
    v = torch.nn.functional.normalize(
        torch.randn(tiny.info.d_mlp, generator=torch.Generator().manual_seed(1)), dim=0
    )
    hidden = parse_site("1.mlp_hidden")
    site, u = place(tiny, hidden, "mlp_out", v)
    assert site.name == "1.mlp_out" and torch.isclose(u.norm(), torch.tensor(1.0))
    block = tiny.hf.model.layers[1] if tiny.info.family != "gpt2" else tiny.hf.transformer.h[1]
    if tiny.info.family.startswith(
        "gemma"
    ):  # the paper's map: W v, then normalized as the post-MLP norm does
        w_v = block.mlp.down_proj.weight @ v
        expected = block.post_feedforward_layernorm(w_v[None])[0]
        assert torch.allclose(u, expected / expected.norm(), atol=1e-5)
        return
    proj = block.mlp.c_proj if tiny.info.family == "gpt2" else block.mlp.down_proj
    w_v = proj(v[None])[0] - proj(torch.zeros(1, v.shape[0]))[0]
    at_hidden = steered_logits(tiny, _ids(), hidden, AddDirection(v, 3.0))
    for kind in ("mlp_out", "resid_post"):
        site, u = place(tiny, hidden, kind, v)
        at_out = steered_logits(tiny, _ids(), site, AddDirection(u, 3.0 * float(w_v.norm())))
        assert torch.allclose(at_hidden, at_out, atol=1e-4), kind
    with pytest.raises(PlacementError, match="no map back to the MLP's neurons"):
        place(tiny, parse_site("1.resid_post"), "mlp_hidden", torch.randn(tiny.info.d_model))


def test_each_sign_is_calibrated_on_its_own(tiny_llama):
    prompts = Prompts.build(tiny_llama, ("I think that", "The"))
    site = parse_site("1.resid_post")
    direction = torch.nn.functional.normalize(
        torch.randn(64, generator=torch.Generator().manual_seed(3)), dim=0
    )
    alphas = {}
    for sign in (1, -1):
        kl_at = kl_function(tiny_llama, prompts, site, sign * direction)
        calib = alpha_for_kl(kl_at, 0.01, start=1.0, tol=1e-3)
        assert calib.reached and abs(calib.kl - 0.01) <= 1e-5 and calib.reason == ""
        alphas[sign] = calib.alpha
    assert (
        abs(alphas[1] - alphas[-1]) > 1e-3 * alphas[1]
    )  # KL is not symmetric in the sign: reusing one is wrong
    plateau = alpha_for_kl(lambda a: 0.3 * (1 - math.exp(-a)), 0.5, start=1.0)
    assert not plateau.reached and plateau.reason.startswith("plateau: KL 0.3")


def test_backends_give_the_same_greedy_generations_and_kl(tiny_llama):
    prompts = Prompts.build(
        tiny_llama, ("I think that", "The", "Here")
    )  # three lengths, one left-padded call
    site = parse_site("0.resid_post")
    direction = torch.randn(64, generator=torch.Generator().manual_seed(2))
    texts, kls = {}, {}
    for backend in BACKENDS:
        greedy = Sampling(n_samples=2, max_new_tokens=5, top_k=1, backend=backend)
        texts[backend], _ = steered_samples(tiny_llama, prompts, site, direction, 4.0, greedy)
        kls[backend] = kl_function(tiny_llama, prompts, site, direction, backend)(4.0)
    plain, _ = steered_samples(tiny_llama, prompts, site, None, 0.0, Sampling(2, 5, top_k=1))
    assert texts["torch"] != plain
    for backend in BACKENDS:
        assert texts[backend] == texts["torch"], backend
        assert math.isclose(kls[backend], kls["torch"], rel_tol=1e-3), backend


def test_one_left_padded_batch_samples_as_unpadded_prompts(tiny_llama):
    """Catches padding that leaks into a prompt (wrong mask, positions or pad side) and unseeded sampling: equal
    lengths sample exactly as one unmasked generate call did (the old per-length grouping); mixed lengths decode,
    greedily, as each prompt alone; sampling is reproducible."""
    from interp.models.hooks import generate

    site = parse_site("0.resid_post")
    direction = torch.randn(64, generator=torch.Generator().manual_seed(3))
    same = Prompts.build(tiny_llama, ("I think that", "I know that!"))
    assert len(set(same.lengths.tolist())) == 1
    sampled = Sampling(n_samples=3, max_new_tokens=6, top_k=30, top_p=0.9, seed=5)
    texts, _ = steered_samples(tiny_llama, same, site, direction, 3.0, sampled)
    old = generate(tiny_llama, same.tokens.repeat_interleave(3, 0), site, AddDirection(direction, 3.0),
                   max_new_tokens=6, do_sample=True, seed=5, top_k=30, top_p=0.9)  # fmt: skip
    assert texts == tiny_llama.tokenizer.batch_decode(
        old[:, same.tokens.shape[1] :], skip_special_tokens=True
    )
    assert steered_samples(tiny_llama, same, site, direction, 3.0, sampled)[0] == texts
    mixed = Prompts.build(tiny_llama, ("I think that", "The", "Here is what happened:"))
    greedy = Sampling(n_samples=1, max_new_tokens=5, top_k=1)
    together, ppl = steered_samples(tiny_llama, mixed, site, direction, 3.0, greedy)
    for i, text in enumerate(mixed.texts):
        alone, alone_ppl = steered_samples(
            tiny_llama, Prompts.build(tiny_llama, (text,)), site, direction, 3.0, greedy
        )
        assert together[i] == alone[0], text
        assert torch.allclose(ppl[i], alone_ppl[0], rtol=1e-4), text


def _row(concept, method, target, select, test, reached=True):
    return {"concept": concept, "method": method, "kind": "kl", "sign": 1, "target": target, "reached": reached,
            "select": {"score": select}, "test": {"score": test}}  # fmt: skip


def test_strength_selection_reads_only_the_selection_prompts():
    rows = [_row("a", "m", 0.1, [1.0, 1.0], [0.0, 0.0]), _row("a", "m", 0.5, [0.5, 0.5], [2.0, 2.0]),
            _row("a", "m", 0.9, [2.0, 2.0], [2.0, 2.0], reached=False), _row("b", "m", 0.9, [2.0], [2.0], False)]  # fmt: skip
    chosen = select_strengths(rows)
    assert chosen["a", "m"]["target"] == 0.1  # best on selection, though worse on test; unreached left out
    assert ("b", "m") not in chosen  # no reached cell: no score, rather than the unreached one
    for row in rows:  # any test scores: the same choice
        row["test"] = {"score": [float("nan")]}
    assert select_strengths(rows)["a", "m"]["target"] == 0.1


def test_bootstrap_resamples_prompts_then_samples():
    draws = Draws.make(n_prompts=8, n_samples=4, n_boot=2000, seed=0)
    const = torch.full((2, 8, 4), 1.5)
    assert bootstrap(const, draws) == Interval(1.5, 1.5, 1.5)
    gen = torch.Generator().manual_seed(0)
    per_prompt = torch.randn(1, 8, 1, generator=gen).expand(1, 8, 4)  # all variation between prompts
    interval = bootstrap(per_prompt, draws)
    sd = float(per_prompt[0, :, 0].std(unbiased=False)) / math.sqrt(8)  # prompts are the unit, not 32 texts
    assert 0.8 * 2 * 1.96 * sd < interval.hi - interval.lo < 1.2 * 2 * 1.96 * sd
    noise = torch.randn(3, 8, 4, generator=gen)
    shifted = paired_difference(noise + 0.25, noise, draws)  # paired: the shared noise cancels exactly
    assert math.isclose(shifted.mean, 0.25, abs_tol=1e-5) and shifted.hi - shifted.lo < 1e-4
    missing = torch.cat([noise[:1], torch.full((1, 8, 4), float("nan"))])
    assert math.isclose(bootstrap(missing, draws).mean, float(noise[0].mean()), rel_tol=1e-5)


def test_headline_says_when_nothing_beats_unsteered():
    none = {
        ("snmf", UNSTEERED): Interval(0.01, -0.02, 0.04),
        ("diff_in_means", UNSTEERED): Interval(-0.1, -0.2, 0),
    }
    assert headline(none).startswith("**No method beats unsteered text**")
    some = {**none, ("topk", UNSTEERED): Interval(0.2, 0.1, 0.3)}
    assert "topk" in headline(some) and "No method" not in headline(some)


def test_matched_random_baseline_is_the_best_of_n_chosen_on_train():
    gen = torch.Generator().manual_seed(0)
    concepts = make_concept_set("x", [f"t{i}" for i in range(40)], ["a"] * 20 + ["b"] * 20, held_out=0.3)
    acts = torch.randn(40, 5, 16, generator=gen)
    acts[:20, :, 0] += 0.6  # concept a leans along dimension 0
    text_acts = TextActivations(acts, torch.ones(40, 5, dtype=torch.bool))
    train = torch.tensor(concepts.train)
    positive = torch.tensor([c == "a" for c in concepts.concepts])
    by_n = {}
    for n in (1, 64):
        rows, directions = detect(concepts, text_acts, {}, seed=5, n_random=n)
        (row,) = [r for r in rows if r.concept == "a" and r.method == "random"]
        candidates = random_directions(16, n, 5)
        pooled = (acts @ candidates.T).amax(dim=1)
        assert row.feature == int(
            auroc(pooled[train], positive[train]).argmax()
        )  # chosen on train, as features
        assert torch.equal(directions["a", "random"], candidates[row.feature])
        by_n[n] = row.train_auroc
    assert by_n[64] > by_n[1]


def test_llm_judge_prompts_parsing_and_axbench_score():
    prompt = judge_prompt("concept", "the cat sat", "cats", "I think that")
    assert (
        "[Concept Start]\ncats\n[Concept End]" in prompt
        and "the cat sat" in prompt
        and "I think" not in prompt
    )
    assert "[Prompt Start]\nI think that" in judge_prompt("instruction", "x", "cats", "I think that")
    assert parse_rating("It mentions cats twice. Rating: [[2]]") == 2.0
    assert parse_rating("[[0]] at first, but on reflection Rating: [[1]]") == 1.0
    assert parse_rating(" 1 ") == 1.0 and parse_rating("Rating: 2.") == 2.0
    assert parse_rating("I cannot rate this") is None and parse_rating("Rating: [[7]]") is None
    ratings = {"concept": torch.tensor([2.0, 1.0, 2.0]), "instruction": torch.tensor([2.0, 1.0, 0.0]),
               "fluency": torch.tensor([2.0, 2.0, 2.0])}  # fmt: skip
    assert torch.allclose(axbench_score(ratings), torch.tensor([2.0, 3 / (1 + 1 + 0.5), 0.0]))

    def fake(prompts):  # concept 2, instruction 1, fluency unparseable
        return ["Rating: [[2]]" if "[Concept Start]" in p else "[[1]]" if "[Prompt Start]" in p else "??"
                for p in prompts]  # fmt: skip

    rated = rate_texts(fake, ["a", "b"], "cats", ["I think", "The"])
    assert rated.unparseable == 2 and rated.ratings["instruction"].tolist() == [1.0, 1.0]
    assert rated.score.tolist() == [0.0, 0.0]  # an unparseable rating counts as 0


def test_judge_choice_changes_the_score():
    clf = ConceptClassifier.fit(["cat cat purr", "dog dog bark"], ["cats", "dogs"])
    cell = Texts(["the cat purr", "a dog bark bark"], torch.tensor([10.0, 10.0]), ["The", "The"], 10.0)
    offline = Judges("offline", clf).judge(cell, "cats")
    assert offline["on_topic"] == [1.0, 0.0] and offline["score"] == offline["offline_score"]
    always_two = Judges("llm", clf, complete=lambda prompts: ["Rating: [[2]]"] * len(prompts)).judge(
        cell, "cats"
    )
    assert (
        always_two["score"] == [2.0, 2.0]
        and always_two["on_topic"] == [1.0, 1.0]
        and "offline_score" not in always_two
    )
    both = Judges("both", clf, complete=lambda prompts: ["Rating: [[1]]"] * len(prompts)).judge(cell, "cats")
    assert both["score"] == [1.0, 1.0] and both["offline_score"] == offline["score"]
    assert math.isnan(both["spearman"])  # constant LLM scores: no rank agreement to speak of
    assert math.isclose(
        spearman(torch.tensor([1.0, 2, 3, 3]), torch.tensor([0.1, 0.2, 0.5, 0.5])), 1.0, rel_tol=1e-6
    )
    assert math.isclose(spearman(torch.tensor([1.0, 2, 3]), torch.tensor([3.0, 2, 1])), -1.0, rel_tol=1e-6)


@pytest.fixture
def small_run(tmp_path, monkeypatch):
    return two_concept_run(tmp_path, monkeypatch, methods=("features", "diff_in_means"), kl_targets=(0.002, 100.0),
                           n_samples=2, max_new_tokens=3, prompts=("The cat", "The dog"), judge="both")  # fmt: skip


def test_steer_eval_baselines_signs_selection_and_judges(tmp_path, small_run):
    seen: list[str] = []

    def fake(prompts):  # every rating 1, but every fifth reply unparseable
        seen.extend(prompts)
        return ["Rating: [[1]]" if i % 5 else "no idea" for i, _ in enumerate(prompts)]

    rows = run_steer_eval(small_run, tmp_path / "out", progress=False, complete=fake)
    assert len(rows) == 2 * 2 * 2 * 2  # concepts x methods x signs x targets
    assert {r["sign"] for r in rows} == {1, -1} and all(
        not r["reached"] for r in rows if r["target"] == 100.0
    )
    assert all("plateau" in r["reason"] or "closest" in r["reason"] for r in rows if not r["reached"])
    reached = [r for r in rows if r["target"] == 0.002]
    assert all(r["reached"] and abs(r["kl"] - 0.002) <= 0.0002 for r in reached)  # both signs calibrated
    kl_by_sign = {(r["concept"], r["method"], r["sign"]): r["kl"] for r in reached}
    assert all(kl_by_sign[c, m, 1] != kl_by_sign[c, m, -1] for c, m, _ in kl_by_sign)  # measured per sign
    assert {r["site"] for r in rows} == {"1.mlp_out"}  # the paper's placement for non-SNMF directions
    cells = [json.loads(line) for line in (tmp_path / "out" / "cells.jsonl").read_text().splitlines()]
    assert sorted(r["concept"] for r in cells if r["method"] == UNSTEERED) == ["cats", "dogs"]
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert (
        "| unsteered | - |" in summary
        and "fixed - diff_in_means" in summary
        and "fixed - unsteered" in summary
    )
    assert "LLM ratings that could not be parsed (rated 0)" in summary and "Spearman" in summary
    assert "KL targets not reached within 10% (left out of the selection): 8 of 16" in summary
    assert (
        "No method beats unsteered text" in summary.splitlines()[2]
    )  # the fake judge rates every text alike
    import pandas as pd

    frame = pd.read_csv(tmp_path / "out" / "results.csv")
    assert {"test_llm_score", "test_offline_score", "test_on_topic", "test_spearman", "select_score"} <= set(
        frame
    )
    assert any("[Prompt Start]\nYesterday," in p for p in seen)  # the selection prompts were judged too


def test_steer_eval_refuses_bad_settings_before_writing(tmp_path, small_run, monkeypatch):
    import dataclasses

    monkeypatch.setenv("INTERP_JUDGE_URL", "http://127.0.0.1:9/v1")  # nothing listens on port 9
    with pytest.raises(ConnectionError, match="unreachable"):
        run_steer_eval(small_run, tmp_path / "o1", progress=False)
    assert not (tmp_path / "o1").exists()
    for field, value, message in (("judge", "gpt", "unknown judge 'gpt'"), ("signs", (2,), "signs must be"),
                                  ("backend", "jax", "unknown backend 'jax'"),
                                  ("protocol", "nope", "unknown --protocol 'nope'; valid: concept, feature"),
                                  ("selection", ("input",), "unknown --selection")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            run_steer_eval(dataclasses.replace(small_run, **{field: value}), tmp_path / "o2", progress=False)
    assert not (tmp_path / "o2").exists()
    with pytest.raises(SteerEvalError):
        run_steer_eval(dataclasses.replace(small_run, kl_targets=()), tmp_path / "o3", progress=False)


@pytest.mark.slow
def test_on_gemma_a_dim_direction_mapped_past_the_post_mlp_norm_reaches_kl_half(real_model):
    """At 9.mlp_hidden the post-MLP norm caps KL below 0.5 (measured: a plateau at 0.27); mapped to 9.mlp_out (the
    paper's placement) the same difference-in-means direction reaches KL 0.5 (measured: 0.54 at strength 2640).
    Whether its text is on topic is not asserted: measured on 16 samples it was not (on-topic 0.25, unsteered 0.44)."""
    from interp.steer.calibration import NEUTRAL_PROMPTS
    from interp.steer.concepts import load_concepts
    from interp.steer.detection import diff_in_means, text_activations

    concepts = load_concepts("bbc", per_concept=20, seed=0)
    site = parse_site("9.mlp_hidden")
    acts = text_activations(real_model, concepts.texts, site, 48)
    train = torch.tensor(concepts.train)
    positive = torch.tensor([c == "sport" for c in concepts.concepts])
    dim = diff_in_means(acts.mean_pool()[train], positive[train])
    scale = float(acts.acts[acts.mask].norm(dim=-1).mean())
    prompts = Prompts.build(real_model, NEUTRAL_PROMPTS)
    hidden = alpha_for_kl(kl_function(real_model, prompts, site, dim), 0.5, start=scale / 8, max_doublings=10)
    assert not hidden.reached and hidden.reason.startswith("plateau")
    out_site, direction = place(real_model, site, "mlp_out", dim)
    assert out_site.name == "9.mlp_out"
    assert alpha_for_kl(kl_function(real_model, prompts, out_site, direction), 0.5, start=scale / 8).reached
