"""Live training (`interp fit --live`) against store-based training, rows per second, same model and settings.

    python benchmarks/live.py                                     # tiny-llama, 1.mlp_hidden, CPU
    python benchmarks/live.py --model gemma-3-270m --site 9.resid_post --n-tokens 8192

One process, the same contexts, site, SAE (TopK) and batches for both: `store` captures the site into a temporary
store (torch backend, float32, disk writes included) and then trains on it; `live` trains on `LiveBatches` over the
same contexts (the model runs inside training). Printed: rows/s of capture, of training from the store, of the two
together, of live training, and the ratios live / store-train and live / (capture + store-train). Each is the best
of --rounds rounds.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def best_seconds(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--site", default="1.mlp_hidden")
    parser.add_argument("--corpus", default="bbc")
    parser.add_argument("--n-tokens", type=int, default=32768)
    parser.add_argument("--context-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--k", type=int, default=1024)
    parser.add_argument("--topk-k", type=int, default=32)
    parser.add_argument("--buffer-tokens", type=int, default=262_144)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from interp.capture import capture
    from interp.corpus.contexts import load_contexts
    from interp.decompose import method_class
    from interp.decompose.live import LiveBatches
    from interp.models import load_model

    model = load_model(args.model, device=args.device)
    contexts = load_contexts(model.tokenizer, args.corpus, args.context_len, args.n_tokens)
    buffer_contexts = max(1, args.buffer_tokens // (args.context_len - 1))
    live = LiveBatches(model, contexts, args.site, args.n_tokens, args.batch_size, 0,
                       buffer_contexts=buffer_contexts)  # fmt: skip
    n_steps = live.steps_available()
    rows = n_steps * args.batch_size
    cls = method_class("topk")
    cfg = cls.config_class(architecture="topk", n_features=args.k, k=args.topk_k, batch_size=args.batch_size,
                           n_steps=n_steps, device=args.device, seed=0)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        store = {}

        def capture_once() -> None:  # a new folder each round (an existing one would resume with 0 tokens)
            folder = Path(tmp) / f"run{len(store)}"
            store[len(store)] = capture(model, contexts, args.site, folder, backend="torch", progress=False)[
                0
            ]

        t_capture = best_seconds(capture_once, args.rounds)
        n_store = store[0][args.site].n_tokens
        t_store = best_seconds(lambda: cls(cfg).fit(store[0][args.site], progress=False), args.rounds)
    t_live = best_seconds(lambda: cls(cfg).fit(live, progress=False), args.rounds)
    print(f"{args.model} {args.site} on {args.device}: {rows:,} training rows ({n_steps} steps x {args.batch_size}), "
          f"SAE topk k={args.k} topk_k={args.topk_k}, buffer {buffer_contexts} contexts; store holds {n_store:,} rows")  # fmt: skip
    print(f"capture           {n_store / t_capture:>12,.0f} rows/s")
    print(f"store train       {rows / t_store:>12,.0f} rows/s")
    print(f"capture + train   {rows / (t_capture + t_store):>12,.0f} rows/s")
    print(f"live train        {rows / t_live:>12,.0f} rows/s")
    print(f"live / store-train = {t_store / t_live:.2f}   live / (capture + store-train) = "
          f"{(t_capture + t_store) / t_live:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
