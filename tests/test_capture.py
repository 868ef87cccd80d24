"""Capture: backends agree, stores hold the right tokens, captures resume, bad input fails clearly."""

from __future__ import annotations

import pytest
import torch

from interp.capture import CaptureError, capture
from interp.corpus import Document, pack
from interp.models.hooks import BACKENDS, backend_runner
from interp.models.sites import FAMILIES, SITE_KINDS, SiteError, get_module, parse_sites
from interp.store import ActivationStore

ALL_SITES = [f"{layer}.{kind}" for layer in range(2) for kind in SITE_KINDS]


def random_tokens(n: int, length: int, seed: int = 0) -> torch.Tensor:
    tokens = torch.randint(3, 259, (n, length), generator=torch.Generator().manual_seed(seed))
    tokens[:, 0] = 1  # BOS
    return tokens


def test_backends_agree_on_every_site(tiny):
    """nnsight, TransformerLens and plain hooks read the same numbers at every site kind (context > window)."""
    sites = parse_sites(ALL_SITES, tiny.info.n_layers)
    tokens = random_tokens(3, 48)  # longer than the tiny Gemmas' sliding window of 32
    results = {name: backend_runner(name)(tiny, tokens, sites) for name in BACKENDS}
    for site in sites:
        reference = results["torch"][site]
        assert reference.shape == (3, 48, site.width(tiny.info))
        for name, acts in results.items():
            scale = reference.abs().max()
            assert torch.allclose(acts[site], reference, atol=1e-5 * scale), f"{name} differs at {site}"


def test_sites_match_model_internals(tiny_llama):
    """mlp_hidden is the down projection's input: pushing it through down_proj gives mlp_out."""
    sites = parse_sites("1.mlp_hidden,1.mlp_out,0.resid_post,1.resid_pre", 2)
    acts = backend_runner("nnsight")(tiny_llama, random_tokens(2, 12), sites)
    by_name = {s.name: a for s, a in acts.items()}
    down = tiny_llama.hf.model.layers[1].mlp.down_proj
    assert torch.allclose(down(by_name["1.mlp_hidden"]), by_name["1.mlp_out"], atol=1e-5)
    assert torch.equal(by_name["0.resid_post"], by_name["1.resid_pre"])


def test_mlp_in_is_the_mlp_input_after_its_norm(tiny):
    """mlp_in fed through the block's MLP (and Gemma's post-MLP norm) gives mlp_out; it is the pre-MLP norm's
    output, not the raw residual (catches a site read before the norm or at the wrong module)."""
    sites = parse_sites("1.mlp_in,1.mlp_out,1.resid_pre", 2)
    for name in BACKENDS:
        by_name = {s.name: a for s, a in backend_runner(name)(tiny, random_tokens(2, 12), sites).items()}
        spec = FAMILIES[tiny.info.family]
        block = get_module(tiny.hf, f"{spec.blocks}.1")
        out = get_module(block, spec.mlp)(by_name["1.mlp_in"])
        if spec.post_mlp_norm:
            out = get_module(block, spec.post_mlp_norm)(out)
        assert torch.allclose(out, by_name["1.mlp_out"], atol=1e-4), name
        assert not torch.allclose(by_name["1.mlp_in"], by_name["1.resid_pre"], atol=1e-3), name


