"""Transcoders and skip-transcoders: a sparse code of one site (the MLP's input) that reconstructs another (its
output), with SAELens' parameter names and shapes (sae_lens.saes.transcoder; sparsify's `transcode` / `skip`).

    pre   = x W_enc + b_enc                 x [n, d_in], W_enc [d_in, d_sae] (no b_dec subtracted: it is d_out)
    f     = activation(pre) >= 0           codes [n, d_sae]: topk | relu | jumprelu (interp.decompose.sae)
    y_hat = f W_dec + b_dec (+ x W_skip^T)  W_dec [d_sae, d_out], b_dec [d_out], W_skip [d_out, d_in] (zero init)

Training reads rows `[x | y]` of a `PairedStore` (interp.store.paired): the trainer's batches and its one
activation scale cover both parts (a scalar scale commutes with the linear skip, so folding it stays exact), and
the loss is the MSE of y. TopK codes go through a dense scatter here (no sparse kernels, no AuxK); BatchTopK and
Matryoshka activations are not offered for transcoders.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import nn

from interp.core import distributed
from interp.core.checks import check_activations
from interp.decompose.base import DecomposerError
from interp.decompose.sae.model import SAE, SAEConfig, SAEModule

ACTIVATIONS = ("topk", "relu", "jumprelu")
SAELENS_NAMES = {"relu": "", "jumprelu": "jumprelu_"}  # activation -> prefix of SAELens' architecture name
VARIANTS = {"transcoder": False, "skip_transcoder": True}  # method -> has W_skip


@dataclass(frozen=True)
class TranscoderConfig(SAEConfig):
    architecture: str = "transcoder"
    """transcoder | skip_transcoder (the method)."""
    activation: str = "topk"
    """topk | relu | jumprelu: how codes are made from pre-activations (as the SAE architectures)."""
    target: str = ""
    """The target store (e.g. .../9.mlp_out); the input store is the one fitted on."""
    d_target: int = 0
    """Width of the target; 0 = the input's width (set from the target store by `fit_store`)."""
    target_site: str = ""
    """The target store's site (e.g. 9.mlp_out; set by `fit_store`): where the replacement model writes."""

    def __post_init__(self) -> None:
        if self.architecture not in VARIANTS:
            raise DecomposerError(f"unknown transcoder {self.architecture!r}; valid: {', '.join(VARIANTS)}")
        if self.activation not in ACTIVATIONS:
            raise DecomposerError(
                f"transcoder activation {self.activation!r} is not offered; valid: {', '.join(ACTIVATIONS)}"
            )
        self.as_sae()  # checks the SAE settings (k, target_l0, ...) against the activation

    def as_sae(self) -> SAEConfig:
        """The SAE config of the same settings with the activation as its architecture."""
        own = {f.name for f in fields(SAEConfig)} - {"architecture"}
        return SAEConfig(**{k: v for k, v in self.__dict__.items() if k in own}, architecture=self.activation)


class TranscoderModule(SAEModule):
    """Parameters and forward pass; built with `d_total = d_in + d_out` (the width of the paired rows)."""

    def __init__(self, config: TranscoderConfig, d_total: int):
        d_out = config.d_target or d_total // 2
        d_in = d_total - d_out
        super().__init__(config.as_sae(), d_in)
        self.config = config
        self.d_out = d_out
        gen = torch.Generator().manual_seed(config.seed + 1)
        w_dec = torch.randn(config.n_features, d_out, generator=gen)
        self.W_dec = nn.Parameter(w_dec / w_dec.norm(dim=1, keepdim=True))
        self.b_dec = nn.Parameter(torch.zeros(d_out))
        if VARIANTS[config.architecture]:
            self.W_skip = nn.Parameter(torch.zeros(d_out, d_in))
        self.register_buffer("target_scale", torch.tensor(0.0))  # t: y scaled again to mean norm sqrt(d_out)

    @property
    def resamples_dead(self) -> bool:
        return False  # the resampler reads SAE rows, not paired [x | y] rows

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.scale) @ self.W_enc + self.b_enc

    def skip(self, x: torch.Tensor) -> torch.Tensor:
        """W_skip x `[n, d_out]` (zero without a skip connection); x raw."""
        return x @ self.W_skip.T if hasattr(self, "W_skip") else x.new_zeros(x.shape[0], self.d_out)

    def forward_target(self, x: torch.Tensor) -> torch.Tensor:
        """y_hat `[n, d_out]` of raw inputs `x [n, d_in]`."""
        return self.decode(self.encode(x)) + self.skip(x)

    def _codes(self, pre: torch.Tensor) -> torch.Tensor:
        if self.architecture.train_codes is not None:
            return self.architecture.train_codes(self, pre)
        return self.architecture.encode(self, pre)  # topk: a scatter of the kept values, differentiable

    def training_loss(
        self, xy: torch.Tensor, dead: torch.Tensor, l1_coeff: float
    ) -> tuple[torch.Tensor, dict]:
        """Loss on scaled rows `xy [B, d_in + d_out]`: the MSE of the target y plus the activation's penalty."""
        x, y = xy[:, : self.d_in], xy[:, self.d_in :]
        if float(self.target_scale) == 0:
            self._start_target_scale(y)
        y = y * self.target_scale
        pre = x @ self.W_enc + self.b_enc
        codes = self._codes(pre)
        y_hat = codes @ self.W_dec + self.b_dec + self.skip(x)
        mse = (y - y_hat).square().sum(-1).mean()
        loss = mse
        if self.architecture.penalty is not None:
            loss = loss + self.architecture.penalty(self, pre, codes, l1_coeff)
        mse_value = float(mse.detach())
        variance = float(y.detach().var(0, correction=0).sum())
        stats = {"l0": float((codes > 0).sum(1).float().mean()), "mse": mse_value,
                 "fvu": mse_value / max(variance, 1e-12), "fired": (codes > 0).float().sum(0).detach(),
                 "target": y.detach()}  # fmt: skip
        return loss, stats

    @torch.no_grad()
    def _start_target_scale(self, y: torch.Tensor) -> None:
        """t = sqrt(d_out) / mean ||y|| on the first batch (x and y of an MLP differ in norm by orders of
        magnitude, one scale for both leaves y's loss negligible); b_dec (y's scaled mean) follows.
        Under DDP: the mean over ranks."""
        norm = distributed.all_reduce_sum(y.norm(dim=1).mean().reshape(1)) / distributed.world_size()
        self.target_scale.fill_(float(self.d_out**0.5 / norm.clamp_min(1e-12)))
        self.b_dec.mul_(self.target_scale)

    @torch.no_grad()
    def fold_scale(self) -> None:
        """Fold s (both parts) and t (the target's) into the weights: y = y_hat' / (s t)."""
        s, t = float(self.scale), float(self.target_scale) or 1.0
        self.W_enc.mul_(s)
        self.W_dec.div_(s * t)
        self.b_dec.div_(s * t)
        if hasattr(self, "W_skip"):
            self.W_skip.div_(t)
        self.scale.fill_(1.0)
        self.target_scale.fill_(1.0)


