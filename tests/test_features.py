"""Feature index: exact against brute force on a tiny model's store, logit lens, SNMF data, bad input, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from interp.corpus import Document, pack
from interp.features import FeatureIndex, FeatureIndexError, IndexConfig, build_index, find_indexes
from interp.store import ActivationStore, StoreManifest
from interp.store.batches import context_batches

SITE = "1.mlp_hidden"
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
_built: dict[str, Path] = {}


def toy_docs(n: int = 60) -> list[Document]:
    return [Document(" ".join(WORDS[(i * 3 + j) % len(WORDS)] for j in range(10 + i % 7))) for i in range(n)]


def build_toy_cache(root: Path) -> Path:
    """A cache with one run of tiny-llama (1,500 tokens at 1.mlp_hidden) and two indexed decomposers of it:
    SNMF with a hierarchy (`snmf-k16`) and a TopK SAE (`topk-k32`). Built once per session and root."""
    if str(root) in _built:
        return _built[str(root)]
    from interp.capture import capture
    from interp.decompose.sae import SAE, SAEConfig
    from interp.decompose.snmf import SNMF, SNMFConfig
    from interp.models import load_model

    model = load_model("tiny-llama", device="cpu")
    contexts = pack(toy_docs(), model.tokenizer, context_len=32, n_tokens=1500)
    run = root / "activations" / "tiny-llama" / "toy"
    stores, _ = capture(model, contexts, SITE, run, batch_size=8, shard_tokens=400, progress=False)
    store = stores[SITE]
    snmf = SNMF(
        SNMFConfig(
            n_features=16, hierarchy=(16, 6, 3), max_iter=20, encode_iters=10, sparsity=0.1, device="cpu"
        )
    )
    sae = SAE(SAEConfig(architecture="topk", n_features=32, k=4, n_steps=40, batch_size=256, device="cpu"))
    for name, decomposer in (("snmf-k16", snmf), ("topk-k32", sae)):
        decomposer.fit(store, progress=False)
        folder = root / "decomposers" / "toy" / SITE / name
        decomposer.save(folder)
        source = {"store": str(store.path), "model": "tiny-llama", "site": SITE}
        (folder / "source.json").write_text(json.dumps(source))
        build_index(folder, config=IndexConfig(top_k=8, window=6), model=model, progress=False)
    _built[str(root)] = root
    return root


def shared_toy_cache(tmp_path_factory) -> Path:
    """The toy cache of this test session (one for all test modules; tests never modify it)."""
    return build_toy_cache(tmp_path_factory.getbasetemp() / "toy_cache")


@pytest.fixture(scope="session")
def toy_cache(tmp_path_factory) -> Path:
    return shared_toy_cache(tmp_path_factory)


@pytest.fixture(scope="session")
def toy_model():
    from interp.models import load_model

    return load_model("tiny-llama", device="cpu")


class PlantedCodes:
    """A test decomposer: codes = relu(x @ W^T) with W's rows unit directions; feature 0 never fires."""

    method = "planted"

    def __init__(self, d_in: int, k: int, seed: int = 0):
        w = torch.randn(k, d_in, generator=torch.Generator().manual_seed(seed))
        self.w = torch.nn.functional.normalize(w, dim=1)
        self.w[3] = self.w[2]  # a duplicate: its nearest feature is feature 2, cosine 1
        self.d_in, self.n_features = d_in, k

    @property
    def directions(self) -> torch.Tensor:
        return self.w

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        codes = torch.relu(x @ self.w.T)
        codes[:, 0] = 0
        return codes


def store_of(root: Path) -> ActivationStore:
    return ActivationStore.open(root / "activations" / "tiny-llama" / "toy" / SITE)


