"""SAEConfig.encoder_init_scale: W_enc starts as scale * W_dec^T (SAELens' 0.1 when asked), 1 by default."""

import pytest
import torch

from interp.decompose.base import DecomposerError
from interp.decompose.sae.model import SAEConfig, SAEModule


def test_encoder_starts_at_scale_times_decoder_transpose():
    plain = SAEModule(SAEConfig(architecture="relu", n_features=8, device="cpu"), d_in=4)
    small = SAEModule(
        SAEConfig(architecture="relu", n_features=8, device="cpu", encoder_init_scale=0.1), d_in=4
    )
    assert torch.equal(plain.W_enc, plain.W_dec.T)
    assert torch.equal(small.W_dec, plain.W_dec)  # the decoder keeps unit rows
    assert torch.allclose(small.W_enc, 0.1 * plain.W_dec.T)
    with pytest.raises(DecomposerError, match="encoder_init_scale"):
        SAEConfig(architecture="relu", n_features=8, encoder_init_scale=0.0)
