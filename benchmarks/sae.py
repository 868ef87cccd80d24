"""SAE and MP-SAE training speed and held-out FVU: interp vs SAELens, eai-sparsify, dictionary-learning and
overcomplete, in the same run.

    python benchmarks/sae.py --saelens /tmp/venv-saelens/bin/python --sparsify /tmp/venv-sparsify/bin/python \
        --overcomplete /tmp/venv-oc/bin/python --dictionary-learning /tmp/venv-dl/bin/python \
        --steps 40 --slow-steps 4 [--store cache/activations/gemma-3-270m/bbc/9.resid_post] [--skip-planted]

Each peer lives in its own virtual environment (their pins clash; `pip install torch==2.13.0 sae-lens`,
`... eai-sparsify`, `... dictionary-learning`, `... overcomplete 'matplotlib<3.9'`) and runs as a subprocess on
the same data (a temporary file). Same architecture and settings for all: d_in 640, 4096 latents, k 32, batch 4096,
the same initialization (see shared_init), Adam(W, no decay) at the same constant learning rate for the same
number of steps (`--steps`; SAELens' and overcomplete's
MP-SAEs, ~8 s and ~45 s a step on 2 cores, run `--slow-steps`); activations are scaled to mean norm sqrt(d_in)
once, here, for everyone. Rows/s exclude the first (warm-up) step; interp's include its trainer's own work
(sampling, metrics). FVU is measured by this script on held-out rows from each method's reconstruction. The last
column is interp's rows/s over the row's (the TopK target: >= 1.2x sparsify; MP-SAE: >= 5x SAELens' MP-SAE). interp's steps are timed
as a fit of `--steps` steps less a fit of 1 step from the same init (its setup and end-of-fit evaluation cancel).
`--families matryoshka`: Matryoshka BatchTopK with prefixes 256, 1024, 2048, 4096, interp vs SAELens'
MatryoshkaBatchTopKTrainingSAE vs dictionary_learning's MatryoshkaBatchTopKTrainer (one venv with both works).
Each interp run sits next to its closest peer in the order, as the machine may be shared.
torchvision: overcomplete imports it for its vision wrappers and the PyPI build does not load beside the CPU
torch wheel, so a stub module stands in for it (MpSAE does not use it); in dictionary-learning's venv uninstall
it (`pip uninstall torchvision`; transformers then skips it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

D_SAE, K, BATCH = 4096, 32, 4096
WIDTHS = (
    256,
    1024,
    2048,
    4096,
)  # Matryoshka prefixes (dictionary_learning: group sizes 256, 768, 1024, 2048)


def _timed_steps(step, n_steps: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of steps 1.. (step 0 warms up)."""
    step(0)  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(1, n_steps):
        step(i)
    return time.perf_counter() - start, time.process_time() - cpu


