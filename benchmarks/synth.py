"""interp vs SAELens on SAELens' own synthetic model (SynthSAEBench): same rows, same steps, same scorer.

    python benchmarks/synth.py --preset cpu --out runs/synth-cpu [--saelens-python /tmp/peers/bin/python]

Runs in interp's venv; the SAELens side runs in another venv as a subprocess of this same file (`_peer` commands,
which import only torch, safetensors and sae_lens). Everything between them goes through safetensors files in
--out:

1. `_peer gen`: SAELens' `SyntheticModel` (Zipf firing, hierarchy with mutually exclusive children scaled by
   their parent, low-rank correlation, linear mean / folded-normal std magnitudes, orthogonalized dictionary)
   writes data.safetensors: train rows [n_train, d], eval rows [n_eval, d] with their true codes (sparse), the
   true features [n_features, d] and each feature's parent (-1: none). The ground truth is SAELens'.
2. `_peer train`: each SAELens architecture is trained by its `SAETrainer` on those train rows (same batches,
   same steps, same lr as interp) and writes saelens-<arch>.safetensors: decoder directions, eval codes, eval
   reconstructions, rows/s. interp's methods are trained here and write interp-<arch>.safetensors alike.
3. Both sides' files are scored by interp's ground-truth metrics (interp.evaluate.ground_truth) and, in
   `_peer score`, by SAELens' own `ClassificationMetricsCalculator` / `mean_correlation_coefficient`, so the two
   scorers can be compared on the same codes.

Finished steps are kept (rerun to resume); a rerun with other settings is refused.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth_search import dense, fit_searched, save_result, sparse  # noqa: E402, F401 (save_result: tests)

PRESETS = {
    "tiny": {"n_features": 256, "d": 32, "n_roots": 4, "branching": 3, "depth": 2, "p_min": 5e-3, "p_max": 0.4,
             "zipf_exponent": 0.5, "correlation_rank": 4, "width": 64, "k": 6, "n_train": 8192, "n_steps": 60,
             "batch_size": 256, "lr": 1e-3, "n_eval": 2048, "l1_coeff": 1.0, "l1_warmup_steps": 10, "l0_coeff": 1.0, "seed": 0,
             "data_seed": 42},
    "cpu": {"n_features": 1024, "d": 64, "n_roots": 8, "branching": 4, "depth": 3, "p_min": 2e-3, "p_max": 0.4,
            "zipf_exponent": 0.5, "correlation_rank": 8, "width": 256, "k": 6, "n_train": 50_000,
            "n_steps": 400, "batch_size": 512, "lr": 1e-3, "n_eval": 10_000, "l1_coeff": 5.0,
            "l1_warmup_steps": 200, "l0_coeff": 1.0, "seed": 0,
             "data_seed": 42},
    "full": {"n_features": 16384, "d": 768, "n_roots": 128, "branching": 4, "depth": 3, "p_min": 5e-4,
             "p_max": 0.4, "zipf_exponent": 0.5, "correlation_rank": 25, "width": 4096, "k": 25,
             "n_train": 2_000_000, "n_steps": 30_000, "batch_size": 1024, "lr": 3e-4, "n_eval": 100_000,
             "l1_coeff": 5.0, "l1_warmup_steps": 1000, "l0_coeff": 1.0, "seed": 0,
             "data_seed": 42},
}  # fmt: skip
SEARCH = {"search_probes": 5, "search_factor": 4.0, "search_tolerance": 0.15,
          "saelens_normalize": "expected_average_only_in",
          "saelens_init_threshold": 0.01, "interp_encoder_init": 0.1}  # fmt: skip
"""Every preset: the L0 search of ReLU / JumpReLU (benchmarks/synth_search.py) and SAELens' input scaling
(expected_average_only_in: rows scaled to mean norm sqrt(d), as interp's normalize=True; `none` to turn off);
interp's ReLU / JumpReLU encoder starts at 0.1 W_dec^T as SAELens' (SAEConfig.encoder_init_scale; 1 for TopK
and the BatchTopK family, where 0.1 scored lower)."""
PRESETS = {name: {**preset, **SEARCH} for name, preset in PRESETS.items()}
PRESETS["cpu-long"] = {
    **PRESETS["cpu"],
    "n_steps": 2000,
    "l1_warmup_steps": 500,
    "saelens_init_threshold": 0.5,
}
"""cpu x 5 steps (~20 min on 2 busy cores); SAELens' JumpReLU search starts where the cpu preset's ended."""
"""Data (interp's SyntheticConfig defaults, which follow SynthSAEBench-16k) and the shared training budget. The
data has its own seed: with one seed for both, torch's global stream gives an SAE initialized by randn([m, d]) the
first m true features as its decoder (interp's SAEs then score MCC ~0.98 before training)."""

ARCHS = {"relu": "standard", "topk": "topk", "batchtopk": "batchtopk", "jumprelu": "jumprelu",
         "matryoshka": "matryoshka_batchtopk", "mpsae": "matching_pursuit"}  # fmt: skip
"""interp method -> SAELens architecture."""

DIFFERENCES = """Still differs between the sides (same rows, batches of the same size, steps, lr and scorers):
- lr schedule: SAELens constant lr, no warm-up; interp 50 warm-up steps and a linear decay to 0 over the last 20%.
- input scaling: both scale rows to mean norm sqrt(d) for training (interp normalize=True; SAELens
  normalize_activations=expected_average_only_in, its estimate from 100 batches), unless saelens_normalize=none.
- ReLU/L1 and JumpReLU: L0 matched per side by a search over the side's own coefficient (l1_coeff: SAELens
  l1_coefficient, sum |f| ||W_dec||; l0_coeff: interp target_l0 = k with its quadratic miss, SAELens its
  `quadratic` L0 loss with target_l0 = k); the probes are printed and in <side>-<arch>.search.json.
- MP-SAE: both k pursuit steps (SAELens max_iterations = k, residual_threshold 0).
- Matryoshka: both prefix widths width/16, /8, /4, /2, 1; SAELens without its matryoshka aux loss.
- initialization and dead-latent handling: each library's own (SAELens decoder norm 0.1, W_enc = W_dec^T;
  interp unit decoder rows, W_enc = 0.1 W_dec^T for ReLU / JumpReLU, W_dec^T otherwise; interp AuxK)."""


# ------------------------------------------------------------------------------------------ shared helpers
def batches(x: torch.Tensor, batch_size: int, seed: int):
    """Endless shuffled batches of the rows of `x` (epochs over them)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        for idx in torch.randperm(x.shape[0], generator=gen).split(batch_size):
            if idx.numel() == batch_size:
                yield x[idx]


# ------------------------------------------------------------------------------------------ SAELens side
def peer_model(p: dict):
    from sae_lens.synthetic import (
        FoldedNormalMagnitudeConfig,
        HierarchyConfig,
        LinearMagnitudeConfig,
        ZipfianFiringProbabilityConfig,  # fmt: skip
    )
    from sae_lens.synthetic.synthetic_model import (
        LowRankCorrelationConfig,
        OrthogonalizationConfig,
        SyntheticModel,  # fmt: skip
        SyntheticModelConfig,
    )

    cfg = SyntheticModelConfig(
        num_features=p["n_features"], hidden_dim=p["d"],
        firing_probability=ZipfianFiringProbabilityConfig(exponent=p["zipf_exponent"], max_prob=p["p_max"],
                                                          min_prob=p["p_min"]),
        hierarchy=HierarchyConfig(total_root_nodes=p["n_roots"], branching_factor=p["branching"],
                                  max_depth=p["depth"], mutually_exclusive_portion=1.0,
                                  compensate_probabilities=True, scale_children_by_parent=True),
        orthogonalization=OrthogonalizationConfig(),
        correlation=LowRankCorrelationConfig(rank=p["correlation_rank"], correlation_scale=0.1),
        mean_firing_magnitudes=LinearMagnitudeConfig(start=5.0, end=4.0),
        std_firing_magnitudes=FoldedNormalMagnitudeConfig(mean=0.5, std=0.5),
        bias=0.5, seed=p["data_seed"],
    )  # fmt: skip
    return SyntheticModel(cfg, device=p["device"])


def peer_gen(p: dict, out: Path) -> None:
    torch.manual_seed(p["data_seed"])
    model = peer_model(p)
    parent = torch.full((p["n_features"],), -1, dtype=torch.long)
    stack = list(model.hierarchy.roots) if model.hierarchy else []
    while stack:
        node = stack.pop()
        for child in node.children:
            if node.feature_index is not None and child.feature_index is not None:
                parent[child.feature_index] = node.feature_index
            stack.append(child)
    train = torch.cat([model.sample(min(8192, p["n_train"] - s)).cpu() for s in range(0, p["n_train"], 8192)])
    xs, codes = zip(*(model.sample_with_features(min(8192, p["n_eval"] - s))
                      for s in range(0, p["n_eval"], 8192)), strict=True)  # fmt: skip
    tensors = {
        "train": train.float(),
        "eval": torch.cat(xs).cpu().float(),
        "parent": parent,
        "features": model.feature_dict.feature_vectors.detach().cpu().float().contiguous(),
    }
    tensors.update({f"true.{k}": v for k, v in sparse(torch.cat(codes).cpu()).items()})
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "data.safetensors"))


def peer_sae_config(arch: str, p: dict):
    from sae_lens.registry import get_sae_training_class

    w, k = p["width"], p["k"]
    own = {"standard": {"l1_coefficient": p["l1_coeff"], "l1_warm_up_steps": p["l1_warmup_steps"]},
           "topk": {"k": k}, "batchtopk": {"k": k},
           "jumprelu": {"jumprelu_sparsity_loss_mode": "quadratic", "target_l0": k, "l0_coefficient": p["l0_coeff"],
                        "jumprelu_init_threshold": p["saelens_init_threshold"]},
           "matryoshka_batchtopk": {"k": k, "matryoshka_widths": [w >> s for s in (4, 3, 2, 1, 0) if w >> s]},
           "matching_pursuit": {"max_iterations": k, "residual_threshold": 0.0}}[arch]  # fmt: skip
    config_class = get_sae_training_class(arch)[1]
    cfg = config_class(
        d_in=p["d"], d_sae=w, device=p["device"], normalize_activations=p["saelens_normalize"], **own
    )
    return get_sae_training_class(arch)[0](cfg)


def eval_codes(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes [n, width], reconstruction [n, d]) of eval rows x [n, d], in chunks of 4096; any model with
    encode / decode (SAELens' or interp's)."""
    with torch.no_grad():
        codes = torch.cat([model.encode(c) for c in x.split(4096)])
        return codes, torch.cat([model.decode(c) for c in codes.split(4096)])


def peer_fit(arch: str, p: dict, data: dict[str, torch.Tensor]):
    """One SAELens architecture trained by its SAETrainer: (directions, eval codes, eval x_hat, rows/s)."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(p["seed"])
    sae = peer_sae_config(ARCHS[arch], p)
    cfg = SAETrainerConfig(
        n_checkpoints=0, checkpoint_path=None, save_final_checkpoint=False,
        total_training_samples=p["n_steps"] * p["batch_size"], device=p["device"], autocast=False,
        lr=p["lr"], lr_end=p["lr"], lr_scheduler_name="constant", lr_warm_up_steps=0, adam_beta1=0.9,
        adam_beta2=0.999, lr_decay_steps=0, n_restart_cycles=1, train_batch_size_samples=p["batch_size"],
        dead_feature_window=1000, feature_sampling_window=2000,
        logger=LoggingConfig(log_to_wandb=False, eval_every_n_wandb_logs=2**31 - 1),
        n_batches_for_norm_estimate=100,
    )  # fmt: skip
    rows = (b.to(p["device"]) for b in batches(data["train"], p["batch_size"], p["seed"]))
    start = time.perf_counter()
    sae = SAETrainer(cfg=cfg, sae=sae, data_provider=rows, save_checkpoint_fn=lambda *a, **k: None).fit()
    rate = p["n_steps"] * p["batch_size"] / (time.perf_counter() - start)
    sae.eval()
    codes, x_hat = eval_codes(sae, data["eval"].to(p["device"]))
    print(f"saelens {arch}: {rate:.0f} rows/s", flush=True)
    return sae.W_dec, codes, x_hat, rate


def peer_train(p: dict, out: Path, archs: list[str]) -> None:
    data = load_file(str(out / "data.safetensors"))
    for arch in archs:
        fit_searched("saelens", arch, p, out, lambda a, q: peer_fit(a, q, data))


def peer_score(p: dict, out: Path) -> None:
    """SAELens' own evaluator on every result file (its F1 / MCC on the same codes)."""
    from sae_lens.synthetic.evals import (
        ClassificationMetricsCalculator,
        feature_uniqueness,
        mean_correlation_coefficient,  # fmt: skip
    )

    data = load_file(str(out / "data.safetensors"))
    true = dense(data, "true")
    scores = {}
    for path in sorted(out.glob("*-*.safetensors")):  # the results, not probes/
        t = load_file(str(path))
        calc = ClassificationMetricsCalculator(t["directions"], data["features"])
        calc.add_batch(dense(t, "codes"), true)
        m = calc.compute()
        scores[path.stem] = {"f1": m.f1_score, "precision": m.precision, "recall": m.recall,
                             "mcc": mean_correlation_coefficient(t["directions"], data["features"]),
                             "uniqueness": feature_uniqueness(t["directions"], data["features"])}  # fmt: skip
    (out / "saelens_scores.json").write_text(json.dumps(scores, indent=1))


PEER = {"gen": lambda p, out, archs: peer_gen(p, out), "train": peer_train,
        "score": lambda p, out, archs: peer_score(p, out)}  # fmt: skip


# ------------------------------------------------------------------------------------------ interp side
class FileModel:
    """The eval rows of data.safetensors in the shape interp's `ground_truth_metrics` reads a SyntheticModel:
    `sample(n, cursor)` returns the next n (rows [n, d], true codes [n, n_features]) in file order."""

    def __init__(self, data: dict[str, torch.Tensor]):
        self.device = torch.device("cpu")
        self.features, self.x, self.true = data["features"], data["eval"], dense(data, "true")
        self.parent = data["parent"]
        self.config = argparse.Namespace(d=self.x.shape[1])
        self.is_child = self.parent >= 0
        self.is_parent = torch.zeros_like(self.is_child)
        self.is_parent[self.parent[self.is_child].unique()] = True

    def generator(self, seed: int) -> list[int]:
        return [0]

    def sample(self, n: int, cursor: list[int]):
        s = cursor[0]
        cursor[0] += n
        return self.x[s : s + n], self.true[s : s + n]


class Precomputed:
    """A result file as a decomposer over the eval rows in order (encode, then decode of the same rows)."""

    def __init__(self, t: dict[str, torch.Tensor]):
        self.directions, self.codes, self.x_hat, self.at = t["directions"], dense(t, "codes"), t["x_hat"], 0

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self.at += x.shape[0]
        return self.codes[self.at - x.shape[0] : self.at]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.x_hat[self.at - codes.shape[0] : self.at]


def interp_fit(arch: str, p: dict, data: dict[str, torch.Tensor]):
    """One interp method trained by its own fit: (directions, eval codes, eval x_hat, rows/s)."""
    from interp.decompose import method_class
    from interp.evaluate.bench import BenchPreset, method_config

    init = {"encoder_init_scale": p["interp_encoder_init"]}
    options = {"relu": {"l1_coeff": p["l1_coeff"], "l1_warmup_steps": p["l1_warmup_steps"], **init},
               "jumprelu": {"target_l0": p["k"], "l0_coeff": p["l0_coeff"], **init}, "mpsae": {"lr": p["lr"]}}  # fmt: skip
    preset = BenchPreset(width=p["width"], k=p["k"], n_steps=p["n_steps"], batch_size=p["batch_size"],
                         lr=p["lr"], seed=p["seed"], method_options=options)  # fmt: skip
    torch.manual_seed(p["seed"])
    config = method_config(arch, preset, p["d"], p["device"])
    start = time.perf_counter()
    model = method_class(arch)(config).fit(data["train"].to(p["device"]), progress=True)
    rate = p["n_steps"] * p["batch_size"] / (time.perf_counter() - start)
    codes, x_hat = eval_codes(model, data["eval"].to(p["device"]))
    print(f"interp {arch}: {rate:.0f} rows/s", flush=True)
    return model.directions, codes, x_hat, rate


def interp_train(p: dict, out: Path, archs: list[str]) -> None:
    data = load_file(str(out / "data.safetensors"))
    for arch in archs:
        fit_searched("interp", arch, p, out, lambda a, q: interp_fit(a, q, data))


def interp_score(out: Path, archs: list[str]) -> list[dict]:
    from interp.evaluate.ground_truth import ground_truth_metrics

    data = load_file(str(out / "data.safetensors"))
    model, theirs = FileModel(data), json.loads((out / "saelens_scores.json").read_text())
    rows = []
    for arch in archs:
        for side in ("interp", "saelens"):
            t = load_file(str(out / f"{side}-{arch}.safetensors"))
            m = ground_truth_metrics(Precomputed(t), model, model.x.shape[0], batch_size=2048)
            rows.append(
                {
                    "arch": arch,
                    "side": side,
                    **m,
                    "saelens_f1": theirs[f"{side}-{arch}"]["f1"],
                    "saelens_mcc": theirs[f"{side}-{arch}"]["mcc"],
                    "rows_per_s": float(t["rows_per_s"]),
                }
            )
    return rows


COLUMNS = [("arch", "{}"), ("side", "{}"), ("f1", "{:.3f}"), ("saelens_f1", "{:.3f}"), ("mcc", "{:.3f}"),
           ("saelens_mcc", "{:.3f}"), ("l0", "{:.1f}"), ("explained_variance", "{:.3f}"),
           ("dead_fraction", "{:.2f}"), ("parent_f1", "{:.3f}"), ("child_f1", "{:.3f}"), ("rows_per_s", "{:.0f}")]  # fmt: skip


def table(rows: list[dict]) -> str:
    head = "| " + " | ".join(name for name, _ in COLUMNS) + " |"
    lines = [head, "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(f.format(r[n]) if n in r else "" for n, f in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if argv and argv[0] == "_peer":  # the SAELens side, in its own venv
        cmd, out, settings = argv[1], Path(argv[2]), json.loads(argv[3])
        PEER[cmd](settings, out, argv[4].split(",") if len(argv) > 4 else [])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--out", type=Path, required=True, help="run folder (rerun the same command to resume)")
    ap.add_argument(
        "--saelens-python", default="/tmp/peers/bin/python", help="python of a venv with sae-lens"
    )
    ap.add_argument("--archs", default=",".join(ARCHS), help=f"comma-separated, of {', '.join(ARCHS)}")
    ap.add_argument("--device", default=None, help="cpu | cuda (default: cuda for --preset full, else cpu)")
    ap.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="override a preset field"
    )
    args = ap.parse_args(argv)
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    if bad := [a for a in archs if a not in ARCHS]:
        sys.exit(f"unknown architecture(s) {bad}; valid: {', '.join(ARCHS)}")
    if not Path(args.saelens_python).exists():
        sys.exit(
            f"{args.saelens_python} not found; pass --saelens-python PATH (a python with sae-lens installed)"
        )
    overrides = dict(item.partition("=")[::2] for item in args.set)
    if bad := sorted(set(overrides) - set(PRESETS[args.preset])):
        sys.exit(f"--set {bad}: no such preset field; valid: {', '.join(PRESETS[args.preset])}")
    preset = {k: type(v)(overrides[k]) if k in overrides else v for k, v in PRESETS[args.preset].items()}
    settings = {**preset, "device": args.device or ("cuda" if args.preset == "full" else "cpu")}
    args.out.mkdir(parents=True, exist_ok=True)
    saved = args.out / "settings.json"
    if saved.exists() and (old := json.loads(saved.read_text())) != settings:
        changed = [f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in sorted(set(old) | set(settings))
                   if old.get(k) != settings.get(k)]  # fmt: skip
        sys.exit(f"{args.out} was run with other settings ({'; '.join(changed)}); use another --out")
    saved.write_text(json.dumps(settings, indent=1))

    def peer(cmd: str) -> None:
        subprocess.run([args.saelens_python, __file__, "_peer", cmd, str(args.out), json.dumps(settings),
                        ",".join(archs)], check=True)  # fmt: skip

    if not (args.out / "data.safetensors").exists():
        peer("gen")
    peer("train")
    interp_train(settings, args.out, archs)
    peer("score")
    rows = interp_score(args.out, archs)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    print(table(rows))
    for path in sorted(args.out.glob("*.search.json")):
        found = json.loads(path.read_text())
        probes = ", ".join(f"{q['coefficient']:.4g} -> {q['l0']:.1f}" for q in found["probes"])
        print(f"L0 search {path.name.split('.')[0]}: {found['field']} {probes}; chose {found['chosen']:.4g}")
    print("f1 / mcc: interp's scorer; saelens_f1 / saelens_mcc: SAELens' evaluator on the same codes.")
    print(DIFFERENCES)


if __name__ == "__main__":
    main(sys.argv[1:])
