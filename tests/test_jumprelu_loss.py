"""JumpReLU's quadratic target-L0 loss: on the batch mean (default) or per token (SAELens' quadratic mode)."""

import math

import torch

from interp.decompose.sae.architectures import ARCHITECTURES
from interp.decompose.sae.model import SAEConfig, SAEModule


def _penalty(per_token: bool) -> tuple[float, torch.Tensor]:
    """Two tokens, one with no latent above the threshold 1 and one with 4 (mean L0 2 = the target)."""
    config = SAEConfig(
        architecture="jumprelu", n_features=4, target_l0=2, l0_coeff=1.0, l0_per_token=per_token
    )
    module = SAEModule(config, d_in=3)
    with torch.no_grad():
        module.log_threshold.fill_(0.0)
    pre = torch.tensor([[0.5, 0.5, 0.5, 0.5], [1.01, 1.01, 1.01, 1.01]])
    loss = ARCHITECTURES["jumprelu"].penalty(module, pre, pre, 0.0)
    loss.backward()
    return float(loss), module.log_threshold.grad.detach()


def test_batch_mean_form_ignores_the_spread_of_token_l0():
    loss, grad = _penalty(per_token=False)
    assert loss == 0.0 and float(grad.abs().sum()) == 0.0


def test_per_token_form_penalizes_each_token_miss_and_lowers_its_l0():
    loss, grad = _penalty(per_token=True)
    assert math.isclose(loss, 3 * 0.5 * (1 + 1), rel_tol=1e-6)  # d_in * mean((0/2-1)^2, (4/2-1)^2)
    assert bool((grad < 0).all())  # the token over target sits near the thresholds: descent raises them