def shared_init(train: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    """The one initialization every method starts from: unit decoder rows W_dec [D_SAE, d] from `seed`, the encoder
    its transpose, b_enc 0, b_dec the mean of the training rows."""
    gen = torch.Generator().manual_seed(seed)
    w_dec = torch.nn.functional.normalize(torch.randn(D_SAE, train.shape[1], generator=gen), dim=1)
    return {
        "W_dec": w_dec,
        "W_enc": w_dec.T.contiguous(),
        "b_enc": torch.zeros(D_SAE),
        "b_dec": train.mean(0),
    }


@torch.no_grad()
def _start_from(init: dict[str, torch.Tensor], **params: torch.Tensor) -> None:
    """Copy the shared init into a peer's parameters, named by the init's key (each transposed where needed)."""
    for key, param in params.items():
        value = init[key]
        param.copy_(value if value.shape == param.shape else value.T)


def _saelens_steps(sae, batches: list[torch.Tensor], lr: float, n_steps: int) -> tuple[float, float]:
    """SAELens' own training step (its `training_forward_pass` loss) under plain Adam; (wall, CPU) seconds of
    steps 1.."""
    from sae_lens.saes.sae import TrainStepInput

    opt = torch.optim.Adam(sae.parameters(), lr=lr)

    def step(i):
        out = sae.training_forward_pass(TrainStepInput(sae_in=batches[i], coefficients={}, dead_neuron_mask=None,
                                                       n_training_steps=i, is_logging_step=False))  # fmt: skip
        out.loss.backward()
        opt.step()
        opt.zero_grad()

    return _timed_steps(step, n_steps)


def worker(name: str, data_path: str, n_steps: int, lr: float, out_path: str) -> None:
    """Train one method on the train rows from the shared init, write its held-out reconstruction and timing."""
    data = torch.load(data_path, weights_only=True)
    train, held, init = data["train"], data["held"], data["init"]
    torch.manual_seed(0)
    batches = [train[(i * BATCH) % (train.shape[0] - BATCH) :][:BATCH] for i in range(n_steps)]

    if name in ("interp_topk", "interp_mpsae", "interp_matryoshka"):
        import interp.decompose.train as trainer
        from interp.decompose.mp_sae import MPSAE, MPSAEConfig
        from interp.decompose.sae import SAE, SAEConfig

        trainer._init_from_data = lambda *args: (
            None
        )  # keep the shared init (normalize=False: no scale to set)
        stacked = torch.cat(batches)  # the trainer shuffles; same rows as the peers see

        def fitted(steps: int):
            """(model, wall s, CPU s) of a whole fit of `steps` steps from the shared init."""
            # constant learning rate (warmup 1 step, no decay), as the peers' plain Adam loops
            common = {"n_features": D_SAE, "k": K, "batch_size": BATCH, "n_steps": steps, "lr": lr,
                      "normalize": False, "warmup_steps": 1, "decay_start": 1.0, "device": "cpu"}  # fmt: skip
            model = {
                "interp_topk": lambda: SAE(SAEConfig(architecture="topk", **common)),
                "interp_matryoshka": lambda: SAE(
                    SAEConfig(architecture="matryoshka", matryoshka_widths=WIDTHS, **common)
                ),
                "interp_mpsae": lambda: MPSAE(MPSAEConfig(**common)),
            }[name]()
            module = model.build(train.shape[1])
            untied = {"W_enc": module.W_enc, "b_enc": module.b_enc} if name != "interp_mpsae" else {}
            _start_from(init, W_dec=module.W_dec, b_dec=module.b_dec, **untied)
            start, cpu = time.perf_counter(), time.process_time()
            model.fit(stacked, progress=False)
            return model, time.perf_counter() - start, time.process_time() - cpu

        # steps 1.. as for the peers: a fit of n steps less a fit of 1 (setup, the first step, the end-of-fit
        # evaluation cancel out)
        _, seconds_1, cpu_1 = fitted(1)
        model, seconds, cpu = fitted(n_steps)
        seconds, cpu = seconds - seconds_1, cpu - cpu_1
        recon = model.decode(model.encode(held))
    elif name == "sparsify_topk":
        from sparsify import SparseCoder, SparseCoderConfig

        sae = SparseCoder(train.shape[1], SparseCoderConfig(num_latents=D_SAE, k=K))
        _start_from(init, W_enc=sae.encoder.weight, b_enc=sae.encoder.bias, W_dec=sae.W_dec, b_dec=sae.b_dec)
        opt = torch.optim.Adam(sae.parameters(), lr=lr)

        def step(i):
            out = sae(batches[i])
            out.fvu.backward()
            sae.remove_gradient_parallel_to_decoder_directions()
            opt.step()
            opt.zero_grad()
            sae.set_decoder_norm_to_unit_norm()

        seconds, cpu = _timed_steps(step, n_steps)
        with torch.no_grad():
            recon = sae(held).sae_out
    elif name in ("saelens_topk", "saelens_mpsae"):
        from sae_lens.saes.matching_pursuit_sae import (
            MatchingPursuitTrainingSAE,
            MatchingPursuitTrainingSAEConfig,
        )
        from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

        if name == "saelens_topk":
            sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=train.shape[1], d_sae=D_SAE, k=K))
        else:
            sae = MatchingPursuitTrainingSAE(MatchingPursuitTrainingSAEConfig(
                d_in=train.shape[1], d_sae=D_SAE, max_iterations=K, residual_threshold=0.0,
                stop_on_duplicate_support=False))  # fmt: skip
        names = ("W_enc", "b_enc", "W_dec", "b_dec") if name == "saelens_topk" else ("W_dec", "b_dec")
        _start_from(init, **{key: getattr(sae, key) for key in names})
        seconds, cpu = _saelens_steps(sae, batches, lr, n_steps)
        with torch.no_grad():
            recon = sae.decode(sae.encode(held))
    elif name == "saelens_matryoshka":
        from sae_lens.saes import MatryoshkaBatchTopKTrainingSAE, MatryoshkaBatchTopKTrainingSAEConfig

        sae = MatryoshkaBatchTopKTrainingSAE(MatryoshkaBatchTopKTrainingSAEConfig(
            d_in=train.shape[1], d_sae=D_SAE, k=K, matryoshka_widths=list(WIDTHS)))  # fmt: skip
        _start_from(init, **{key: getattr(sae, key) for key in ("W_enc", "b_enc", "W_dec", "b_dec")})
        seconds, cpu = _saelens_steps(sae, batches, lr, n_steps)
        with (
            torch.no_grad()
        ):  # the training SAE's BatchTopK codes (its threshold needs more steps than these)
            recon = sae.decode(sae.encode(held))
    elif name == "dictlearn_matryoshka":
        from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKTrainer

        sizes = [b - a for a, b in zip((0, *WIDTHS), WIDTHS, strict=False)]
        trainer = MatryoshkaBatchTopKTrainer(steps=n_steps, activation_dim=train.shape[1], dict_size=D_SAE, k=K,
                                             layer=0, lm_name="benchmark", group_fractions=[s / D_SAE for s in sizes],
                                             lr=lr, warmup_steps=1, seed=0, device="cpu")  # fmt: skip
        _start_from(init, **{key: getattr(trainer.ae, key) for key in ("W_enc", "b_enc", "W_dec", "b_dec")})

        seconds, cpu = _timed_steps(lambda i: trainer.update(i, batches[i]), n_steps)
        with torch.no_grad():
            recon = trainer.ae.decode(trainer.ae.encode(held, use_threshold=False))
    elif name == "overcomplete_mpsae":
        import types

        stub = types.ModuleType("torchvision")
        stub.transforms = types.ModuleType("torchvision.transforms")
        sys.modules.update({"torchvision": stub, "torchvision.transforms": stub.transforms})
        from overcomplete.sae import MpSAE

        sae = MpSAE(train.shape[1], D_SAE, k=K)
        opt = torch.optim.Adam(sae.parameters(), lr=lr)

        def step(i):
            _, _, x_hat = sae(batches[i])
            (x_hat - batches[i]).square().sum(-1).mean().backward()
            opt.step()
            opt.zero_grad()

        seconds, cpu = _timed_steps(step, n_steps)
        with torch.no_grad():
            recon = sae(held)[2]
    elif name == "dictlearn_topk":
        from dictionary_learning.trainers.top_k import TopKTrainer

        trainer = TopKTrainer(steps=n_steps, activation_dim=train.shape[1], dict_size=D_SAE, k=K, layer=0,
                              lm_name="benchmark", lr=lr, warmup_steps=1, seed=0, device="cpu")  # fmt: skip
        ae = (
            trainer.ae
        )  # its first update replaces b_dec by the batch's geometric median (said in the output)
        _start_from(
            init, W_enc=ae.encoder.weight, b_enc=ae.encoder.bias, W_dec=ae.decoder.weight, b_dec=ae.b_dec
        )

        seconds, cpu = _timed_steps(lambda i: trainer.update(i, batches[i]), n_steps)
        with torch.no_grad():
            recon = trainer.ae.decode(trainer.ae.encode(held))
    elif name == "dense_topk":  # a plain dense TopK SAE in a few lines, for orientation
        w_enc, w_dec = init["W_enc"].clone().requires_grad_(), init["W_dec"].clone().requires_grad_()
        b_enc, b_dec = init["b_enc"].clone().requires_grad_(), init["b_dec"].clone().requires_grad_()
        opt = torch.optim.Adam([w_enc, w_dec, b_enc, b_dec], lr=lr)

        def forward(x):
            pre = (x - b_dec) @ w_enc + b_enc
            vals, idx = pre.topk(K, dim=1)
            return torch.zeros_like(pre).scatter(1, idx, vals.relu()) @ w_dec + b_dec

        def step(i):
            (forward(batches[i]) - batches[i]).square().sum(-1).mean().backward()
            opt.step()
            opt.zero_grad()

        seconds, cpu = _timed_steps(step, n_steps)
        with torch.no_grad():
            recon = forward(held)
    else:
        raise SystemExit(f"unknown worker {name}")
    rows_per_s, cpu_rows_per_s = (n_steps - 1) * BATCH / seconds, (n_steps - 1) * BATCH / cpu
    fvu = float((held - recon).square().sum() / (held - held.mean(0)).square().sum())
    Path(out_path).write_text(
        json.dumps({"name": name, "rows_per_s": rows_per_s, "cpu_rows_per_s": cpu_rows_per_s, "fvu": fvu})
    )


