"""The replacement model of a transcoder: the MLP's output replaced by transcoder(MLP input), in one forward pass.

A hook at the input site records `x [batch, pos, d_in]` unchanged; the hook at the target site (reached later in
the same block) replaces `y` there by the transcoder's `y_hat(x)` (codes decoded, plus W_skip x), at every position
but the first (BOS), as `spliced_metrics` splices SAEs.
"""

from __future__ import annotations

import torch

from interp.models import LoadedModel
from interp.models.backends import torch_hooks
from interp.models.edits import PositionTracker, as_decomposer_input
from interp.models.sites import Site


class _Record:
    """Keeps the last activations it sees; changes nothing."""

    positions = "all"

    def __init__(self) -> None:
        self.seen: torch.Tensor | None = None

    def __call__(self, acts: torch.Tensor) -> torch.Tensor:
        self.seen = acts
        return acts


class _Transcode:
    """The target site's activations `[batch, pos, d_out]` replaced by y_hat of the recorded input."""

    positions = "generated"

    def __init__(self, transcoder, record: _Record) -> None:
        self.transcoder, self.record = transcoder, record

    def __call__(self, acts: torch.Tensor) -> torch.Tensor:
        x = self.record.seen
        y_hat = self.transcoder.reconstruct_target(as_decomposer_input(self.transcoder, x))
        return y_hat.reshape(acts.shape).to(acts.device, acts.dtype)


def transcoded_logits(model: LoadedModel, tokens: torch.Tensor, transcoder, in_site: Site, out_site: Site):
    """Logits `[batch, pos, vocab]` of the replacement model (out_site <- transcoder(in_site)), BOS left clean."""
    if out_site.order <= in_site.order:
        raise ValueError(f"the target site {out_site} must come after the input site {in_site}")
    record = _Record()
    with (
        torch.no_grad(),
        torch_hooks.edit_hook(model, in_site, PositionTracker(record, None)),
        torch_hooks.edit_hook(model, out_site, PositionTracker(_Transcode(transcoder, record), 1)),
    ):
        return model.hf(input_ids=tokens.to(model.device), use_cache=False).logits
