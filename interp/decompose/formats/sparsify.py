"""EleutherAI sparsify's folders: one per hookpoint, `cfg.json` (SparseCoderConfig + d_in) + `sae.safetensors`
(encoder.weight [d_sae, d_in], encoder.bias, W_dec [d_sae, d_in], b_dec). Codes: TopK of ReLU((x - b_dec) W^T + b)."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file

from interp.decompose.formats.imported import FormatError, Imported, check_tensors, read_json
from interp.decompose.formats.saelens import site_name

CONFIG, WEIGHTS = "cfg.json", "sae.safetensors"
UNSUPPORTED = {
    "transcode": "a transcoder (reads one site, writes another)",
    "skip_connection": "a skip connection (W_skip)",
    "multi_topk": "Multi-TopK decoding",
}


def is_sparsify(folder: Path) -> bool:
    return (folder / CONFIG).exists() and (folder / WEIGHTS).exists()


def read_sparsify(folder: str | Path) -> Imported:
    folder = Path(folder)
    if not is_sparsify(folder):
        hookpoints = sorted(p.name for p in folder.iterdir() if is_sparsify(p)) if folder.is_dir() else []
        hint = f"; pick one hookpoint folder: {', '.join(hookpoints)}" if hookpoints else ""
        raise FormatError(f"no {CONFIG} + {WEIGHTS} in {folder}{hint}")
    cfg = read_json(folder / CONFIG, "sparsify")
    if cfg.get("activation", "topk") != "topk":
        raise FormatError(f"sparsify activation {cfg['activation']!r} is not supported; interp reads topk")
    for key, what in UNSUPPORTED.items():
        if cfg.get(key):
            raise FormatError(
                f"this sparsify dictionary uses {what} ({key}=true), which interp does not import yet"
            )
    raw = load_file(str(folder / WEIGHTS))
    if "encoder.weight" not in raw:
        raise FormatError(f"{folder / WEIGHTS} lacks encoder.weight (has {', '.join(sorted(raw))})")
    d_sae, d_in = raw["encoder.weight"].shape
    if "d_in" in cfg and int(cfg["d_in"]) != d_in:
        raise FormatError(f"{folder}: cfg.json says d_in={cfg['d_in']} but the encoder is {d_in} wide")
    renamed = {"W_enc": raw["encoder.weight"].T, "b_enc": raw.get("encoder.bias"), "W_dec": raw.get("W_dec"),
               "b_dec": raw.get("b_dec")}  # fmt: skip
    renamed = {k: v for k, v in renamed.items() if v is not None}
    tensors = check_tensors(renamed, ("W_enc", "b_enc", "W_dec", "b_dec"), d_in, d_sae, str(folder / WEIGHTS))
    hook = folder.name  # sparsify names each folder after its hookpoint
    return Imported("topk", tensors, "sparsify", str(folder.resolve()), cfg, {"k": int(cfg["k"])},
                    "", hook, site_name(hook))  # fmt: skip