# ------------------------------------------------------------------------------------------------ exactness
def test_index_matches_brute_force(toy_cache, toy_model, tmp_path):
    """Top examples, windows, density, mean, histogram and bands equal what the full code matrix gives."""
    store = store_of(toy_cache)
    dec = PlantedCodes(store.d, 12)
    config = IndexConfig(top_k=6, window=3, batch_tokens=70, band_samples=3, n_bins=10)  # many small batches
    index = build_index(dec, store, tmp_path / "index", config, model=toy_model, progress=False)
    x, meta = store.load_all(), store.tokens()
    codes = dec.encode(x)
    top = codes.T.topk(6, dim=1)
    for f in range(1, 12):
        feature = index.feature(f)
        assert [e.value for e in feature.top] == pytest.approx(top.values[f].tolist(), rel=1e-5)
        rows = [
            e.row for e in feature.top
        ]  # ties (repeated tokens) make the rows ambiguous: check their codes
        assert len(set(rows)) == len(rows)
        assert codes[rows, f].tolist() == pytest.approx([e.value for e in feature.top])
        for (
            e
        ) in feature.top:  # each window holds the codes and tokens of the example's neighbours in its context
            for offset, (act, token) in enumerate(zip(e.acts, e.token_ids, strict=True), start=-3):
                row = e.row + offset
                same = 0 <= row < len(codes) and meta["context_ids"][row] == meta["context_ids"][e.row]
                assert (act is not None) == bool(same)
                if same:
                    assert act == pytest.approx(float(codes[row, f]), rel=1e-5, abs=1e-7)
                    assert token == int(meta["token_ids"][row])
            assert e.position == int(meta["positions"][e.row]) and e.acts[e.peak] == pytest.approx(e.value)
        fires = codes[:, f] > 0
        assert feature.density == pytest.approx(float(fires.float().mean()))
        assert feature.count == int(fires.sum()) == sum(feature.hist_counts)
        assert feature.mean == pytest.approx(float(codes[fires, f].mean()), rel=1e-4)
        assert feature.hist_edges[0] == 0 and feature.hist_edges[-1] == pytest.approx(feature.max)
        for low, high, examples in feature.bands:
            assert examples, "every band of a feature that fires often has samples"
            assert all(low - 1e-6 <= e.value <= high + 1e-6 for e in examples)
    dead = index.feature(0)
    assert dead.count == 0 and dead.top == [] and all(not ex for _, _, ex in dead.bands)
    assert index.feature(3).similar[0] == (2, pytest.approx(1.0))  # the planted duplicate


def test_top_examples_match_brute_force(toy_cache):
    """The demo's top examples: the highest codes per feature in order, with their own store rows and contexts."""
    from interp.features.describe import top_examples

    store = store_of(toy_cache)
    dec = PlantedCodes(store.d, 12)
    examples = top_examples(dec, store, top=5, batch_size=40)  # several batches
    codes, meta = dec.encode(store.load_all()), store.tokens()
    expected = codes.T.topk(5, dim=1).values
    for f in range(1, 12):
        assert examples.values[f].tolist() == pytest.approx(expected[f].tolist(), rel=1e-5)
        rows = examples.rows[f].tolist()
        assert codes[rows, f].tolist() == pytest.approx(examples.values[f].tolist(), rel=1e-5)
        assert examples.context_ids[f].tolist() == [int(meta["context_ids"][r]) for r in rows]
        assert examples.positions[f].tolist() == [int(meta["positions"][r]) for r in rows]


def test_context_batches_hold_whole_contexts(toy_cache):
    store = store_of(toy_cache)
    seen, rows = set(), 0
    for batch in context_batches(store, batch_tokens=50):
        contexts = set(batch.context_ids.tolist())
        assert not contexts & seen and batch.start == rows
        seen |= contexts
        rows += batch.acts.shape[0]
    assert rows == store.n_tokens
    first = list(context_batches(store, batch_tokens=50, max_tokens=100))
    assert 100 <= sum(b.acts.shape[0] for b in first) < 100 + 2 * 31


