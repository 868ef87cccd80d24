"""SAELens' files: written beside interp's own (`cfg.json` + `sae_weights.safetensors`), and read back
(`read_saelens`: standard, topk, jumprelu, matching_pursuit, gated, the four transcoders; BatchTopK and Matryoshka as SAELens saves them).

SAELens' architecture names: ReLU -> "standard", TopK -> "topk", JumpReLU -> "jumprelu"; a BatchTopK SAE is saved
as "jumprelu" with its single inference threshold repeated per latent (how SAELens itself exports BatchTopK SAEs
for inference); an MP-SAE as "matching_pursuit" (tied: W_dec and b_dec only). Weights use SAELens' names and shapes; the activation scale is already folded in.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from interp.core.io import atomic_save_safetensors, atomic_write_json
from interp.decompose.formats.imported import (
    FormatError,
    Imported,
    check_tensors,
    fold_b_dec_out_of_input,
    fold_decoder_norm,
    read_json,
)
from interp.models.sites import SiteError, site_of_hook

SAELENS_ARCHITECTURE = {
    "relu": "standard",
    "topk": "topk",
    "jumprelu": "jumprelu",
    "batchtopk": "jumprelu",
    "matryoshka": "jumprelu",
    "mpsae": "matching_pursuit",
    "gated": "gated",
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


# ------------------------------------------------------------------------------------------------------ reading
SAELENS_MAJOR_VERSIONS = range(1, 7)  # cfg.json layouts understood: SAELens 1.x-6.x


def _standard(cfg: dict, t: dict) -> tuple[str, dict]:
    return "relu", {}


def _topk(cfg: dict, t: dict) -> tuple[str, dict]:
    if cfg.get("rescale_acts_by_decoder_norm"):
        fold_decoder_norm(t)
    return "topk", {"k": int(cfg["k"])}


def _jumprelu(cfg: dict, t: dict) -> tuple[str, dict]:
    """JumpReLU; a BatchTopK or Matryoshka SAE saved as JumpReLU (one threshold for all latents) comes back as
    what it was trained as, so its inference (one batch threshold) and Matryoshka widths are kept."""
    meta = cfg.get("metadata") or {}
    trained_as = meta.get("training_architecture")
    details = meta.get("training_architecture_details") or {}
    one_threshold = bool((t["threshold"] == t["threshold"][0]).all())
    if one_threshold and trained_as == "matryoshka_batchtopk" and details.get("matryoshka_widths"):
        return "matryoshka", {"k": max(1, round(details.get("k", 1))),
                              "matryoshka_widths": tuple(details["matryoshka_widths"])}  # fmt: skip
    if one_threshold and trained_as == "batchtopk":
        return "batchtopk", {"k": max(1, round(details.get("k", 1)))}
    return "jumprelu", {}


def _gated(cfg: dict, t: dict) -> tuple[str, dict]:
    """Gated: b_gate was read as b_enc; without b_dec subtracted, the magnitude bias takes b_dec W_enc exp(r_mag)."""
    if not cfg.get("apply_b_dec_to_input", True):
        t["b_mag"] = t["b_mag"] + (t["b_dec"] @ t["W_enc"]) * t["r_mag"].exp()
    return "gated", {}


def _transcoder(cfg: dict, t: dict) -> tuple[str, dict]:
    """SAELens' (skip / JumpReLU) transcoders: ReLU or JumpReLU codes of the input, decoded into the target."""
    architecture = cfg["architecture"]
    meta = cfg.get("metadata") or {}
    return ("skip_transcoder" if "W_skip" in t else "transcoder"), {
        "activation": "jumprelu" if architecture.startswith("jumprelu") else "relu",
        "d_target": int(t["W_dec"].shape[1]),
        "target_site": site_name(meta.get("hook_name_out") or "") or "",
    }


def _matching_pursuit(cfg: dict, t: dict) -> tuple[str, dict]:
    if cfg.get("stop_on_duplicate_support", True):
        raise FormatError(
            "this SAELens matching-pursuit SAE stops on a repeated support (stop_on_duplicate_support=true), "
            "which interp's pursuit does not do; set it to false in cfg.json to import it with a fixed step count"
        )
    steps = int(cfg.get("max_iterations") or cfg["d_in"])
    return "mpsae", {"k": steps, "inference_steps": steps,
                     "residual_threshold": float(cfg.get("residual_threshold", 0.0))}  # fmt: skip


