"""Gemma Scope's `params.npz` (JumpReLU): W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec, threshold.
Codes: pre = x W_enc + b_enc (b_dec is not subtracted), f = pre * (pre > threshold). The file holds no metadata:
the model and site come as flags, or from the release's folder names (layer_L/width_W/average_l0_N)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from interp.decompose.formats.imported import FormatError, Imported, check_tensors, fold_b_dec_out_of_input

PARAMS = "params.npz"
KEYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
# the release's kind in its repository name (gemma-scope-2b-pt-res / -mlp / -att) -> site kind; att has no site yet
RELEASE_SITES = {"res": "resid_post", "mlp": "mlp_out", "att": None}


def is_gemma_scope(folder: Path) -> bool:
    return (folder / PARAMS).exists() or folder.name == PARAMS


def read_gemma_scope(path: str | Path, model_name: str = "", site: str | None = None) -> Imported:
    path = Path(path)
    file = path if path.name == PARAMS or path.suffix == ".npz" else path / PARAMS
    if not file.exists():
        raise FormatError(f"no {PARAMS} at {path}")
    try:
        with np.load(file, allow_pickle=False) as npz:
            arrays = {k: torch.from_numpy(np.asarray(npz[k])) for k in npz.files}
    except ValueError as e:
        raise FormatError(
            f"{file} cannot be read without pickle ({e}); interp reads plain arrays only"
        ) from None
    if "W_enc" not in arrays:
        raise FormatError(f"{file} lacks W_enc (has {', '.join(sorted(arrays))}); expected {', '.join(KEYS)}")
    d_in, d_sae = arrays["W_enc"].shape
    tensors = check_tensors(arrays, KEYS, d_in, d_sae, str(file))
    fold_b_dec_out_of_input(tensors)
    layer = re.search(r"layer_(\d+)", str(file.parent))
    release = re.search(r"-(res|mlp|att)\b", str(file.parent))
    kind = RELEASE_SITES[release.group(1)] if release else "resid_post"  # a bare folder: the res releases
    if site is None and layer and kind:
        site = f"{layer.group(1)}.{kind}"
    return Imported("jumprelu", tensors, "gemma_scope", str(file.resolve()),
                    {"file": PARAMS, "d_in": d_in, "d_sae": d_sae}, {}, model_name, "", site)  # fmt: skip
