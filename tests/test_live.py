"""Training without a store (interp.decompose.live)."""

import torch

from interp.capture.run import capture
from interp.corpus.contexts import load_contexts
from interp.decompose import method_class
from interp.decompose.live import LiveBatches
from interp.store import ActivationStore


def _config(n_steps=6):
    return {"n_features": 32, "k": 4, "batch_size": 64, "n_steps": n_steps, "device": "cpu", "seed": 3}


def test_live_equals_store_training_on_same_order(tiny_llama, tmp_path):
    """Catches a live order, activation path or init sample that differs from store-based training."""
    contexts = load_contexts(tiny_llama.tokenizer, "bbc", 32, 1200)
    capture(tiny_llama, contexts, "1.mlp_hidden", tmp_path / "run", backend="torch", progress=False)
    rows = ActivationStore.open(tmp_path / "run" / "1.mlp_hidden").load_all().float()
    cls = method_class("topk")
    cfg = cls.config_class(**{"architecture": "topk", **_config()})
    live = LiveBatches(tiny_llama, contexts, "1.mlp_hidden", 10**9, 64, 3, buffer_contexts=10**6)
    assert live.n == rows.shape[0]
    a, b = cls(cfg), cls(cfg)
    a.fit(live, progress=False)
    b.fit(rows, progress=False)
    assert torch.allclose(a.directions, b.directions, atol=1e-5)