# ------------------------------------------------------------------------------------------------ logit lens
def test_logit_lens_matches_the_model_by_hand(toy_model):
    """mlp_hidden: down projection, final-norm weight, unembedding; residual sites skip the projection."""
    from interp.features.logit_lens import logit_lens, norm_gain

    hf = toy_model.hf
    v = torch.randn(3, toy_model.info.d_mlp, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(norm_gain(hf.model.norm, 64), hf.model.norm.weight, atol=1e-4)
    lens = logit_lens(toy_model, "1.mlp_hidden", v, top=5)
    by_hand = (v @ hf.model.layers[1].mlp.down_proj.weight.T) * hf.model.norm.weight @ hf.lm_head.weight.T
    assert torch.equal(lens.promoted_ids, by_hand.topk(5, dim=1).indices)
    assert torch.equal(lens.suppressed_ids, by_hand.topk(5, dim=1, largest=False).indices)
    r = torch.randn(2, 64)
    resid = logit_lens(toy_model, "1.resid_post", r, top=4)
    assert torch.equal(resid.promoted_ids, ((r * hf.model.norm.weight) @ hf.lm_head.weight.T).topk(4).indices)


def test_gemma_norm_gains_include_the_plus_one():
    from interp.features.logit_lens import norm_gain, residual_directions
    from interp.models import load_model

    gemma = load_model("tiny-gemma3", device="cpu")
    norm = gemma.hf.model.norm
    with torch.no_grad():
        norm.weight.uniform_(-0.5, 0.5)
    assert torch.allclose(norm_gain(norm, 64), 1 + norm.weight, atol=1e-3)
    layer = gemma.hf.model.layers[0]
    v = torch.randn(2, gemma.info.d_mlp)
    expected = (v @ layer.mlp.down_proj.weight.T) * (1 + layer.post_feedforward_layernorm.weight)
    assert torch.allclose(residual_directions(gemma, "0.mlp_hidden", v), expected, atol=1e-4)


# ------------------------------------------------------------------------------------------------ SNMF, files
def test_snmf_index_has_neurons_and_hierarchy(toy_cache):
    from interp.decompose import load_decomposer

    folder = toy_cache / "decomposers" / "toy" / SITE / "snmf-k16"
    index = FeatureIndex.open(folder)  # a decomposer folder opens its index/
    snmf = load_decomposer(folder)
    assert index.manifest.method == "snmf" and index.manifest.fire_threshold == 0.01
    feature = index.feature(5)
    neurons, weights = snmf.neurons(5)
    assert feature.n_neurons_nonzero == len(neurons)
    assert [i for i, _ in feature.neurons] == neurons[: len(feature.neurons)].tolist()
    assert index.hierarchy["levels"] == [16, 6, 3]
    parent = feature.hierarchy["parents"][0]["id"]
    assert parent.startswith("L2:") and "L1:5" in [c["id"] for c in index.nodes[parent]["children"]]
    assert index.table["top_tokens"].str.len().gt(0).any()
    assert {"feature", "density", "max_activation", "top_text", "promoted"} <= set(index.table.columns)


def test_rebuild_replaces_the_index_atomically(toy_cache, toy_model, tmp_path):
    store = store_of(toy_cache)
    out = tmp_path / "idx"
    build_index(PlantedCodes(store.d, 6), store, out, IndexConfig(top_k=3), model=toy_model, progress=False)
    build_index(PlantedCodes(store.d, 8), store, out, IndexConfig(top_k=3), model=toy_model, progress=False)
    assert FeatureIndex.open(out).n_features == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no temporary folders left
    assert not list(out.glob("*.pkl")) and not list(out.glob("*.pt"))


class Interrupted(PlantedCodes):
    """PlantedCodes that counts its encode calls and raises KeyboardInterrupt at call `die_at` (None: never)."""

    def __init__(self, d_in: int, k: int, die_at: int | None = None):
        super().__init__(d_in, k)
        self.calls, self.die_at = 0, die_at

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.die_at:
            raise KeyboardInterrupt
        return super().encode(x)


@pytest.mark.parametrize("die_at", [9, 40])  # during pass 1, during pass 2 (about 24 batches per pass)
def test_interrupted_index_resumes_to_the_same_index(toy_cache, toy_model, tmp_path, die_at):
    from safetensors.torch import load_file

    store = store_of(toy_cache)
    config = IndexConfig(top_k=6, window=3, batch_tokens=70, band_samples=3, n_bins=10, checkpoint_every=4)
    whole = Interrupted(store.d, 12)
    build_index(whole, store, tmp_path / "whole", config, model=toy_model, progress=False)
    with pytest.raises(KeyboardInterrupt):
        build_index(Interrupted(store.d, 12, die_at), store, tmp_path / "idx", config, model=toy_model,
                    progress=False)  # fmt: skip
    assert (tmp_path / ".idx.partial" / "state.safetensors").exists() and not (tmp_path / "idx").exists()
    resumed = Interrupted(store.d, 12)
    build_index(resumed, store, tmp_path / "idx", config, model=toy_model, progress=False)
    assert resumed.calls <= whole.calls - (die_at - 4)  # it went on from its checkpoint, not from the start
    expected, got = (load_file(str(tmp_path / name / "index.safetensors")) for name in ("whole", "idx"))
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, equal_nan=True, msg=name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx", "whole"]  # the checkpoint is gone


def test_a_checkpoint_of_another_build_is_refused_naming_what_differs(toy_cache, toy_model, tmp_path):
    import shutil

    store = store_of(toy_cache)
    config = IndexConfig(top_k=6, window=3, batch_tokens=70, checkpoint_every=2)
    with pytest.raises(KeyboardInterrupt):
        build_index(
            Interrupted(store.d, 12, 9), store, tmp_path / "idx", config, model=toy_model, progress=False
        )
    other = Interrupted(store.d, 10)  # other features
    with pytest.raises(FeatureIndexError, match=r"data\.directions: .*delete"):
        build_index(other, store, tmp_path / "idx", config, model=toy_model, progress=False)
    with pytest.raises(FeatureIndexError, match=r"settings\.top_k: 6 -> 7"):
        build_index(Interrupted(store.d, 12), store, tmp_path / "idx", IndexConfig(**{**config.__dict__, "top_k": 7}),
                    model=toy_model, progress=False)  # fmt: skip
    shutil.rmtree(tmp_path / ".idx.partial")  # as the message says: then the build starts afresh
    index = build_index(other, store, tmp_path / "idx", config, model=toy_model, progress=False)
    assert index.n_features == 10 and other.calls == 2 * len(list(context_batches(store, 70)))


# ------------------------------------------------------------------------------------------------ bad input
def test_bad_input_is_explained(toy_cache, toy_model, tmp_path):
    store = store_of(toy_cache)
    manifest = StoreManifest(model="tiny-llama", site=SITE, d=store.d, dtype="float32", corpus_fingerprint="x",
                             context_len=16, drop_bos=True)  # fmt: skip
    empty = ActivationStore.create(tmp_path / "empty", manifest)
    with pytest.raises(FeatureIndexError, match="empty"):
        build_index(PlantedCodes(store.d, 4), empty, tmp_path / "i", model=toy_model)
    with pytest.raises(FeatureIndexError, match="d_in=7"):
        build_index(PlantedCodes(7, 4), store, tmp_path / "i", model=toy_model)
    with pytest.raises(FeatureIndexError, match="interp index"):
        FeatureIndex.open(tmp_path / "nothing")
    with pytest.raises(FeatureIndexError, match="band_quantiles"):
        IndexConfig(band_quantiles=(0.5, 0.2))
    index = build_index(PlantedCodes(store.d, 4), store, tmp_path / "ok" / "index", IndexConfig(top_k=2), model=toy_model,
                        progress=False)  # fmt: skip
    with pytest.raises(FeatureIndexError, match=r"out of range: this index has features 0..3"):
        index.feature(4)
    data = json.loads((index.path / "manifest.json").read_text())
    data["format_version"] = 0
    (index.path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(FeatureIndexError, match="format version 0.*rebuild"):
        FeatureIndex.open(index.path)
    rows = find_indexes(tmp_path)
    assert [r["error"] != "" for r in rows] == [True] and "rebuild" in rows[0]["error"]


def test_a_store_of_another_site_or_model_is_refused(toy_cache, toy_model, tmp_path):
    """Same width, other site (or model) than the decomposer's source.json: refused like another width."""
    import shutil

    folder = toy_cache / "decomposers" / "toy" / SITE / "topk-k32"
    for field, value in (("site", "0.mlp_hidden"), ("model", "tiny-gemma2")):
        other = tmp_path / field
        shutil.copytree(store_of(toy_cache).path, other)
        manifest = json.loads((other / "manifest.json").read_text())
        manifest[field] = value
        (other / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(
            FeatureIndexError, match=f"fitted on {field} .* holds {field} {value}; index it over"
        ):
            build_index(folder, other, tmp_path / f"i-{field}", model=toy_model, progress=False)
        assert not (tmp_path / f"i-{field}").exists()


# ------------------------------------------------------------------------------------------------ CLI, live
def test_index_command(toy_cache, tmp_path):
    import typer
    from typer.testing import CliRunner

    from interp.cli.browse import browse_cmd
    from interp.cli.index import index_cmd

    app = typer.Typer()
    app.command("index")(index_cmd)
    app.command("browse")(browse_cmd)
    folder = toy_cache / "decomposers" / "toy" / SITE / "topk-k32"
    out = tmp_path / "cli_index"
    result = CliRunner().invoke(app, ["index", str(folder), "--out", str(out), "--top-k", "4", "--set",
                                      "band_quantiles=0,0.5,0.9", "--set", "n_bins=8"])  # fmt: skip
    assert result.exit_code == 0, result.output
    index = FeatureIndex.open(out)
    assert index.manifest.config["top_k"] == 4 and len(index.feature(1).bands) == 3
    assert "indexed 32 features" in result.output
    bad = CliRunner().invoke(app, ["index", str(tmp_path / "missing")])
    assert bad.exit_code == 2 and "error" in bad.output
    assert CliRunner().invoke(app, ["browse", "--help"]).exit_code == 0


def test_live_text_codes_and_steering(toy_cache, toy_model):
    from interp.browser.live import best_matches, steer, text_codes
    from interp.decompose import load_decomposer

    folder = toy_cache / "decomposers" / "toy" / SITE / "topk-k32"
    sae = load_decomposer(folder)
    result = text_codes(toy_model, sae, SITE, "the cat sat on a mat")
    assert len(result.texts) == len("the cat sat on a mat") and result.codes.shape == (len(result.texts), 32)
    assert (result.codes >= 0).all()
    plain, steered = steer(toy_model, SITE, sae.directions[3], 50.0, "the cat", max_new_tokens=6)
    again, _ = steer(toy_model, SITE, sae.directions[3], 0.0, "the cat", max_new_tokens=6)
    assert plain == again and steered != plain
    ids, cos = best_matches(sae.directions, sae.directions, 2)
    assert torch.equal(ids[:, 0], torch.arange(32)) and torch.allclose(cos[:, 0], torch.ones(32), atol=1e-5)
    with pytest.raises(ValueError, match="empty"):
        text_codes(toy_model, sae, SITE, "  ")
    assert not math.isnan(float(result.codes.sum()))


@pytest.mark.parametrize("method", ["relu", "jumprelu", "batchtopk", "mpsae"])
def test_every_method_indexes_through_its_folder(method, toy_cache, toy_model, tmp_path):
    """Each decomposer saved by its class loads and indexes through the interface (load_decomposer by method)."""
    from interp.decompose.mp_sae import MPSAE, MPSAEConfig
    from interp.decompose.sae import SAE, SAEConfig

    store = store_of(toy_cache)
    if method == "mpsae":
        dec = MPSAE(MPSAEConfig(n_features=16, k=3, n_steps=5, batch_size=256, device="cpu"))
    else:
        dec = SAE(SAEConfig(architecture=method, n_features=16, k=3, n_steps=5, batch_size=256, device="cpu"))
    folder = tmp_path / method
    dec.fit(store, progress=False).save(folder)
    (folder / "source.json").write_text(
        json.dumps({"store": str(store.path), "model": "tiny-llama", "site": SITE})
    )
    index = build_index(folder, config=IndexConfig(top_k=3, window=2), model=toy_model, progress=False)
    assert index.manifest.method == method and index.n_features == 16
    codes = dec.encode(store.load_all())
    best = max(range(16), key=lambda f: float(codes[:, f].max()))
    assert index.feature(best).max == pytest.approx(float(codes[:, best].max()), rel=1e-4)
