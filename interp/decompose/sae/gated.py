"""Gated SAEs (Rajamanoharan et al. 2024) as SAELens defines them (sae_lens.saes.gated_sae), read and exported.

    gate = (x - b_dec) W_enc + b_gate > 0                       (b_gate is interp's b_enc)
    mag  = ReLU((x - b_dec) (W_enc * exp(r_mag)) + b_mag)       r_mag, b_mag [d_sae]
    f    = gate * mag;   x_hat = f W_dec + b_dec

The magnitude path shares W_enc, so from the gate pre-activation `pre`: mag = ReLU((pre - b_gate) exp(r_mag) + b_mag).
interp encodes, decodes, imports and exports gated SAEs; it does not train them (use SAELens' gated trainer).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from interp.decompose.base import DecomposerError, save_decomposer
from interp.decompose.sae.model import SAE, SAEConfig, SAEModule


class GatedModule(SAEModule):
    """An SAE module with the magnitude path's r_mag and b_mag `[d_sae]`."""

    def __init__(self, config: SAEConfig, d_in: int):
        super().__init__(config, d_in)
        self.r_mag = nn.Parameter(torch.zeros(config.n_features))
        self.b_mag = nn.Parameter(torch.zeros(config.n_features))


class GatedSAE(SAE):
    """A gated SAE (architecture `gated`): encode / decode / save; `fit` is refused."""

    module_class = GatedModule

    def fit(self, data, checkpoint_dir=None, progress: bool = True):
        raise DecomposerError(
            "interp does not train gated SAEs (it reads and exports SAELens' gated SAEs); train one with "
            "SAELens, or fit --method jumprelu / topk"
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        out = super().tensors()
        out.update({name: getattr(self.module, name).detach().float().cpu().contiguous()
                    for name in ("r_mag", "b_mag")})  # fmt: skip
        return out

    def save(self, folder: str | Path, model_name: str = "", hook_name: str = "") -> None:
        from interp.decompose.formats.saelens import write_saelens_files

        tensors = self.tensors()
        save_decomposer(folder, self.method, self.config, tensors,
                        {"d_in": self.d_in, "history": self.history[-50:]})  # fmt: skip
        saelens = {("b_gate" if k == "b_enc" else k): v for k, v in tensors.items()}
        write_saelens_files(folder, self.method, saelens, self.d_in, self.config, model_name, hook_name)
