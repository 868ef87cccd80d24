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


class _Killed(LiveBatches):
    def batch(self, step):
        if step == 4:
            raise KeyboardInterrupt
        return super().batch(step)


def test_live_resume_equals_uninterrupted_and_refuses_other_settings(tiny_llama, tmp_path):
    """Catches a resumed run that rebuilds another buffer / order, and a resume with another site or seed."""
    import pytest

    from interp.decompose.base import DecomposerError

    contexts = load_contexts(tiny_llama.tokenizer, "bbc", 32, 1200)
    cls = method_class("topk")
    cfg = cls.config_class(**{"architecture": "topk", **_config(8), "checkpoint_every": 3})

    def source(kind=LiveBatches, site="1.mlp_hidden", seed=3):
        return kind(tiny_llama, contexts, site, 10**9, 64, seed, buffer_contexts=8)

    whole = cls(cfg)
    whole.fit(source(), progress=False)
    with pytest.raises(KeyboardInterrupt):
        cls(cfg).fit(source(_Killed), checkpoint_dir=tmp_path / "ckpt", progress=False)
    for changed, name in ((source(site="0.mlp_hidden"), "site"), (source(seed=4), "live_seed")):
        with pytest.raises(DecomposerError, match=name):
            cls(cfg).fit(changed, checkpoint_dir=tmp_path / "ckpt", progress=False)
    resumed = cls(cfg)
    resumed.fit(source(), checkpoint_dir=tmp_path / "ckpt", progress=False)
    assert torch.allclose(whole.directions, resumed.directions, atol=1e-6)
