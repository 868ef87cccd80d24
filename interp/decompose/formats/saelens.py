"""Files a SAELens user can open: `cfg.json` + `sae_weights.safetensors` beside interp's own files.

SAELens' architecture names: ReLU -> "standard", TopK -> "topk", JumpReLU -> "jumprelu"; a BatchTopK SAE is saved
as "jumprelu" with its single inference threshold repeated per latent (how SAELens itself exports BatchTopK SAEs
for inference); an MP-SAE as "matching_pursuit" (tied: W_dec and b_dec only). Weights use SAELens' names and shapes; the activation scale is already folded in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from interp.core.io import atomic_save_safetensors, atomic_write_json

SAELENS_ARCHITECTURE = {
    "relu": "standard",
    "topk": "topk",
    "jumprelu": "jumprelu",
    "batchtopk": "jumprelu",
    "mpsae": "matching_pursuit",
}


def _nothing(config: Any) -> dict:
    return {}


# architecture -> the cfg.json fields only it has. SAELens' MP-SAE: tied W_dec, stops after max_iterations or
# below the residual threshold.
SAELENS_EXTRA_CONFIG = {
    "topk": lambda config: {"k": config.k},
    "mpsae": lambda config: {
        "max_iterations": config.inference_steps or config.k,
        "residual_threshold": config.residual_threshold,
        "stop_on_duplicate_support": False,
    },
}
SAELENS_WEIGHTS = "sae_weights.safetensors"
SAELENS_CONFIG = "cfg.json"


def saelens_config(
    architecture: str, d_in: int, config: Any, model_name: str = "", hook_name: str = ""
) -> dict:
    cfg = {
        "architecture": SAELENS_ARCHITECTURE[architecture],
        "d_in": d_in,
        "d_sae": config.n_features,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"model_name": model_name, "hook_name": hook_name, "interp_architecture": architecture},
    }
    cfg.update(SAELENS_EXTRA_CONFIG.get(architecture, _nothing)(config))
    return cfg


def write_saelens_files(
    folder: str | Path, architecture: str, tensors: dict[str, torch.Tensor], d_in: int, config: Any,
    model_name: str = "", hook_name: str = "",
) -> None:  # fmt: skip
    folder = Path(folder)
    atomic_save_safetensors(tensors, folder / SAELENS_WEIGHTS)
    atomic_write_json(
        folder / SAELENS_CONFIG, saelens_config(architecture, d_in, config, model_name, hook_name)
    )


def record_saelens_source(folder: str | Path, model_name: str, hook_name: str) -> None:
    """Fill `model_name` and `hook_name` of the folder's SAELens cfg.json (when it has one), so SAELens knows where
    the SAE reads (the model as the store recorded it, the site's TransformerLens hook)."""
    path = Path(folder) / SAELENS_CONFIG
    if not path.exists():
        return
    cfg = json.loads(path.read_text())
    cfg.setdefault("metadata", {}).update({"model_name": model_name, "hook_name": hook_name})
    atomic_write_json(path, cfg)
