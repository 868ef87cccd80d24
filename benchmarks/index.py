"""Benchmark: build the feature index on the default model (Gemma 3 270M, 9.mlp_hidden, 100k BBC tokens, 4,096
features), and time opening feature pages of a 16,384-feature index.

    python benchmarks/index.py                      # captures 100k tokens once into cache/bench/index-gemma
    python benchmarks/index.py --decomposer FOLDER  # a trained decomposer instead of the random-direction one

The decomposer is by default a TopK SAE (k=32) with random unit directions (encoder = decoder^T), which costs the
same to encode as a trained one. Baselines measured in the same run: one plain encode pass over the store (what
any index must pay at least once), and interp.examples.top_examples (top-20 values only, no windows). The index
makes two encode passes, so ~2x the encode pass is the floor.

Feature pages: a 16,384-feature index is built on the first `--page-tokens` tokens, then (1) FeatureIndex.feature(i)
from a cold process cache, (2) the full Streamlit script run of the feature page through AppTest (switching to a
random feature each time: what a click costs on the server), are timed over random feature ids.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def store_path(args) -> Path:
    from interp.capture import capture
    from interp.core.paths import cache_dir
    from interp.corpus import load_contexts
    from interp.models import load_model

    path = Path(args.store) if args.store else cache_dir() / "bench" / "index-gemma" / "9.mlp_hidden"
    if not (path / "manifest.json").exists():
        print(f"capturing {args.tokens:,} tokens of {args.model} at 9.mlp_hidden into {path.parent} (once)")
        model = load_model(args.model)
        contexts = load_contexts(model.tokenizer, "bbc", 128, args.tokens)
        capture(model, contexts, "9.mlp_hidden", path.parent)
    return path


def random_topk(d_in: int, n_features: int, seed: int = 0):
    from interp.decompose.sae import SAE, SAEConfig

    return SAE(SAEConfig(architecture="topk", n_features=n_features, k=32, seed=seed, device="cpu"), d_in)


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bench_build(args, store, model) -> None:
    from interp.decompose import load_decomposer
    from interp.features import IndexConfig, build_index
    from interp.features.describe import top_examples

    dec = load_decomposer(args.decomposer) if args.decomposer else random_topk(store.d, args.features)
    which = args.decomposer or f"random-direction TopK SAE (k=32, {args.features} features)"
    print(f"store {store.path}: {store.n_tokens:,} tokens, d={store.d}; decomposer: {which}")

    def encode_pass():
        with torch.no_grad():
            for x in store.batches(4096, shuffle=False):
                dec.encode(x)

    t_encode, _ = timed(encode_pass)
    t_top, _ = timed(lambda: top_examples(dec, store, top=20))
    with tempfile.TemporaryDirectory() as tmp:
        t_index, index = timed(lambda: build_index(dec, store, Path(tmp) / "index", IndexConfig(), model=model,
                                                    progress=False))  # fmt: skip
        size = sum(f.stat().st_size for f in index.path.iterdir()) / 2**20
    print(f"encode pass (baseline)          {t_encode:8.1f} s")
    print(f"top_examples (top-20 only)      {t_top:8.1f} s")
    print(f"build_index (everything)        {t_index:8.1f} s   ({size:.0f} MB on disk)")
    print(f"ratio index / encode pass       {t_index / t_encode:8.2f}x")
    print(f"ratio index / top_examples      {t_index / t_top:8.2f}x")


def bench_pages(args, store, model) -> None:
    from streamlit.testing.v1 import AppTest

    from interp.features import FeatureIndex, IndexConfig, build_index

    n = args.page_features
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cache" / "decomposers" / "bench" / "index"
        config = IndexConfig(max_tokens=args.page_tokens)
        t_build, _ = timed(lambda: build_index(random_topk(store.d, n, seed=1), store, out, config, model=model,
                                                progress=False))  # fmt: skip
        ids = random.Random(0).sample(range(n), args.pages)
        index = FeatureIndex.open(out)
        reads = [timed(lambda i=i: index.feature(i))[0] for i in ids]
        os.environ["INTERP_CACHE"] = str(Path(tmp) / "cache")
        at = AppTest.from_file(str(ROOT / "apps" / "feature_browser.py"), default_timeout=120)
        at.query_params["page"], at.query_params["feature"] = "Feature", str(ids[0])
        t_first, _ = timed(at.run)
        assert not at.exception, at.exception
        pages = []
        for i in ids[1:]:
            at.number_input(key="feature_box").set_value(i)
            pages.append(timed(at.run)[0])
            assert not at.exception and f"Feature {i}" in [h.value for h in at.header]
    ms = lambda xs: f"median {statistics.median(xs) * 1e3:6.1f} ms, max {max(xs) * 1e3:6.1f} ms"  # noqa: E731
    print(f"\n{n:,}-feature index built on {args.page_tokens:,} tokens in {t_build:.1f} s")
    print(f"FeatureIndex.feature(i), {len(reads)} random ids:   {ms(reads)}")
    print(
        f"feature page script run (AppTest), {len(pages)} ids: {ms(pages)}   (first load {t_first * 1e3:.0f} ms)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--store", help="store folder (default: captured under cache/bench/index-gemma)")
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=4096)
    parser.add_argument("--decomposer", help="a decomposer folder instead of the random-direction TopK")
    parser.add_argument("--page-features", type=int, default=16384)
    parser.add_argument("--page-tokens", type=int, default=20_000)
    parser.add_argument("--pages", type=int, default=20)
    parser.add_argument("--skip-build", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    from interp.models import load_model
    from interp.store import ActivationStore

    store = ActivationStore.open(store_path(args))
    model = load_model(args.model, device="cpu")
    if not args.skip_build:
        bench_build(args, store, model)
    if args.page_features:
        bench_pages(args, store, model)


if __name__ == "__main__":
    main()
