"""What a model is and how to touch it: sites, loading, the weight sources, and the one hook layer (hooks, edits)
that capture, the spliced metrics and steering share."""

from interp.models.loading import DEFAULT_MODEL, LoadedModel, ModelError, ModelInfo, describe, load_model
from interp.models.sources import byte_tokenizer, installed_models, tiny_model

__all__ = ["DEFAULT_MODEL", "LoadedModel", "ModelError", "ModelInfo", "byte_tokenizer", "describe",
           "installed_models", "load_model", "tiny_model"]  # fmt: skip