def planted(n: int, d: int = 640, atoms: int = 4096, active: int = 32, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    dictionary = torch.nn.functional.normalize(torch.randn(atoms, d, generator=gen), dim=1)
    idx = torch.rand(n, atoms, generator=gen).topk(active, dim=1).indices
    codes = torch.zeros(n, atoms).scatter_(1, idx, torch.rand(n, active, generator=gen) + 0.5)
    return codes @ dictionary


def run_all(x: torch.Tensor, title: str, pythons: dict[str, str | None], n_steps: int, slow_steps: int,
            lr: float, rounds: int = 1, families: tuple[str, ...] = ("topk", "mpsae"),
            skip: tuple[str, ...] = ()) -> None:  # fmt: skip
    """Train every method on the same rows, `rounds` times (odd rounds in reverse order), and print one table:
    median rows/s, held-out FVU (first round) and the median over rounds of interp's rows/s over the method's."""
    x = x * (x.shape[1] ** 0.5 / x.norm(dim=1).mean())  # mean norm sqrt(d_in), for every method alike
    held = x[-8192:]
    train = x[:-8192]
    runs: dict[str, list[dict]] = {}
    print(f"\n{title}: train {train.shape[0]:,} rows, held-out {held.shape[0]:,}; d_in {x.shape[1]}, {D_SAE} latents, "
          f"k {K}, batch {BATCH}, lr {lr}, {rounds} round(s)", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        data_path = Path(tmp) / "data.pt"
        torch.save(
            {"train": train.contiguous(), "held": held.contiguous(), "init": shared_init(train)}, data_path
        )
        # each interp run next to its closest peer, so slow drifts of a shared machine hit both alike
        plan = [("sparsify_topk", pythons["sparsify"]), ("interp_topk", sys.executable),
                ("saelens_topk", pythons["saelens"]), ("dictlearn_topk", pythons["dictionary_learning"]),
                ("dense_topk", sys.executable), ("saelens_mpsae", pythons["saelens"]),
                ("interp_mpsae", sys.executable), ("overcomplete_mpsae", pythons["overcomplete"]),
                ("saelens_matryoshka", pythons["saelens"]), ("interp_matryoshka", sys.executable),
                ("dictlearn_matryoshka", pythons["dictionary_learning"])]  # fmt: skip
        plan = [(name, python) for name, python in plan
                if python is not None and name.endswith(families) and name not in skip]  # fmt: skip
        for round_ in range(rounds):
            for name, python in plan if round_ % 2 == 0 else plan[::-1]:
                out = Path(tmp) / f"{name}.json"
                # the two slow MP-SAEs (SAELens ~8 s a step, overcomplete ~45 s on 2 cores) run fewer steps
                steps = slow_steps if name in ("saelens_mpsae", "overcomplete_mpsae") else n_steps
                proc = subprocess.run([python, __file__, "--worker", name, "--data", str(data_path), "--steps",
                                       str(steps), "--lr", str(lr), "--out", str(out)], capture_output=True,
                                      text=True)  # fmt: skip
                if proc.returncode != 0:
                    print(
                        f"{name} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else '?'}"
                    )
                    continue
                row = json.loads(out.read_text())
                row["steps"] = steps
                runs.setdefault(name, []).append(row)
                print(f"  round {round_ + 1}: {name:<20}{row['rows_per_s']:>10,.0f} rows/s "
                      f"{row['cpu_rows_per_s']:>10,.0f} rows/CPU-s  FVU {row['fvu']:.4f}", flush=True)  # fmt: skip
    print(
        "Same init for all (unit W_dec from one seed, W_enc its transpose, b_enc 0, b_dec the train mean) and a "
        "constant learning rate; still different: dictionary-learning re-sets b_dec to the first batch's geometric "
        "median; overcomplete's MP-SAE keeps its own init; "
        "interp's trainer samples its batches from the same rows in its own order."
    )
    print(f"{'method':<22}{'steps':>6}{'rows/s':>10}{'rows/CPU-s':>12}{'held-out FVU':>14}"
          f"{'interp speed / this':>21}{'(CPU time)':>12}")  # fmt: skip
    for family in families:
        names = [name for name in runs if name.endswith(family)]
        ours = runs.get(f"interp_{family}", [])
        for name in names:
            rates = [r["rows_per_s"] for r in runs[name]]
            cpu_rates = [r["cpu_rows_per_s"] for r in runs[name]]
            ratio = cpu_ratio = "-"
            if ours and not name.startswith("interp"):
                pairs = [a["rows_per_s"] / b for a, b in zip(ours, rates, strict=False)]
                ratio = f"{statistics.median(pairs):.2f}x"
                pairs = [a["cpu_rows_per_s"] / b for a, b in zip(ours, cpu_rates, strict=False)]
                cpu_ratio = f"{statistics.median(pairs):.2f}x"
            first = runs[name][0]
            print(f"{name:<22}{first['steps']:>6}{statistics.median(rates):>10,.0f}"
                  f"{statistics.median(cpu_rates):>12,.0f}{first['fvu']:>14.4f}{ratio:>21}{cpu_ratio:>12}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--saelens", default=None, help="python of a venv with sae-lens")
    parser.add_argument("--sparsify", default=None, help="python of a venv with eai-sparsify")
    parser.add_argument("--overcomplete", default=None, help="python of a venv with overcomplete")
    parser.add_argument(
        "--dictionary-learning", default=None, help="python of a venv with dictionary-learning"
    )
    parser.add_argument("--store", type=Path, default=None, help="a store of real activations (d_in 640)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument(
        "--slow-steps", type=int, default=5, help="steps of SAELens' and overcomplete's MP-SAE"
    )
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--skip-planted", action="store_true", help="only the --store run")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every run (alternating order); medians")
    parser.add_argument("--families", default="topk,mpsae", help="comma-separated: topk, mpsae, matryoshka")
    parser.add_argument(
        "--skip", default="", help="comma-separated methods not to run, e.g. saelens_topk,dense_topk"
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        torch.set_num_threads(torch.get_num_threads())
        worker(args.worker, args.data, args.steps, args.lr, args.out)
        return
    pythons = {"saelens": args.saelens, "sparsify": args.sparsify, "overcomplete": args.overcomplete,
               "dictionary_learning": args.dictionary_learning}  # fmt: skip
    families = tuple(args.families.split(","))
    skip = tuple(args.skip.split(","))
    print(f"torch threads: {torch.get_num_threads()}")
    n_rows = args.steps * BATCH + 8192
    if not args.skip_planted:
        run_all(planted(n_rows), "Planted dictionary (4096 unit atoms, 32 active)", pythons, args.steps,
                args.slow_steps, args.lr, args.rounds, families, skip)  # fmt: skip
    if args.store is not None:
        from interp.store import ActivationStore

        store = ActivationStore.open(args.store)
        x = store.load_all()[:n_rows]
        x = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))]
        run_all(x, f"Real activations {store.manifest.model} {store.site}", pythons, args.steps, args.slow_steps,
                args.lr, args.rounds, families, skip)  # fmt: skip


if __name__ == "__main__":
    main()
