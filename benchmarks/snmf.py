"""SNMF speed and error vs overcomplete's SemiNMF and the paper's official code, measured in the same run.

    python benchmarks/snmf.py --peer-python /tmp/venv-oc/bin/python --official /tmp/snmf-official/seminmf.py \
        --store cache/activations/gemma-3-270m/bbc/9.mlp_hidden --n-tokens 30000 --max-iter 50 --threads 1

overcomplete runs in its own virtual environment (`python -m venv /tmp/venv-oc && /tmp/venv-oc/bin/pip install
torch==2.13.0 overcomplete 'matplotlib<3.9'`), given the same data through a temporary file (a stub stands in for
torchvision, which overcomplete's package imports for its vision wrappers and which cannot load beside the CPU torch
wheel; SemiNMF does not use it). The official code (`factorization/seminmf.py` of
github.com/ordavid-s/snmf-mlp-decomposition; it needs only torch) runs in this interpreter. Rows:
- interp SNMF as the paper specifies it (1% of neurons per feature; SVD init),
- the same with `fast_matmul=False` (every product in strict float32 through MKL; the default lets oneDNN run A G
  and the G update's Q G^T, see SNMFConfig.fast_matmul),
- interp SNMF with random init: the problem and init of the official code,
- interp with sparsity 1.0 (SVD init, then random init): plain semi-NMF, the same problem overcomplete solves,
- interp SNMF streamed out of core from a store (same data, G memory-mapped): the in-memory vs out-of-core ratio,
- the peers. All run the same number of iterations (early stopping off for every row), timed apart from their
  initialization (the official code's: a fit of 0 iterations, taken off). Speed ratios only between rows that solve
  the same problem (the `problem` column: SNMF with 1% of neurons per feature, or dense semi-NMF).
Relative error = ||A - F G^T||^2 / ||A||^2; "to 0.1%": the first iteration whose loss is within 0.1% of the
run's best (interp records a loss per iteration; the peers report only their last). With --store, the top tokens
of 10 features of the real fit are printed.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from interp.store import CONTEXTS_FILE

PEER = r"""
import json, sys, time, types, torch
# overcomplete's package __init__ imports its vision wrappers (torchvision), which cannot load beside the CPU torch
# wheel; SemiNMF does not use them, so a stub module stands in for torchvision.
stub = types.ModuleType("torchvision")
stub.transforms = types.ModuleType("torchvision.transforms")
sys.modules.update({"torchvision": stub, "torchvision.transforms": stub.transforms})
from overcomplete.optimization import SemiNMF
torch.manual_seed(0)
torch.set_num_threads(int(sys.argv[4]))
x = torch.load(sys.argv[1], weights_only=True)
iters = int(sys.argv[2])
model = SemiNMF(nb_concepts=int(sys.argv[3]), solver="mu", tol=0.0)
z = model.init_random_z(x)  # what SemiNMF.fit does, with the iterations timed apart from the initialization
d = model.init_random_d(x, z)
start, cpu = time.perf_counter(), time.process_time()
z, d = model.solver_fn(x, z, d, max_iter=iters, tol=0.0, l1_penalty=0.0, verbose=False)
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
error = float((x - z @ d).square().sum() / x.square().sum())
print(json.dumps({"seconds": seconds, "cpu": cpu, "iterations": iters, "rel_error": error}))
"""

OFFICIAL = r"""
import json, os, sys, time, torch
# the paper's official implementation (ordavid-s/snmf-mlp-decomposition, factorization/seminmf.py), run as it is:
# random init, 1% of neurons per feature, its full-residual loss every iteration; patience = max_iter so that the
# number of iterations matches interp's; its initialization is timed apart (as interp's is)
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[5])))
os.chdir(os.path.dirname(sys.argv[1]))  # it appends to training_summary.log in the working directory
from seminmf import NMFSemiNMF
torch.manual_seed(0)
torch.set_num_threads(int(sys.argv[4]))
x = torch.load(sys.argv[1], weights_only=True)
iters = int(sys.argv[2])
a = x.T.contiguous()  # its layout: A [d_mlp, n_tokens]
def timed_fit(n):
    model = NMFSemiNMF(int(sys.argv[3]), sparsity=0.01)
    start, cpu = time.perf_counter(), time.process_time()
    model.fit(a, max_iter=n, patience=n, verbose=False, init="random")
    return model, time.perf_counter() - start, time.process_time() - cpu