class Transcoder(SAE):
    """A transcoder or skip-transcoder decomposer: `encode` reads the input site, `decode` writes the target's
    space (without the skip term: `reconstruct_target(x)` gives the full y_hat)."""

    config_class = TranscoderConfig
    module_class = TranscoderModule

    def __init__(self, config: TranscoderConfig | None = None, d_in: int | None = None):
        super().__init__(config, None)
        if d_in is not None:
            self.build(d_in + (self.config.d_target or d_in))

    @property
    def method(self) -> str:
        return self.config.architecture

    def build(self, d_total: int) -> nn.Module:
        if self.module is None or self.module.d_in + self.module.d_out != d_total:
            self.module = self.module_class(self.config, d_total)
            self.d_in = self.module.d_in
        return self.module

    def fit(self, data, checkpoint_dir=None, progress: bool = True):
        from interp.store.paired import PairedStore

        if not isinstance(data, PairedStore) and not (
            isinstance(data, torch.Tensor) and self.config.d_target
        ):
            raise DecomposerError(
                "a transcoder trains on paired rows: pass --target STORE (the target site of the same capture)"
            )
        return super().fit(data, checkpoint_dir, progress)

    @torch.no_grad()
    def reconstruct_target(self, x: torch.Tensor) -> torch.Tensor:
        """y_hat `[n, d_out]` of inputs `x [n, d_in]` (codes decoded, plus W_skip x)."""
        module = self._check()
        x = check_activations(x, self.d_in, error=DecomposerError).to(module.W_dec.device, module.W_dec.dtype)
        return module.forward_target(x)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = super().tensors()
        if hasattr(self.module, "W_skip"):
            out["W_skip"] = self.module.W_skip.detach().float().cpu().contiguous()
        return out

    def save(self, folder, model_name: str = "", hook_name: str = "") -> None:
        from interp.decompose.base import save_decomposer

        tensors = self.tensors()
        save_decomposer(folder, self.method, self.config, tensors,
                        {"d_in": self.d_in, "history": self.history[-50:]})  # fmt: skip
        if self.config.activation in SAELENS_NAMES:  # SAELens has no TopK transcoder
            self._write_saelens(Path(folder), tensors, model_name, hook_name)

    def _write_saelens(self, folder: Path, tensors: dict, model_name: str, hook_name: str) -> None:
        """SAELens' cfg.json + sae_weights.safetensors of this transcoder (its (jumprelu_)(skip_)transcoder)."""
        from interp.core.io import atomic_save_safetensors, atomic_write_json
        from interp.models.sites import parse_site

        name = SAELENS_NAMES[self.config.activation] + self.method
        hook_out = parse_site(self.config.target_site).tl_hook if self.config.target_site else ""
        cfg = {"architecture": name, "d_in": self.d_in, "d_sae": self.n_features, "d_out": self.module.d_out,
               "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": False,
               "normalize_activations": "none", "reshape_activations": "none",
               "metadata": {"model_name": model_name, "hook_name": hook_name, "hook_name_out": hook_out}}  # fmt: skip
        atomic_save_safetensors(tensors, folder / "sae_weights.safetensors")
        atomic_write_json(folder / "cfg.json", cfg)