def docs(n: int = 30) -> list[Document]:
    words = [
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
    return [Document(" ".join(words[(i + j) % len(words)] for j in range(10 + i % 7))) for i in range(n)]


def test_capture_writes_stores_with_tokens(tiny_llama, tmp_path):
    contexts = pack(docs(), tiny_llama.tokenizer, context_len=24, n_tokens=500)
    stores, stats = capture(
        tiny_llama,
        contexts,
        "0.mlp_hidden,1.resid_post",
        tmp_path,
        batch_size=4,
        shard_tokens=150,
        progress=False,
    )
    store = stores["0.mlp_hidden"]
    expected = int((contexts.lengths - 1).sum())  # BOS dropped
    assert store.n_tokens == expected == stats.n_tokens == 500
    assert store.n_shards > 1 and store.d == tiny_llama.info.d_mlp
    meta = store.tokens()
    assert (meta["positions"] >= 1).all()  # BOS position 0 dropped
    assert torch.equal(
        meta["token_ids"].long(), contexts.token_ids[meta["context_ids"], meta["positions"].long()]
    )
    # the stored rows are the activations of a direct forward pass
    direct = backend_runner("torch")(tiny_llama, contexts.token_ids[:2], parse_sites("0.mlp_hidden"))
    first = next(iter(direct.values()))[:, 1:].reshape(-1, store.d)
    assert torch.allclose(store.load_all()[: first.shape[0]], first, atol=1e-6)
    # padding of the last (partial) context is not stored
    assert contexts.lengths[-1] < contexts.context_len
    reopened = ActivationStore.open(tmp_path / "1.resid_post")
    assert reopened.n_tokens == expected


def test_keep_bos_and_dtypes(tiny_llama, tmp_path):
    contexts = pack(docs(), tiny_llama.tokenizer, context_len=16, n_tokens=120)
    for dtype in ("float16", "bfloat16"):
        stores, _ = capture(
            tiny_llama,
            contexts,
            "1.resid_post",
            tmp_path / dtype,
            dtype=dtype,
            drop_bos=False,
            progress=False,
        )
        store = stores["1.resid_post"]
        assert store.n_tokens == int(contexts.lengths.sum())
        assert store.load_shard(0)["acts"].dtype == getattr(torch, dtype)
        assert store.load_all().dtype == torch.float32


def test_interrupted_capture_resumes_without_loss_or_duplicates(tiny_llama, tmp_path, monkeypatch):
    contexts = pack(docs(), tiny_llama.tokenizer, context_len=16, n_tokens=400)
    reference, _ = capture(
        tiny_llama,
        contexts,
        "0.mlp_hidden,1.resid_post",
        tmp_path / "ref",
        batch_size=3,
        shard_tokens=40,
        progress=False,
    )

    import interp.models.backends.nnsight as nnsight_backend

    real_run, calls = nnsight_backend.run, {"n": 0}

    def dying_run(*args):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # killed mid-capture
        return real_run(*args)

    monkeypatch.setattr(nnsight_backend, "run", dying_run)
    with pytest.raises(KeyboardInterrupt):
        capture(
            tiny_llama,
            contexts,
            "0.mlp_hidden,1.resid_post",
            tmp_path / "run",
            batch_size=3,
            shard_tokens=40,
            progress=False,
        )
    partial = ActivationStore.open(tmp_path / "run" / "0.mlp_hidden")
    assert 0 < partial.n_tokens < reference["0.mlp_hidden"].n_tokens
    monkeypatch.setattr(nnsight_backend, "run", real_run)
    resumed, stats = capture(
        tiny_llama,
        contexts,
        "0.mlp_hidden,1.resid_post",
        tmp_path / "run",
        batch_size=3,
        shard_tokens=40,
        progress=False,
    )
    assert stats.n_tokens == reference["0.mlp_hidden"].n_tokens - partial.n_tokens
    for site, store in resumed.items():
        assert torch.equal(store.load_all(), reference[site].load_all())
        assert torch.equal(store.tokens()["context_ids"], reference[site].tokens()["context_ids"])


def test_a_failed_background_shard_write_stops_the_capture_and_keeps_the_shards_before_it(
    tiny_llama, tmp_path, monkeypatch
):
    """Shards are written on a background thread: a write error must reach the caller (not be lost in the
    thread), the shards committed before it stay, and a rerun completes the stores exactly."""
    contexts = pack(docs(), tiny_llama.tokenizer, context_len=16, n_tokens=400)
    settings = dict(batch_size=3, shard_tokens=40, progress=False)
    reference, _ = capture(tiny_llama, contexts, "0.mlp_hidden,1.resid_post", tmp_path / "ref", **settings)
    real_append, calls = ActivationStore.append, {"n": 0}

    def failing_append(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # the first site of the third shard
            raise OSError("disk full (planted)")
        return real_append(self, *args, **kwargs)

    monkeypatch.setattr(ActivationStore, "append", failing_append)
    with pytest.raises(OSError, match="planted"):
        capture(tiny_llama, contexts, "0.mlp_hidden,1.resid_post", tmp_path / "run", **settings)
    for site in ("0.mlp_hidden", "1.resid_post"):
        assert ActivationStore.open(tmp_path / "run" / site).n_shards == 2
    monkeypatch.setattr(ActivationStore, "append", real_append)
    resumed, _ = capture(tiny_llama, contexts, "0.mlp_hidden,1.resid_post", tmp_path / "run", **settings)
    for site, store in resumed.items():
        assert torch.equal(store.load_all(), reference[site].load_all())


def test_sites_out_of_step_are_lined_up_on_resume(tiny_llama, tmp_path):
    """If one site committed a shard the other did not (killed between two writes), resume drops the extra one."""
    contexts = pack(docs(), tiny_llama.tokenizer, context_len=16, n_tokens=200)
    sites = "0.mlp_hidden,1.resid_post"
    reference, _ = capture(
        tiny_llama, contexts, sites, tmp_path / "ref", batch_size=2, shard_tokens=20, progress=False
    )
    stores, _ = capture(
        tiny_llama, contexts, sites, tmp_path / "run", batch_size=2, shard_tokens=20, progress=False
    )
    stores["1.resid_post"].truncate(stores["1.resid_post"].manifest.shards[2].context_end)
    resumed, _ = capture(
        tiny_llama, contexts, sites, tmp_path / "run", batch_size=2, shard_tokens=20, progress=False
    )
    for site, store in resumed.items():
        assert torch.equal(store.load_all(), reference[site].load_all())


def test_nan_activations_name_site_and_batch(tiny_llama, tmp_path, monkeypatch):
    contexts = pack(docs(), tiny_llama.tokenizer, context_len=16, n_tokens=100)
    import interp.models.backends.nnsight as nnsight_backend

    real_run = nnsight_backend.run

    def nan_run(model, tokens, sites):
        out = real_run(model, tokens, sites)
        for site in out:
            if site.name == "1.resid_post":
                out[site][0, 3, 0] = float("nan")
        return out

    monkeypatch.setattr(nnsight_backend, "run", nan_run)
    with pytest.raises(CaptureError, match=r"NaN or inf .* site 1\.resid_post, batch of contexts 0\.\.3"):
        capture(tiny_llama, contexts, "0.mlp_hidden,1.resid_post", tmp_path, batch_size=4, progress=False)


@pytest.mark.parametrize(
    ("sites", "message"),
    [
        ("2.mlp_hidden", "out of range: this model has layers 0..1"),
        ("0.mlp", "unknown site '0.mlp'"),
        ("", "no site given"),
    ],
)
def test_bad_sites(tiny_llama, tmp_path, sites, message):
    contexts = pack(docs(), tiny_llama.tokenizer, context_len=16, n_tokens=50)
    with pytest.raises(SiteError, match=message):
        capture(tiny_llama, contexts, sites, tmp_path, progress=False)


def test_bad_backend_and_context_length(tiny_llama, tmp_path):
    contexts = pack(docs(), tiny_llama.tokenizer, context_len=16, n_tokens=50)
    with pytest.raises(CaptureError, match="unknown backend 'tl'; valid: nnsight, transformer_lens, torch"):
        capture(tiny_llama, contexts, "0.mlp_hidden", tmp_path, backend="tl", progress=False)
    long = pack(docs(200), tiny_llama.tokenizer, context_len=300, n_tokens=600)
    with pytest.raises(
        CaptureError, match="longer than tiny-llama accepts \\(256\\); pass --context-len 256"
    ):
        capture(tiny_llama, long, "0.mlp_hidden", tmp_path, progress=False)


def test_appending_with_another_model_or_corpus_is_refused(tiny, tmp_path):
    if tiny.info.family != "gpt2":
        pytest.skip("one pair of models is enough")
    from interp.models import load_model
    from interp.store import StoreError

    contexts = pack(docs(), tiny.tokenizer, context_len=16, n_tokens=50)
    capture(tiny, contexts, "0.resid_post", tmp_path, progress=False)
    llama = load_model("tiny-llama", device="cpu")
    with pytest.raises(StoreError, match=r"settings\.model: \"tiny-gpt2\" -> \"tiny-llama\""):
        capture(
            llama,
            pack(docs(), llama.tokenizer, context_len=16, n_tokens=50),
            "0.resid_post",
            tmp_path,
            progress=False,
        )
    other = pack(docs(), tiny.tokenizer, context_len=16, n_tokens=50, source="other.txt")
    with pytest.raises(CaptureError, match=r"corpus: .* -> \"other.txt\""):
        capture(tiny, other, "0.resid_post", tmp_path, progress=False)


def test_a_run_folder_is_bound_to_one_packing(tiny_llama, tmp_path):
    """Another --context-len for a new site in the same run folder is refused before anything is written (the old
    code replaced contexts.safetensors, so the earlier stores pointed at the wrong text)."""
    capture(tiny_llama, pack(docs(), tiny_llama.tokenizer, context_len=16, n_tokens=60), "0.resid_post", tmp_path,
            progress=False)  # fmt: skip
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    other = pack(docs(), tiny_llama.tokenizer, context_len=24, n_tokens=60)
    with pytest.raises(CaptureError, match=r"context_len: 16 -> 24.*another --out"):
        capture(tiny_llama, other, "1.resid_post", tmp_path, progress=False)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    # the same packing, fewer tokens, a new site: the run's longer contexts stay, the old store still matches them
    shorter = pack(docs(), tiny_llama.tokenizer, context_len=16, n_tokens=30)
    capture(tiny_llama, shorter, "1.resid_post", tmp_path, progress=False)
    assert (tmp_path / "contexts.safetensors").read_bytes() == before[tmp_path / "contexts.safetensors"]