# SAELens architecture -> (tensors it saves, reader: (cfg, float32 tensors) -> (interp method, config options))
READERS: dict[str, tuple[tuple[str, ...], Callable[[dict, dict], tuple[str, dict]]]] = {
    "standard": (("W_enc", "b_enc", "W_dec", "b_dec"), _standard),
    "topk": (("W_enc", "b_enc", "W_dec", "b_dec"), _topk),
    "jumprelu": (("W_enc", "b_enc", "W_dec", "b_dec", "threshold"), _jumprelu),
    "matching_pursuit": (("W_dec", "b_dec"), _matching_pursuit),
    "gated": (("W_enc", "b_enc", "r_mag", "b_mag", "W_dec", "b_dec"), _gated),
    "transcoder": (("W_enc", "b_enc", "W_dec", "b_dec"), _transcoder),
    "skip_transcoder": (("W_enc", "b_enc", "W_dec", "b_dec", "W_skip"), _transcoder),
    "jumprelu_transcoder": (("W_enc", "b_enc", "W_dec", "b_dec", "threshold"), _transcoder),
    "jumprelu_skip_transcoder": (("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "W_skip"), _transcoder),
}
TRANSCODERS = ("transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder")
"""Their b_dec is the output's bias, never subtracted from the input (SAELens refuses apply_b_dec_to_input)."""
NORMALIZATIONS_READ = ("none", "expected_average_only_in")  # the latter is the identity at SAELens' inference


def _check_saelens_config(cfg: dict, folder: Path) -> None:
    version = str((cfg.get("metadata") or {}).get("sae_lens_version") or cfg.get("sae_lens_version") or "")
    major = version.split(".")[0]
    if major.isdigit() and int(major) not in SAELENS_MAJOR_VERSIONS:
        raise FormatError(
            f"{folder} was written by sae-lens {version}; interp reads the cfg.json of sae-lens "
            f"{SAELENS_MAJOR_VERSIONS[0]}.x-{SAELENS_MAJOR_VERSIONS[-1]}.x: save it with one of those"
        )
    architecture = cfg.get("architecture", "standard")
    if architecture not in READERS:
        raise FormatError(
            f"SAELens architecture {architecture!r} is not supported; interp reads {', '.join(READERS)} "
            "(SAELens saves batchtopk and matryoshka_batchtopk SAEs as jumprelu)"
        )
    norm = cfg.get("normalize_activations") or "none"
    if norm not in NORMALIZATIONS_READ:
        raise FormatError(
            f"normalize_activations={norm!r} rescales each token before encoding, which interp's linear "
            f"encode cannot hold; interp reads {', '.join(NORMALIZATIONS_READ)} (fold the scaling first)"
        )
    if cfg.get("reshape_activations", "none") != "none":
        raise FormatError(
            f"reshape_activations={cfg['reshape_activations']!r} (attention heads) is not supported"
        )


def read_saelens(folder: str | Path) -> Imported:
    """A folder written by SAELens' `save_model` / `save_inference_model` (cfg.json + sae_weights.safetensors)."""
    folder = Path(folder)
    for name in (SAELENS_CONFIG, SAELENS_WEIGHTS):
        if not (folder / name).exists():
            raise FormatError(
                f"no {name} in {folder}: a SAELens folder holds {SAELENS_CONFIG} and {SAELENS_WEIGHTS}"
            )
    cfg = read_json(folder / SAELENS_CONFIG, "SAELens")
    _check_saelens_config(cfg, folder)
    names, reader = READERS[cfg.get("architecture", "standard")]
    raw = load_file(str(folder / SAELENS_WEIGHTS))
    if "b_gate" in raw:  # gated: the gate bias is interp's b_enc
        raw["b_enc"] = raw.pop("b_gate")
    try:
        d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    except KeyError as e:
        raise FormatError(f"{folder / SAELENS_CONFIG} lacks {e}; is it a SAELens cfg.json?") from None
    transcoder = cfg.get("architecture") in TRANSCODERS
    d_out = int(cfg.get("d_out") or d_in) if transcoder else None
    tensors = check_tensors(raw, names, d_in, d_sae, f"{folder / SAELENS_WEIGHTS}", d_out)
    if not cfg.get("apply_b_dec_to_input", True) and not transcoder:
        if "W_enc" in tensors:
            fold_b_dec_out_of_input(tensors)
        else:  # tied (matching pursuit): b_dec neither subtracted nor added back
            tensors["b_dec"] = torch.zeros_like(tensors["b_dec"])
    architecture, options = reader(cfg, tensors)
    meta = cfg.get("metadata") or cfg
    hook = meta.get("hook_name") or ""
    return Imported(architecture, tensors, "saelens", str(folder.resolve()), cfg, options,
                    meta.get("model_name") or "", hook, site_name(hook))  # fmt: skip


def site_name(hook: str) -> str | None:
    """The interp site of a hook name, or None when it maps to none."""
    try:
        return site_of_hook(hook).name if hook else None
    except SiteError:
        return None


def record_saelens_source(folder: str | Path, model_name: str, hook_name: str) -> None:
    """Fill `model_name` and `hook_name` of the folder's SAELens cfg.json (when it has one), so SAELens knows where
    the SAE reads (the model as the store recorded it, the site's TransformerLens hook)."""
    path = Path(folder) / SAELENS_CONFIG
    if not path.exists():
        return
    cfg = json.loads(path.read_text())
    cfg.setdefault("metadata", {}).update({"model_name": model_name, "hook_name": hook_name})
    atomic_write_json(path, cfg)
