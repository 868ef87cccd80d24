"""saprmarks/dictionary_learning's folders: `ae.pt` (a state dict, read with weights_only=True) + `config.json`
({"trainer": {"dict_class", "k", "group_sizes", "layer", "lm_name", ...}}), as its `trainSAE` saves them.

| dict_class | state dict | codes |
|---|---|---|
| AutoEncoder | encoder.weight/bias, decoder.weight [d_in, d_sae], bias | ReLU(enc(x - bias)), decoder normalized as its from_pretrained does |
| AutoEncoderTopK | encoder.*, decoder.weight, b_dec, k | TopK of ReLU(enc(x - b_dec)) |
| BatchTopKSAE | as TopK + threshold | ReLU(pre) above the one threshold |
| MatryoshkaBatchTopKSAE | W_enc, b_enc, W_dec, b_dec, k, threshold, group_sizes | as BatchTopK |
| JumpReluAutoEncoder | W_enc, b_enc, W_dec, b_dec, threshold | ReLU(pre * (pre > threshold)), x not centred |
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from interp.decompose.formats.imported import (
    FormatError,
    Imported,
    check_tensors,
    fold_b_dec_out_of_input,
    fold_decoder_norm,
    read_json,
)

WEIGHTS, CONFIG = "ae.pt", "config.json"
NAMES = ("W_enc", "b_enc", "W_dec", "b_dec")


def _linear(state: dict, bias: str = "b_dec") -> dict:
    return {"W_enc": state.get("encoder.weight", torch.empty(0)).T, "b_enc": state.get("encoder.bias"),
            "W_dec": state.get("decoder.weight", torch.empty(0)).T, "b_dec": state.get(bias)}  # fmt: skip


def _standard(state: dict, trainer: dict) -> tuple[str, dict, dict, tuple]:
    return "relu", _linear(state, "bias"), {}, ("normalize",)


def _topk(state: dict, trainer: dict) -> tuple[str, dict, dict, tuple]:
    return "topk", _linear(state), {"k": int(state["k"])}, ()


def _batchtopk(state: dict, trainer: dict) -> tuple[str, dict, dict, tuple]:
    t = {**_linear(state), "threshold": _one_threshold(state)}
    return "batchtopk", t, {"k": int(state["k"])}, ()


def _matryoshka(state: dict, trainer: dict) -> tuple[str, dict, dict, tuple]:
    widths = tuple(int(w) for w in torch.cumsum(state["group_sizes"], 0))
    t = {**{k: state.get(k) for k in NAMES}, "threshold": _one_threshold(state)}
    return "matryoshka", t, {"k": int(state["k"]), "matryoshka_widths": widths}, ()


def _jumprelu(state: dict, trainer: dict) -> tuple[str, dict, dict, tuple]:
    return "jumprelu", {k: state.get(k) for k in (*NAMES, "threshold")}, {}, ("no_b_dec",)


def _one_threshold(state: dict) -> torch.Tensor:
    d_sae = (state.get("W_enc") if "W_enc" in state else state["encoder.weight"].T).shape[1]
    threshold = float(state["threshold"])
    return torch.full((d_sae,), max(threshold, 0.0))  # -1: never set (ReLU everything positive)


# dict_class -> reader: (state dict, trainer config) -> (interp method, tensors, options, folds to apply)
DICT_CLASSES: dict[str, Callable[[dict, dict], tuple[str, dict, dict, tuple]]] = {
    "AutoEncoder": _standard,
    "AutoEncoderTopK": _topk,
    "BatchTopKSAE": _batchtopk,
    "MatryoshkaBatchTopKSAE": _matryoshka,
    "JumpReluAutoEncoder": _jumprelu,
}


def is_dictionary_learning(folder: Path) -> bool:
    return (folder / WEIGHTS).exists()


def read_dictionary_learning(folder: str | Path) -> Imported:
    folder = Path(folder)
    if not is_dictionary_learning(folder):
        raise FormatError(
            f"no {WEIGHTS} in {folder}: dictionary_learning saves ae.pt + config.json per trainer"
        )
    config = read_json(folder / CONFIG, "dictionary_learning") if (folder / CONFIG).exists() else {}
    trainer = config.get("trainer", {})
    dict_class = trainer.get("dict_class")
    if dict_class not in DICT_CLASSES:
        raise FormatError(
            f"dictionary_learning dict_class {dict_class!r} (from {folder / CONFIG}) is not supported; "
            f"interp reads {', '.join(DICT_CLASSES)}"
        )
    try:
        state = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling refusal is the same user-facing problem
        raise FormatError(f"{folder / WEIGHTS} is not a plain state dict of tensors ({e})") from None
    try:
        architecture, raw, options, folds = DICT_CLASSES[dict_class](state, trainer)
    except KeyError as e:
        raise FormatError(f"{folder / WEIGHTS} lacks {e} for a {dict_class}; is the file complete?") from None
    raw = {k: v for k, v in raw.items() if v is not None and v.numel() > 0}
    if "W_enc" not in raw:
        raise FormatError(f"{folder / WEIGHTS} lacks its encoder weights (has {', '.join(sorted(state))})")
    d_in, d_sae = raw["W_enc"].shape
    tensors = check_tensors(raw, tuple(raw), d_in, d_sae, str(folder / WEIGHTS))
    if "normalize" in folds:
        fold_decoder_norm(tensors)
    if "no_b_dec" in folds:
        fold_b_dec_out_of_input(tensors)
    layer = trainer.get("layer")
    site = f"{layer}.resid_post" if isinstance(layer, int) and not trainer.get("submodule_name") else None
    return Imported(architecture, tensors, "dictionary_learning", str(folder.resolve()), config, options,
                    trainer.get("lm_name") or "", trainer.get("submodule_name") or "", site)  # fmt: skip
