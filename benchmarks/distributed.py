"""Throughput of 1 vs N processes on torch.distributed (gloo on CPU, nccl on GPUs), measured in the same run.

    python benchmarks/distributed.py                           # TopK SAE training + capture, 1 vs 2 CPU processes
    python benchmarks/distributed.py --runs 1:2,1:1,2:1        # processes:threads each (CPU)
    python benchmarks/distributed.py --device cuda --runs 1,2,4,8 --no-capture   # one GPU per process

Each run starts fresh processes (file:// rendezvous, like torchrun's). On CPU, `P:T` is P processes of T torch
threads each; the default 1:2, 1:1, 2:1 holds 2 cores fixed (one process with both, one process with one, two
processes with one each), so it shows what data parallelism gains over threads; on GPUs each process gets its own
GPU.

- SAE training: a TopK SAE on a synthetic store, global batch fixed; throughput = global batch / the median step
  time (the slowest rank's; the first steps are left out), so setup and bursts of load from other programs count
  little.
- Capture: `--capture-model` over the bundled corpus, two sites, run twice (the first warms up); tokens / s = all
  ranks' tokens / the slowest rank's capture time (model loading excluded).
Printed: one row per (task, run) with the ratio to the first run.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def make_store(path: Path, n_tokens: int, d: int) -> None:
    from interp.store import ActivationStore, StoreManifest

    gen = torch.Generator().manual_seed(0)
    atoms = torch.nn.functional.normalize(torch.randn(4 * d, d, generator=gen), dim=1)
    store = ActivationStore.create(path, StoreManifest("bench", "0.resid_post", d, "float32", "x", 128, True))
    shard = 16384
    for start in range(0, n_tokens, shard):
        n = min(shard, n_tokens - start)
        codes = torch.rand(n, 4 * d, generator=gen) * (torch.rand(n, 4 * d, generator=gen) < 0.02)
        ids = torch.arange(n)
        store.append(codes @ atoms + 0.1, ids, ids, ids, context_end=start // shard + 1)


def _time_steps() -> list[float]:
    """Record the time at each training step (the trainer asks for the learning rate once per step)."""
    import interp.decompose.train as train_module

    stamps: list[float] = []
    real = train_module.learning_rate_factor

    def stamped(*args):
        stamps.append(time.perf_counter())
        return real(*args)

    train_module.learning_rate_factor = stamped
    return stamps


def all_ranks_max(value: float | torch.Tensor, device: str) -> float:
    """The largest of every rank's value: a step or a capture is as slow as its slowest rank."""
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor[0])


def _rank(rank: int, world: int, threads: int, init: str, args: argparse.Namespace, out: str) -> None:
    if args.device == "cpu":
        torch.set_num_threads(threads)
    backend = "nccl" if args.device == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"file://{init}", rank=rank, world_size=world)
    device = f"cuda:{rank}" if args.device == "cuda" else "cpu"
    if args.device == "cuda":
        torch.cuda.set_device(rank)
    try:
        from interp.decompose.sae import SAE, SAEConfig
        from interp.store import ActivationStore

        result: dict = {}
        store = ActivationStore.open(args.store)
        stamps = _time_steps()
        config = SAEConfig(architecture="topk", n_features=args.n_features, k=args.k, batch_size=args.batch,
                           n_steps=args.steps, device=device, warmup_steps=2)  # fmt: skip
        SAE(config).fit(store, progress=False)
        step_seconds = torch.tensor(stamps).diff()[2:]  # the first steps warm up
        median = float(all_ranks_max(step_seconds.median(), device))
        result["sae_rows_per_s"] = args.batch / median
        if args.capture:
            from interp.capture import capture_corpus

            for attempt in ("warm-up", "timed"):  # the first run pays for first-call costs
                run = Path(out).parent / f"capture-{attempt}"  # all ranks write into it
                _, stats, _ = capture_corpus(args.capture_model, None, "bbc", args.capture_tokens, 128, 8, "torch",
                                       device, "float32", run)  # fmt: skip
            tokens = torch.tensor([stats.n_tokens], dtype=torch.float64, device=device)
            dist.all_reduce(tokens)
            result["capture_tokens_per_s"] = float(tokens[0]) / float(all_ranks_max(stats.seconds, device))
        if rank == 0:
            Path(out).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", default="1:2,1:1,2:1", help="processes[:threads each], comma-separated")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--d", type=int, default=256, help="width of the synthetic activations")
    parser.add_argument("--n-tokens", type=int, default=131072)
    parser.add_argument("--n-features", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=2048, help="global batch")
    parser.add_argument("--steps", type=int, default=45)
    parser.add_argument("--capture", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--capture-model", default="gemma-3-270m")
    parser.add_argument("--capture-tokens", type=int, default=4096)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        args.store = str(Path(tmp) / "store")
        make_store(Path(args.store), args.n_tokens, args.d)
        rows = []
        for i, run in enumerate(args.runs.split(",")):
            world, _, threads = run.partition(":")
            world, threads = int(world), int(threads or torch.get_num_threads())
            out = Path(tmp) / f"run-{i}" / "result.json"
            out.parent.mkdir()
            mp.start_processes(_rank, args=(world, threads, str(out.parent / "init"), args, str(out)), nprocs=world,
                               start_method="spawn")  # fmt: skip
            label = f"{threads} thread{'s' * (threads > 1)} each" if args.device == "cpu" else "1 GPU each"
            rows.append((world, label, json.loads(out.read_text())))
    base = rows[0][2]
    print(f"TopK SAE d_in={args.d} n_features={args.n_features} k={args.k}, global batch {args.batch}; "
          f"capture {args.capture_model}, {args.capture_tokens} tokens")  # fmt: skip
    print(f"{'task':<10}{'processes':>10}  {'':<16}{'throughput':>14}  {'vs first':>8}")
    for key, task, unit in (
        ("sae_rows_per_s", "SAE fit", "rows/s"),
        ("capture_tokens_per_s", "capture", "tok/s"),
    ):
        for world, label, result in rows:
            if key in result:
                print(f"{task:<10}{world:>10}  {label:<16}{result[key]:>10,.0f} {unit:<6}"
                      f"{result[key] / base[key]:>7.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
