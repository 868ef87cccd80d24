"""Names of places in a model ("sites"), one scheme for every family and both hook libraries.

| site           | what it is                                              | width   |
|----------------|---------------------------------------------------------|---------|
| `L.mlp_in`     | the MLP's input: the residual stream after the pre-MLP norm (what a transcoder reads) | d_model |
| `L.mlp_hidden` | MLP activation after the nonlinearity (and gate): the input of the out/down projection | d_mlp |
| `L.mlp_out`    | what the MLP adds to the residual stream (Gemma: after its post-feedforward norm) | d_model |
| `L.resid_pre`  | residual stream entering block L                        | d_model |
| `L.resid_post` | residual stream leaving block L                         | d_model |

`FAMILIES` is the one table that maps each family to Hugging Face module paths; `TL_HOOKS` maps site kinds to
TransformerLens hook names, which are the same for every family.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

SITE_KINDS = (
    "resid_pre",
    "mlp_in",
    "mlp_hidden",
    "mlp_out",
    "resid_post",
)  # in the order a forward pass reaches them

TL_HOOKS = {
    "mlp_in": "blocks.{layer}.ln2.hook_normalized",
    "mlp_hidden": "blocks.{layer}.mlp.hook_post",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_post": "blocks.{layer}.hook_resid_post",
}


class SiteError(ValueError):
    """An unknown or out-of-range site."""


# hook names other libraries save with a dictionary (TransformerLens; Hugging Face module paths, as sparsify's
# hookpoints) -> site kind; group 1 is the layer.
HOOK_NAMES: dict[str, str] = {
    r"blocks\.(\d+)\.hook_resid_pre": "resid_pre",
    r"blocks\.(\d+)\.hook_resid_post": "resid_post",
    r"blocks\.(\d+)\.hook_mlp_out": "mlp_out",
    r"blocks\.(\d+)\.mlp\.hook_post": "mlp_hidden",
    r"blocks\.(\d+)\.ln2\.hook_normalized": "mlp_in",
    r"blocks\.(\d+)\.mlp\.hook_in": "mlp_in",
    r"(?:model\.|transformer\.)?(?:layers|h)\.(\d+)\.mlp\.input": "mlp_in",
    r"(?:model\.|transformer\.)?(?:layers|h)\.(\d+)": "resid_post",
    r"(?:model\.|transformer\.)?(?:layers|h)\.(\d+)\.mlp": "mlp_out",
}


def site_of_hook(hook_name: str, n_layers: int | None = None) -> Site:
    """The site a TransformerLens hook name (`blocks.6.hook_resid_post`) or a Hugging Face module path
    (`model.layers.6`, `layers.6.mlp`) reads."""
    for pattern, kind in HOOK_NAMES.items():
        match = re.fullmatch(pattern, hook_name.strip())
        if match:
            return parse_site(f"{match.group(1)}.{kind}", n_layers)
    raise SiteError(
        f"hook {hook_name!r} maps to no interp site; understood: blocks.L.hook_resid_pre / hook_resid_post / "
        "hook_mlp_out, blocks.L.mlp.hook_post, blocks.L.ln2.hook_normalized, layers.L, layers.L.mlp, "
        "layers.L.mlp.input (the MLP's input); pass the site yourself (--site 6.resid_post)"
    )


@dataclass(frozen=True)
class FamilySpec:
    """Where things live in a Hugging Face causal LM of one family (paths relative to the CausalLM / a block)."""

    model_types: tuple[str, ...]  # values of config.model_type
    blocks: str  # the ModuleList of blocks
    mlp_hidden_input_of: str  # in a block: the module whose input is mlp_hidden
    mlp_out_output_of: str  # in a block: the module whose output is mlp_out
    final_norm: str
    unembed: str
    cfg_n_layers: str
    cfg_d_model: str
    cfg_d_mlp: str
    cfg_n_ctx: str
    post_mlp_norm: str = (
        ""  # in a block: the norm applied to the MLP's output before the residual add (Gemma)
    )
    mlp: str = "mlp"  # in a block: the MLP module, whose input is mlp_in (after the pre-MLP norm)


FAMILIES: dict[str, FamilySpec] = {
    "gpt2": FamilySpec(
        ("gpt2",), "transformer.h", "mlp.c_proj", "mlp", "transformer.ln_f", "lm_head",
        "n_layer", "n_embd", "n_inner", "n_positions",
    ),
    "llama": FamilySpec(
        ("llama",), "model.layers", "mlp.down_proj", "mlp", "model.norm", "lm_head",
        "num_hidden_layers", "hidden_size", "intermediate_size", "max_position_embeddings",
    ),
    "gemma2": FamilySpec(
        ("gemma2",), "model.layers", "mlp.down_proj", "post_feedforward_layernorm", "model.norm", "lm_head",
        "num_hidden_layers", "hidden_size", "intermediate_size", "max_position_embeddings",
        "post_feedforward_layernorm",
    ),
    "gemma3": FamilySpec(
        ("gemma3_text", "gemma3"), "model.layers", "mlp.down_proj", "post_feedforward_layernorm", "model.norm",
        "lm_head", "num_hidden_layers", "hidden_size", "intermediate_size", "max_position_embeddings",
        "post_feedforward_layernorm",
    ),
}  # fmt: skip


def family_of(model_type: str) -> str:
    """The family key for a Hugging Face `config.model_type`."""
    for family, spec in FAMILIES.items():
        if model_type in spec.model_types:
            return family
    known = ", ".join(t for spec in FAMILIES.values() for t in spec.model_types)
    raise SiteError(f"model type {model_type!r} is not supported; supported model types: {known}")


@dataclass(frozen=True)
class Site:
    layer: int
    kind: str

    @property
    def name(self) -> str:
        return f"{self.layer}.{self.kind}"

    def __str__(self) -> str:
        return self.name

    @property
    def tl_hook(self) -> str:
        """TransformerLens hook name, e.g. `blocks.3.mlp.hook_post`."""
        return TL_HOOKS[self.kind].format(layer=self.layer)

    def width(self, info: Any) -> int:
        """Number of activation dimensions at this site for a model described by `info` (a ModelInfo)."""
        return info.d_mlp if self.kind == "mlp_hidden" else info.d_model

    @property
    def order(self) -> tuple[int, int]:
        """Sort key: the order in which a forward pass reaches sites."""
        return self.layer, SITE_KINDS.index(self.kind)


def parse_site(text: str, n_layers: int | None = None) -> Site:
    """`'3.mlp_hidden'` -> Site(3, 'mlp_hidden'); checks the kind and, given n_layers, the layer range."""
    layer_text, _, kind = str(text).strip().partition(".")
    if not layer_text.lstrip("-").isdigit() or kind not in SITE_KINDS:
        example = layer_text if layer_text.isdigit() else "3"
        valid = ", ".join(f"{example}.{k}" for k in SITE_KINDS)
        raise SiteError(f"unknown site {text!r}; a site is LAYER.KIND, e.g. {valid}")
    layer = int(layer_text)
    if n_layers is not None and not 0 <= layer < n_layers:
        raise SiteError(
            f"layer {layer} of site {text!r} is out of range: this model has layers 0..{n_layers - 1}"
        )
    return Site(layer, kind)


def parse_sites(texts: str | list[str], n_layers: int | None = None) -> list[Site]:
    """Comma-separated or list of site names -> de-duplicated Sites in forward-pass order."""
    items = texts.split(",") if isinstance(texts, str) else texts
    sites = sorted({parse_site(t, n_layers) for t in items if str(t).strip()}, key=lambda s: s.order)
    if not sites:
        raise SiteError("no site given; pass e.g. --sites 9.mlp_hidden,9.resid_post")
    return sites


def get_module(root: torch.nn.Module, path: str) -> torch.nn.Module:
    """The submodule of `root` at a dotted path (`model.layers.3.mlp`)."""
    module = root
    for part in path.split("."):
        module = module[int(part)] if part.isdigit() else getattr(module, part)
    return module


def module_path(family: str, site: Site) -> tuple[str, str]:
    """(dotted module path from the CausalLM, 'input' | 'output'): where `site` is read or edited in a model of
    `family`. The same path addresses the Hugging Face module and its nnsight envoy."""
    spec = FAMILIES[family]
    block = f"{spec.blocks}.{site.layer}"
    where = {
        "resid_pre": (block, "input"),
        "mlp_in": (f"{block}.{spec.mlp}", "input"),
        "mlp_hidden": (f"{block}.{spec.mlp_hidden_input_of}", "input"),
        "mlp_out": (f"{block}.{spec.mlp_out_output_of}", "output"),
        "resid_post": (block, "output"),
    }
    return where[site.kind]


def hf_hook_point(hf_model: torch.nn.Module, family: str, site: Site) -> tuple[torch.nn.Module, str]:
    """(module, 'input' | 'output'): where `site` is read in a Hugging Face model of `family`."""
    path, which = module_path(family, site)
    return get_module(hf_model, path), which