# its fit draws the random init first: a fit of 0 iterations times that setup, taken off the full fit's time
_, setup, setup_cpu = timed_fit(0)
model, seconds, cpu = timed_fit(iters)
seconds, cpu = seconds - setup, cpu - setup_cpu
error = float((a - model.F_ @ model.G_.T).square().sum() / a.square().sum())
print(json.dumps({"seconds": seconds, "cpu": cpu, "iterations": iters, "rel_error": error}))
"""


def planted(d: int, n: int, k: int, noise: float = 0.01, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    m = math.ceil(0.01 * d)
    z = torch.zeros(d, k)
    for j in range(k):
        z[torch.randperm(d, generator=gen)[:m], j] = torch.randn(m, generator=gen)
    y = torch.rand(k, n, generator=gen) * (torch.rand(k, n, generator=gen) < 0.1)
    a = z @ y
    return (a + noise * a.std() * torch.randn(d, n, generator=gen)).T.contiguous()


def interp_row(name: str, data, k: int, max_iter: int, **config) -> dict:
    from interp.decompose.snmf import SNMF, SNMFConfig

    with tempfile.TemporaryDirectory() as ckpt:
        snmf = SNMF(SNMFConfig(n_features=k, max_iter=max_iter, **config))
        start, cpu = time.perf_counter(), time.process_time()
        snmf.fit(data, checkpoint_dir=ckpt if not isinstance(data, torch.Tensor) else None, progress=False)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    state = snmf.state
    problem = "semi-NMF" if config.get("sparsity", 0.01) >= 1.0 else "SNMF 1%"
    return {"name": name, "problem": problem, "seconds": seconds, "cpu": cpu, "iterations": state.iteration,
            "setup": seconds - state.seconds,
            "per_iter": state.seconds / state.iteration, "cpu_per_iter": state.cpu_seconds / state.iteration,
            "rel_error": state.best_loss, "stop": state.stop_reason, "model": snmf,
            "converged": next(i for i, loss in enumerate(state.losses, 1) if loss <= state.best_loss * 1.001)}  # fmt: skip


def peer_row(name: str, problem: str, python: str, script: str, x: torch.Tensor, k: int, iterations: int,
             *extra: str) -> dict:  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.pt"
        torch.save(x, path)
        args = [str(path), str(iterations), str(k), str(torch.get_num_threads()), *extra]
        out = subprocess.run([python, "-c", script, *args], capture_output=True, text=True,
                             check=True).stdout.strip().splitlines()[-1]  # fmt: skip
    row = json.loads(out)
    return {"name": name, "problem": problem, "per_iter": row["seconds"] / iterations, "cpu_per_iter": row["cpu"] / iterations,
            "stop": "max_iter", **row}  # fmt: skip


def store_from(x: torch.Tensor, path: Path, rows: int = 4096):
    from interp.store import ActivationStore, StoreManifest

    store = ActivationStore.create(
        path, StoreManifest("bench", "0.mlp_hidden", x.shape[1], "float32", "x", 8, True)
    )
    for i, start in enumerate(range(0, x.shape[0], rows)):
        ids = torch.arange(min(rows, x.shape[0] - start))
        store.append(x[start : start + rows], ids, ids, ids, context_end=i + 1)
    return store


def table(title: str, rows: list[dict], peers: list[dict]) -> None:
    """Setup (initialization; interp's SVD init included), then wall and CPU seconds (all threads) per iteration,
    iterations only; speed ratios vs each peer by CPU time (the fairer one on a machine shared with other work) and
    by wall time, only between rows that solve the same problem (SNMF with 1% of neurons per feature and dense
    semi-NMF are different problems: no ratio between them)."""
    print(f"\n{title}")
    ratios = "".join(f"{'vs ' + p['short'] + ' cpu|wall':>26}" for p in peers)
    print(
        f"{'method':<52}{'problem':>10}{'setup s':>8}{'s/iter':>9}{'cpu s/iter':>11}{'iters':>7}{'to 0.1%':>8}"
        f"{'rel err':>10}{'stop':>10}{ratios}"
    )
    for row in rows:
        setup = f"{row['setup']:.1f}" if "setup" in row else "-"
        ratios = "".join(f"{p['cpu_per_iter'] / row['cpu_per_iter']:>19.2f}x|{p['per_iter'] / row['per_iter']:.2f}x"
                         if p["problem"] == row["problem"] else f"{'-':>26}" for p in peers)  # fmt: skip
        print(f"{row['name']:<52}{row['problem']:>10}{setup:>8}{row['per_iter']:>9.4f}{row['cpu_per_iter']:>11.4f}"
              f"{row['iterations']:>7}{row.get('converged', '-'):>8}{row['rel_error']:>10.4f}{row['stop']:>10}"
              f"{ratios}")  # fmt: skip


def run(x: torch.Tensor, k: int, max_iter: int, peer_python: str | None, official: Path | None, title: str,
        out_of_core: bool) -> dict:  # fmt: skip
    rows = [
        interp_row("interp SNMF, paper settings (1% neurons, svd init)", x, k, max_iter, patience=max_iter),
        interp_row(
            "interp SNMF, paper settings, strict float32 matmuls",
            x,
            k,
            max_iter,
            fast_matmul=False,
            patience=max_iter,
        ),  # fmt: skip
        interp_row("interp SNMF, 1% neurons, random init", x, k, max_iter, init="random", patience=max_iter),
        interp_row(
            "interp semi-NMF (sparsity 1.0, svd init)", x, k, max_iter, sparsity=1.0, patience=max_iter
        ),
        interp_row(
            "interp semi-NMF (sparsity 1.0, random init)",
            x,
            k,
            max_iter,
            sparsity=1.0,
            init="random",
            patience=max_iter,
        ),  # fmt: skip
    ]
    peers = []
    if peer_python:
        peers.append(peer_row("overcomplete SemiNMF (random init)", "semi-NMF", peer_python, PEER, x, k, max_iter)
                     | {"short": "overcomplete"})  # fmt: skip
    if official:
        peers.append(peer_row("official SNMF code (1% neurons, random init)", "SNMF 1%", sys.executable, OFFICIAL,
                              x, k, max_iter, str(official)) | {"short": "official"})  # fmt: skip
    if out_of_core:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(interp_row("interp SNMF, out of core (store, G memory-mapped)", store_from(x, Path(tmp) / "s"),
                                   k, max_iter, stream=True, patience=max_iter))  # fmt: skip
    table(title, rows + peers, peers)
    if out_of_core:
        print(
            f"in-memory vs out-of-core time per iteration: {rows[-1]['per_iter'] / rows[0]['per_iter']:.2f}x wall, "
            f"{rows[-1]['cpu_per_iter'] / rows[0]['cpu_per_iter']:.2f}x cpu"
        )
    return rows[0]


def top_tokens(store_path: Path, snmf, n_features: int = 10, top: int = 8) -> None:
    """Top-activating tokens (largest codes of the fit) of the first features, with a little context."""
    from interp.corpus import Contexts
    from interp.models import load_model
    from interp.store import ActivationStore

    store = ActivationStore.open(store_path)
    meta = store.tokens()
    contexts = Contexts.load(store_path.parent / CONTEXTS_FILE)
    tokenizer = load_model(store.manifest.model, device="cpu").tokenizer
    codes = snmf.g_best
    print(f"\nTop tokens of {n_features} SNMF features ({store.manifest.model}, {store.site}):")
    for feature in range(n_features):
        rows = codes[:, feature].topk(top).indices
        shown = []
        for row in rows.tolist():
            ctx, pos = int(meta["context_ids"][row]), int(meta["positions"][row])
            left = tokenizer.decode(contexts.token_ids[ctx, max(1, pos - 4) : pos]).replace("\n", " ")
            token = tokenizer.decode(contexts.token_ids[ctx, pos : pos + 1]).replace("\n", "\\n")
            shown.append(f"{left[-24:]}[{token}]")
        print(f"  feature {feature:>3}: " + " | ".join(shown[:4]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--peer-python", default=None, help="python of a venv with overcomplete installed")
    parser.add_argument("--official", type=Path, default=None, help="factorization/seminmf.py of the paper's "
                        "official code (github.com/ordavid-s/snmf-mlp-decomposition), run as a second peer")  # fmt: skip
    parser.add_argument("--store", type=Path, default=None, help="a store of real mlp_hidden activations")
    parser.add_argument("--n-tokens", type=int, default=50_000, help="tokens of the store to use")
    parser.add_argument("--max-iter", type=int, default=200)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--no-planted", action="store_true", help="only the real store")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for interp and the peer (1 measures "
                        "the work done when other jobs share the cores)")  # fmt: skip
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}")
    if not args.no_planted:
        run(planted(1024, 20_000, args.k), args.k, args.max_iter, args.peer_python, args.official,
            "Planted data: d_mlp 1024, 20,000 tokens, k " + str(args.k), out_of_core=True)  # fmt: skip
    if args.store is not None:
        from interp.store import ActivationStore

        x = ActivationStore.open(args.store).load_all()[: args.n_tokens]
        best = run(x, args.k, args.max_iter, args.peer_python, args.official,
                   f"Real activations: {args.store} ({x.shape[0]:,} tokens, d {x.shape[1]}), k {args.k}",
                   out_of_core=False)  # fmt: skip
        top_tokens(args.store, best["model"])


if __name__ == "__main__":
    sys.exit(main())
