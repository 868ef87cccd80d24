"""benchmarks/synth.py's file format and its sparsity search; imports only torch and safetensors, so both venvs
(interp's and SAELens') run it.

Matched L0: ReLU (L1) and JumpReLU reach their L0 through a coefficient, on each side its own loss (SAELens'
JumpReLU: its initial threshold, see SIDE_SEARCHED). Per side and
architecture, `fit_searched` trains at the preset's coefficient, then moves it in log space (x `search_factor`
until the target k is bracketed, then bisection in log space between the two bracketing probes) for at most
`search_probes` full trainings, stopping once L0 is within `search_tolerance` of k (relative). The probe whose L0
is nearest k (in |log(L0 / k)|) is the result; every probe is kept in `probes/` (a rerun resumes the search) and
listed in `<side>-<arch>.search.json`.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

SEARCHED = {"relu": "l1_coeff", "jumprelu": "l0_coeff"}
"""Architectures whose L0 is set by a coefficient -> the preset field searched (unless a side overrides it)."""
SIDE_SEARCHED = {"saelens": {"jumprelu": "saelens_init_threshold"}}
"""SAELens' JumpReLU learns its threshold itself (not its log) by Adam at the shared lr, so the threshold moves
~lr per step whatever l0_coefficient is (l0_coefficient 1 to 64 gave the same L0 on the tiny preset): its L0 is
set by where the threshold starts, `jumprelu_init_threshold`, which is searched instead (L0 falls as it grows)."""

Fit = Callable[[str, dict], tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]]
"""(arch, settings) -> (directions [m, d], eval codes [n_eval, m], eval x_hat [n_eval, d], training rows/s)."""


def sparse(codes: torch.Tensor) -> dict[str, torch.Tensor]:
    """Codes `[n, m]` as COO tensors (rows, cols int64; vals float32) plus the shape."""
    rows, cols = codes.nonzero(as_tuple=True)
    return {"rows": rows, "cols": cols, "vals": codes[rows, cols].float(),
            "shape": torch.tensor(list(codes.shape))}  # fmt: skip


def dense(t: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    """Inverse of `sparse` for the keys `prefix.rows` etc."""
    n, m = (int(v) for v in t[f"{prefix}.shape"])
    out = torch.zeros(n, m)
    out[t[f"{prefix}.rows"], t[f"{prefix}.cols"]] = t[f"{prefix}.vals"]
    return out


def save_result(path: Path, directions, codes, x_hat, rows_per_s: float) -> None:
    """One side's fitted dictionary on the eval rows: directions [m, d], codes [n_eval, m], x_hat [n_eval, d]."""
    tensors = {
        "directions": directions.detach().float().cpu().contiguous(),
        "x_hat": x_hat.detach().float().cpu().contiguous(),
        "rows_per_s": torch.tensor(rows_per_s),
    }
    tensors.update({f"codes.{k}": v.cpu().contiguous() for k, v in sparse(codes.detach().cpu()).items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path)


def result_l0(path: Path) -> float:
    """Mean active latents per eval row of a result file."""
    t = load_file(str(path))
    return t["codes.rows"].numel() / int(t["codes.shape"][0])


def miss(l0: float, target: float) -> float:
    """|log(L0 / target)|: how far a probe is from the target (L0 0 counts as 1e-3)."""
    return abs(math.log(max(l0, 1e-3) / target))


def next_coefficient(tried: list[tuple[float, float]], target: float, factor: float) -> float:
    """The next coefficient to try given (coefficient, L0) pairs; L0 is taken to fall as the coefficient grows.
    Bracketed: the geometric mean of the bracket (bisection in log space; interpolating log L0 stalled on ReLU,
    whose L0 falls from 17 to 0.04 between l1 5 and 20)."""
    dense_side = [t for t in tried if t[1] > target]  # too many active: raise the coefficient
    sparse_side = [t for t in tried if t[1] <= target]
    if not sparse_side:
        return max(c for c, _ in dense_side) * factor
    if not dense_side:
        return min(c for c, _ in sparse_side) / factor
    c_lo, c_hi = max(c for c, _ in dense_side), min(c for c, _ in sparse_side)
    return math.sqrt(c_lo * c_hi)


def fit_searched(side: str, arch: str, p: dict, out: Path, fit: Fit) -> None:
    """Write out/<side>-<arch>.safetensors: one fit, or for SEARCHED architectures the probe nearest L0 = k."""
    path = out / f"{side}-{arch}.safetensors"
    if path.exists():
        return
    field = SIDE_SEARCHED.get(side, {}).get(arch, SEARCHED.get(arch))
    if field is None:
        save_result(path, *fit(arch, p))
        return
    target, tried = float(p["k"]), []
    coeff = float(f"{p[field]:.4g}")
    for _ in range(p["search_probes"]):
        probe = out / "probes" / f"{side}-{arch}-{field}={coeff:.4g}.safetensors"
        if not probe.exists():
            save_result(probe, *fit(arch, {**p, field: coeff}))
        tried.append((coeff, result_l0(probe)))
        print(f"{side} {arch}: {field}={coeff:.4g} -> L0 {tried[-1][1]:.2f} (target {target:g})", flush=True)
        if miss(tried[-1][1], target) <= math.log1p(p["search_tolerance"]):
            break
        coeff = float(f"{next_coefficient(tried, target, p['search_factor']):.4g}")
        if any(c == coeff for c, _ in tried):
            break
    best = min(tried, key=lambda t: miss(t[1], target))
    shutil.copyfile(
        out / "probes" / f"{side}-{arch}-{field}={best[0]:.4g}.safetensors", path.with_suffix(".tmp")
    )
    summary = {"field": field, "target_l0": target, "chosen": best[0], "l0": best[1],
               "probes": [{"coefficient": c, "l0": l0} for c, l0 in tried]}  # fmt: skip
    path.with_suffix(".search.json").write_text(json.dumps(summary, indent=1))
    path.with_suffix(".tmp").replace(path)
