"""Where one SAE-family training step spends its time, against its floor, measured in the same run.

    python benchmarks/profile_sae.py                           # TopK and MP-SAE, d_in 640, 4096 latents, k 32
    python benchmarks/profile_sae.py --arch topk --batch 4096 --steps 10 --device cpu

Trains interp's own trainer (`SAE.fit` / `MPSAE.fit` on a tensor: the real step, optimizer and decoder
renormalization included) under torch.profiler and prints, per architecture: the step time as a multiple of one
`[batch, d_in] x [d_in, n_latents]` matmul (the encoder product: the floor any SAE step pays at least once), and
the ops that take the largest shares of the step's self time. What the floor leaves out: the backward (about two
more products of that size for a dense encoder), top-k, the decoder, Adam.
"""

from __future__ import annotations

import argparse
import time

import torch


def seconds(fn, repeats: int, clock=time.perf_counter) -> float:
    """Best time of `repeats` calls of `fn` after one warm-up call, on `clock`."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        fn()
        best = min(best, clock() - start)
    return best


def build(arch: str, n_latents: int, k: int, batch: int, n_steps: int, device: str):
    from interp.decompose.mp_sae import MPSAE, MPSAEConfig
    from interp.decompose.sae import SAE, SAEConfig

    common = {"n_features": n_latents, "k": k, "batch_size": batch, "n_steps": n_steps, "device": device,
              "warmup_steps": 1, "decay_start": 1.0}  # fmt: skip
    if arch == "mpsae":
        return MPSAE(MPSAEConfig(**common))
    return SAE(SAEConfig(architecture=arch, **common))


def profiled_fit(
    arch: str, x: torch.Tensor, n_steps: int, args: argparse.Namespace
) -> tuple[float, float, dict]:
    """(wall seconds, process CPU seconds, {op: (self CPU microseconds, calls)}) of one whole `fit` of `n_steps`
    under the profiler."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    model = build(arch, args.latents, args.k, args.batch, n_steps, args.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if x.is_cuda else [])
    start, cpu = time.perf_counter(), time.process_time()
    with torch_profile(activities=activities) as prof:
        model.fit(x, progress=False)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return wall, cpu, {e.key: (e.self_cpu_time_total, e.count) for e in prof.key_averages()}


def profile(arch: str, x: torch.Tensor, args: argparse.Namespace) -> None:
    """Per-step figures from the difference of a fit of 2n steps and one of n (setup and the end-of-fit
    evaluation cancel out)."""
    build(arch, args.latents, args.k, args.batch, 2, args.device).fit(x, progress=False)  # warm-up
    n = args.steps
    wall_n, cpu_n, ops_n = profiled_fit(arch, x, n, args)
    wall_2n, cpu_2n, ops_2n = profiled_fit(arch, x, 2 * n, args)
    per_step, cpu_step = (wall_2n - wall_n) / n, (cpu_2n - cpu_n) / n
    ops = {
        k: ((t - ops_n.get(k, (0, 0))[0]) / n, (c - ops_n.get(k, (0, 0))[1]) / n)
        for k, (t, c) in ops_2n.items()
    }
    total = sum(max(t, 0.0) for t, _ in ops.values()) or 1.0
    w = torch.randn(x.shape[1], args.latents, device=x.device)
    batch = x[: args.batch]
    matmul = seconds(lambda: batch @ w, 5)
    cpu_matmul = seconds(lambda: batch @ w, 5, time.process_time)
    print(f"\n{arch}: {per_step * 1e3:.1f} ms per step (profiled) = {per_step / matmul:.1f}x one encoder matmul "
          f"({matmul * 1e3:.2f} ms for [{args.batch}, {x.shape[1]}] x [{x.shape[1]}, {args.latents}]); "
          f"CPU time (steadier on a shared machine): {cpu_step * 1e3:.1f} ms = {cpu_step / cpu_matmul:.1f}x "
          f"({cpu_matmul * 1e3:.2f} ms)")  # fmt: skip
    print(f"{'op':<42} {'share':>7} {'ms/step':>9} {'calls/step':>11}")
    for key, (t, calls) in sorted(ops.items(), key=lambda item: -item[1][0])[: args.top]:
        print(f"{key[:42]:<42} {t / total:7.1%} {t / 1e3:9.2f} {calls:11.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--arch", default="topk,mpsae", help="comma-separated: topk, batchtopk, jumprelu, mpsae"
    )
    parser.add_argument("--d-in", type=int, default=640)
    parser.add_argument("--latents", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--top", type=int, default=12, help="ops shown")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch * (2 * args.steps + 2), args.d_in, device=args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    for arch in args.arch.split(","):
        profile(arch.strip(), x, args)


if __name__ == "__main__":
    main()
