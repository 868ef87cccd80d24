"""The sparse autoencoder family (ReLU, TopK, BatchTopK, JumpReLU); see model.py."""

from interp.decompose.sae.model import SAE, SAEConfig, SAEModule

__all__ = ["SAE", "SAEConfig", "SAEModule"]
