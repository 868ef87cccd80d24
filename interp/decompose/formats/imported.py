"""What every reader of another library's dictionary produces, and how it becomes an interp decomposer folder.

A reader returns an `Imported`: interp's architecture name, tensors in SAELens' names and shapes on raw activations
(W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in], threshold [d_sae] where the architecture
has one) with every library-specific convention already folded in (see the fold_* helpers), and the original
config. `write_imported` saves it as an ordinary interp folder (config.json + model.safetensors, SAELens' cfg.json +
sae_weights.safetensors) plus `imported.json`, the record of where it came from.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from interp.core.io import atomic_write_json
from interp.decompose.base import DecomposerError, method_class
from interp.decompose.sae.weights import load_tensors

IMPORT_FILE = "imported.json"  # {"format", "source", "original_config", "model", "hook_name", "site"}


class FormatError(DecomposerError):
    """A dictionary file interp cannot read: unknown architecture or version, missing keys, wrong shapes."""


@dataclass
class Imported:
    architecture: str
    """interp method: relu | topk | batchtopk | jumprelu | matryoshka | mpsae."""
    tensors: dict[str, torch.Tensor]
    format: str
    source: str
    original_config: dict
    options: dict[str, Any] = field(default_factory=dict)
    """Config fields beyond n_features (k, matryoshka_widths, inference_steps, ...)."""
    model_name: str = ""
    hook_name: str = ""
    site: str | None = None

    @property
    def d_in(self) -> int:
        """The width read (a transcoder's decoder writes another width)."""
        t = self.tensors
        return int(t["W_enc"].shape[0] if "W_enc" in t else t["W_dec"].shape[1])

    @property
    def n_features(self) -> int:
        return int(self.tensors["W_dec"].shape[0])


def check_tensors(tensors: dict[str, torch.Tensor], names: tuple[str, ...], d_in: int, d_sae: int, what: str,
                  d_out: int | None = None):  # fmt: skip
    """Refuse missing keys and wrong shapes, naming both; returns float32 copies of `names`. `d_out`: the decoder's
    width when it differs from d_in (transcoders)."""
    d_out = d_in if d_out is None else d_out
    shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_out), "b_enc": (d_sae,), "b_dec": (d_out,),
              "W_skip": (d_out, d_in),
              "threshold": (d_sae,), "r_mag": (d_sae,), "b_mag": (d_sae,)}  # fmt: skip
    missing = [n for n in names if n not in tensors]
    if missing:
        raise FormatError(
            f"{what} lacks {', '.join(missing)} (has {', '.join(sorted(tensors))}); is it complete?"
        )
    for name in names:
        if tuple(tensors[name].shape) != shapes[name]:
            raise FormatError(
                f"{what}: {name} has shape {list(tensors[name].shape)}, expected {list(shapes[name])} "
                f"for d_in={d_in}, d_sae={d_sae}"
            )
    return {n: tensors[n].detach().to(torch.float32).clone() for n in names}


def fold_b_dec_out_of_input(t: dict[str, torch.Tensor]) -> None:
    """pre = x W_enc + b_enc (no b_dec subtracted) as interp's (x - b_dec) W_enc + b_enc': b_enc' = b_enc + b_dec W_enc."""
    t["b_enc"] = (t["b_enc"].double() + t["b_dec"].double() @ t["W_enc"].double()).float()


def fold_decoder_norm(t: dict[str, torch.Tensor]) -> None:
    """Codes scaled by ||W_dec[i]|| (SAELens' rescale_acts_by_decoder_norm, dictionary_learning's normalize_decoder):
    W_enc[:, i], b_enc[i] and threshold[i] times the norm, W_dec[i] over it."""
    norms = t["W_dec"].norm(dim=1).clamp_min(1e-8)
    t["W_enc"] = t["W_enc"] * norms
    t["b_enc"] = t["b_enc"] * norms
    t["W_dec"] = t["W_dec"] / norms[:, None]
    if "threshold" in t:
        t["threshold"] = t["threshold"] * norms


def to_decomposer(imported: Imported) -> Any:
    """The interp decomposer holding `imported`'s weights (encode / decode on raw activations)."""
    cls = method_class(imported.architecture)
    options = dict(imported.options)
    if "architecture" in cls.config_class.__dataclass_fields__:
        options["architecture"] = imported.architecture
    config = cls.config_class(n_features=imported.n_features, **options)
    decomposer = cls(config, imported.d_in)
    load_tensors(decomposer.module, {k: v.float() for k, v in imported.tensors.items()})
    return decomposer


def write_imported(folder: str | Path, imported: Imported) -> Any:
    """Save `imported` as an interp decomposer folder with its `imported.json` record; returns the decomposer."""
    folder = Path(folder)
    if Path(imported.source).resolve() == folder.resolve():
        raise FormatError(
            f"--out {folder} is the source folder; choose another folder for the converted copy"
        )
    decomposer = to_decomposer(imported)
    decomposer.save(folder, imported.model_name, imported.hook_name)
    record = {key: getattr(imported, key) for key in ("format", "source", "original_config", "model_name",
                                                      "hook_name", "site", "architecture")}  # fmt: skip
    atomic_write_json(folder / IMPORT_FILE, record)
    return decomposer


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise FormatError(f"{path} is not valid JSON ({e}); is the {what} download complete?") from None


def replace(imported: Imported, **changes) -> Imported:
    return dataclasses.replace(imported, **changes)
