"""Where one SNMF iteration spends its time, against its floor, measured in the same run.

    python benchmarks/profile_snmf.py --threads 1                      # planted data, d 1024, 20,000 tokens, k 64
    python benchmarks/profile_snmf.py --store cache/bench/index-gemma/9.mlp_hidden --threads 1

Fits interp's SNMF (paper settings: 1% of neurons per feature, SVD init) for n and for 2n iterations under
torch.profiler; the difference is n iterations (the init and setup cancel out). The floor is one dense product
`A^T G`: `[d, n_tokens] x [n_tokens, k]`, the accumulation of A G every iteration must make once for the next F
(the projection F^T A is an embedding-bag over 1% of the neurons, far below it). Prints the iteration time as a
multiple of that product and the ops with the largest shares of the iteration's self time.
"""

from __future__ import annotations

import argparse
import time

import torch
from profile_sae import seconds  # benchmarks/ is on the path
from torch.profiler import ProfilerActivity
from torch.profiler import profile as torch_profile


def profiled_fit(x: torch.Tensor, k: int, n_iter: int) -> tuple[float, float, dict]:
    """(wall s, process CPU s, {op: (self CPU us, calls)}) of one fit of `n_iter` iterations (early stop off)."""
    from interp.decompose.snmf import SNMF, SNMFConfig

    snmf = SNMF(SNMFConfig(n_features=k, max_iter=n_iter, patience=n_iter, device="cpu"))
    start, cpu = time.perf_counter(), time.process_time()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        snmf.fit(x, progress=False)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return wall, cpu, {e.key: (e.self_cpu_time_total, e.count) for e in prof.key_averages()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", default=None, help="a store of real mlp_hidden activations")
    parser.add_argument("--n-tokens", type=int, default=20_000)
    parser.add_argument("--d", type=int, default=1024, help="planted data width (without --store)")
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--top", type=int, default=12, help="ops shown")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.store:
        from interp.store import ActivationStore

        x = ActivationStore.open(args.store).load_all()[: args.n_tokens].contiguous()
    else:
        from snmf import planted

        x = planted(args.d, args.n_tokens, args.k)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; x {list(x.shape)}, k {args.k}")
    profiled_fit(x, args.k, 2)  # warm-up
    n = args.iters
    wall_n, cpu_n, ops_n = profiled_fit(x, args.k, n)
    wall_2n, cpu_2n, ops_2n = profiled_fit(x, args.k, 2 * n)
    per_iter, cpu_iter = (wall_2n - wall_n) / n, (cpu_2n - cpu_n) / n
    ops = {key: ((t - ops_n.get(key, (0, 0))[0]) / n, (c - ops_n.get(key, (0, 0))[1]) / n)
           for key, (t, c) in ops_2n.items()}  # fmt: skip
    total = sum(max(t, 0.0) for t, _ in ops.values()) or 1.0
    g = torch.rand(x.shape[0], args.k)
    matmul = seconds(lambda: x.T @ g, 5)
    cpu_matmul = seconds(lambda: x.T @ g, 5, time.process_time)
    print(f"SNMF: {per_iter * 1e3:.1f} ms per iteration (profiled) = {per_iter / matmul:.1f}x one A^T G "
          f"({matmul * 1e3:.2f} ms); CPU time: {cpu_iter * 1e3:.1f} ms = {cpu_iter / cpu_matmul:.1f}x "
          f"({cpu_matmul * 1e3:.2f} ms)")  # fmt: skip
    print(f"{'op':<42} {'share':>7} {'ms/iter':>9} {'calls/iter':>11}")
    for key, (t, calls) in sorted(ops.items(), key=lambda item: -item[1][0])[: args.top]:
        print(f"{key[:42]:<42} {t / total:7.1%} {t / 1e3:9.2f} {calls:11.1f}")


if __name__ == "__main__":
    main()
