"""interp-side variants on a benchmarks/synth.py run folder's data (same scorer as its table):

    python benchmarks/synth_variants.py runs/synth-cpu-long "relu l1 8" "jumprelu" ...   (no names: all)
    python benchmarks/synth_variants.py runs/synth-cpu-long "jumprelu target_l0=6 l0_per_token=1"   (ad hoc)

Each variant: an interp method and its config options, trained at cpu-long's budget (2000 x 512, lr 1e-3,
width 256, k 6) and scored by interp.evaluate.ground_truth on the folder's eval rows."""

import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import synth  # noqa: E402

from interp.decompose import method_class  # noqa: E402
from interp.evaluate.bench import BenchPreset, method_config  # noqa: E402
from interp.evaluate.ground_truth import ground_truth_metrics  # noqa: E402

SMALL = {"encoder_init_scale": 0.1}
VARIANTS = {
    "relu l1 5": ("relu", {"l1_coeff": 5.0, "l1_warmup_steps": 500}),
    "relu l1 5, 0.1 init": ("relu", {"l1_coeff": 5.0, "l1_warmup_steps": 500, **SMALL}),
    "relu l1 8, 0.1 init": ("relu", {"l1_coeff": 8.0, "l1_warmup_steps": 500, **SMALL}),
    "relu l1 5, no resample, constant lr": ("relu", {"l1_coeff": 5.0, "l1_warmup_steps": 500,
                                                     "resample_every": -1, "warmup_steps": 0, "decay_start": 1.0}),
    "jumprelu": ("jumprelu", {"target_l0": 6, "l0_coeff": 1.0}),
    "jumprelu, 0.1 init": ("jumprelu", {"target_l0": 6, "l0_coeff": 1.0, **SMALL}),
    "jumprelu, threshold lr x1": ("jumprelu", {"target_l0": 6, "l0_coeff": 1.0, "threshold_lr_scale": 1.0}),
    "jumprelu, constant lr": ("jumprelu", {"target_l0": 6, "l0_coeff": 1.0, "warmup_steps": 0, "decay_start": 1.0}),
    "jumprelu, 0.1 init, per-token l0": ("jumprelu", {"target_l0": 6, "l0_coeff": 1.0, "l0_per_token": True, **SMALL}),
    **{f"jumprelu, 0.1 init, per-token l0, target {t}": ("jumprelu", {"target_l0": t, "l0_coeff": 1.0,
                                                                     "l0_per_token": True, **SMALL})
       for t in (7, 8)},
    "jumprelu, 0.1 init, per-token l0, coeff 0.2": ("jumprelu", {"target_l0": 6, "l0_coeff": 0.2, "l0_per_token": True,
                                                               **SMALL}),
    **{f"{a}, 0.1 init": (a, SMALL) for a in ("topk", "batchtopk", "matryoshka")},
}  # fmt: skip


def parse_variant(name: str) -> tuple[str, dict]:
    """ "jumprelu target_l0=5.4 l0_per_token=1 encoder_init_scale=0.1" -> ("jumprelu", {...}); values as floats
    (ints when whole; the config's bools accept 0 / 1)."""
    arch, *pairs = name.split()
    opts = {k: float(v) for k, v in (pair.split("=", 1) for pair in pairs)}
    return arch, {k: int(v) if v.is_integer() else v for k, v in opts.items()}


def main(folder: Path, names: list[str]) -> None:
    data = load_file(str(folder / "data.safetensors"))
    for name in names or VARIANTS:
        arch, opts = VARIANTS[name] if name in VARIANTS else parse_variant(name)
        preset = BenchPreset(width=256, k=6, n_steps=2000, batch_size=512, lr=1e-3, seed=0,
                             method_options={arch: opts})  # fmt: skip
        torch.manual_seed(0)
        start = time.perf_counter()
        model = method_class(arch)(method_config(arch, preset, data["train"].shape[1], "cpu"))
        model.fit(data["train"], progress=False)
        m = ground_truth_metrics(model, synth.FileModel(data), data["eval"].shape[0], batch_size=2048)
        print(f"{name}: f1 {m['f1']:.3f} mcc {m['mcc']:.3f} l0 {m['l0']:.1f} ev {m['explained_variance']:.3f} "
              f"dead {m['dead_fraction']:.2f} ({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
