"""EleutherAI sparsify's folders: one per hookpoint, `cfg.json` (SparseCoderConfig + d_in) + `sae.safetensors`
(encoder.weight [d_sae, d_in], encoder.bias, W_dec [d_sae, d_in], b_dec, W_skip [d_in, d_in] with a skip).

    SAE:        codes = TopK(ReLU((x - b_dec) W^T + b)),  x_hat = codes W_dec + b_dec       (x: the module's output)
    transcoder: codes = TopK(ReLU(x W^T + b)),            y_hat = codes W_dec + b_dec (+ x W_skip^T)
                x: the hookpoint module's input, y: its output (sparsify's `transcode`, `skip_connection`)
"""

from __future__ import annotations

import re
from pathlib import Path

from safetensors.torch import load_file

from interp.decompose.formats.imported import FormatError, Imported, check_tensors, read_json
from interp.decompose.formats.saelens import site_name

CONFIG, WEIGHTS = "cfg.json", "sae.safetensors"
UNSUPPORTED = {"multi_topk": "Multi-TopK decoding"}
MLP_HOOKPOINT = r"(?:model\.|transformer\.)?(?:layers|h)\.(\d+)\.mlp"  # group 1 is the layer
# a transcoder's hookpoint module -> (site kind of its input, of its output); group 1 is the layer
TRANSCODER_HOOKPOINTS: dict[str, tuple[str, str]] = {
    MLP_HOOKPOINT: ("mlp_in", "mlp_out"),
    r"(?:model\.|transformer\.)?(?:layers|h)\.(\d+)": ("resid_pre", "resid_post"),
}
POST_MLP_NORM_MODELS = re.compile(r"gemma[-_ ]?[23]", re.IGNORECASE)
"""Models whose MLP module output is normed again (post_feedforward_layernorm) before it joins the residual."""


def is_sparsify(folder: Path) -> bool:
    return (folder / CONFIG).exists() and (folder / WEIGHTS).exists()


def read_sparsify(folder: str | Path, model_name: str = "") -> Imported:
    """One hookpoint folder; `model_name` (when known) refuses an MLP hookpoint of Gemma 2 / 3."""
    folder = Path(folder)
    if not is_sparsify(folder):
        hookpoints = sorted(p.name for p in folder.iterdir() if is_sparsify(p)) if folder.is_dir() else []
        hint = f"; pick one hookpoint folder: {', '.join(hookpoints)}" if hookpoints else ""
        raise FormatError(f"no {CONFIG} + {WEIGHTS} in {folder}{hint}")
    cfg = read_json(folder / CONFIG, "sparsify")
    _check_config(cfg)
    hook = folder.name  # sparsify names each folder after its hookpoint
    _check_model(hook, model_name)
    raw = load_file(str(folder / WEIGHTS))
    if "encoder.weight" not in raw:
        raise FormatError(f"{folder / WEIGHTS} lacks encoder.weight (has {', '.join(sorted(raw))})")
    d_sae, d_in = raw["encoder.weight"].shape
    if "d_in" in cfg and int(cfg["d_in"]) != d_in:
        raise FormatError(f"{folder}: cfg.json says d_in={cfg['d_in']} but the encoder is {d_in} wide")
    renamed = {"W_enc": raw["encoder.weight"].T, "b_enc": raw.get("encoder.bias"), "W_dec": raw.get("W_dec"),
               "b_dec": raw.get("b_dec"), "W_skip": raw.get("W_skip")}  # fmt: skip
    renamed = {k: v for k, v in renamed.items() if v is not None}
    names = ("W_enc", "b_enc", "W_dec", "b_dec") + (("W_skip",) if cfg.get("skip_connection") else ())
    tensors = check_tensors(renamed, names, d_in, d_sae, str(folder / WEIGHTS))
    if not cfg.get("transcode"):
        return Imported("topk", tensors, "sparsify", str(folder.resolve()), cfg, {"k": int(cfg["k"])},
                        model_name, hook, site_name(hook))  # fmt: skip
    site, target = transcoder_sites(hook)
    options = {"k": int(cfg["k"]), "activation": "topk", "d_target": d_in, "target_site": target or ""}
    architecture = "skip_transcoder" if cfg.get("skip_connection") else "transcoder"
    return Imported(
        architecture, tensors, "sparsify", str(folder.resolve()), cfg, options, model_name, hook, site
    )


def _check_config(cfg: dict) -> None:
    if cfg.get("activation", "topk") != "topk":
        raise FormatError(f"sparsify activation {cfg['activation']!r} is not supported; interp reads topk")
    for key, what in UNSUPPORTED.items():
        if cfg.get(key):
            raise FormatError(
                f"this sparsify dictionary uses {what} ({key}=true), which interp does not import yet"
            )
    if cfg.get("skip_connection") and not cfg.get("transcode"):
        raise FormatError(
            "this sparsify dictionary is an autoencoder with a skip connection (skip_connection=true, "
            "transcode=false), which interp does not import; interp reads skip connections of transcoders"
        )


def _check_model(hook: str, model_name: str) -> None:
    """Gemma 2 / 3 norm the MLP module's output (post_feedforward_layernorm) before the residual add: sparsify's
    `layers.L.mlp` output is that un-normed value, which is no interp site (L.mlp_out is after the norm)."""
    if model_name and POST_MLP_NORM_MODELS.search(model_name) and re.fullmatch(MLP_HOOKPOINT, hook):
        raise FormatError(
            f"sparsify hookpoint {hook!r} of {model_name}: Gemma 2 / 3 take the MLP module's output before "
            "post_feedforward_layernorm, which is not an interp site (L.mlp_out is after that norm), so interp "
            "cannot read or predict it; use a dictionary trained on a site interp has (layers.L: resid_post)"
        )


def transcoder_sites(hook: str) -> tuple[str | None, str | None]:
    """(input site, target site) of a sparsify transcoder trained on hookpoint `hook` (its module's input and
    output), or (None, None) for a module interp has no sites around."""
    for pattern, (kind_in, kind_out) in TRANSCODER_HOOKPOINTS.items():
        match = re.fullmatch(pattern, hook.strip())
        if match:
            layer = match.group(1)
            return f"{layer}.{kind_in}", f"{layer}.{kind_out}"
    return None, None
