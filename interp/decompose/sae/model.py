"""Sparse autoencoders: ReLU + L1, TopK, BatchTopK, JumpReLU and Matryoshka BatchTopK, with SAELens' parameter names and shapes.

    pre = (x - b_dec) W_enc + b_enc         W_enc [d_in, d_sae], b_enc [d_sae]
    f   = sparsify(pre) >= 0                 codes [n, d_sae]
    x_hat = f W_dec + b_dec                  W_dec [d_sae, d_in] (unit rows), b_dec [d_in]

The architectures (their codes and sparsity terms) are the table in `interp.decompose.sae.architectures`.

Activations are scaled to mean norm sqrt(d_in) while training (so settings transfer across sites); the scale is
folded into the weights when training ends, so `encode` / `decode` work on raw activations. TopK and BatchTopK
training does one dense product (the encoder's forward, without autograd); everything after the selection touches
only the kept (token, latent) pairs: the decoder (`embedding_bag`), its backward (a sampled dense-dense product for
the codes, a sparse-dense product for W_dec) and the encoder's backward (sparse-dense products for W_enc, b_enc
and b_dec). AuxK reuses the same pre-activations. Gradients equal the dense formulation's (tests/test_sae.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from interp.core import distributed
from interp.core.checks import check_activations, check_ranges
from interp.decompose.base import DecomposerError, read_decomposer, save_decomposer
from interp.decompose.sae.architectures import ARCHITECTURES
from interp.decompose.sae.sparse import make_selection, selected_pre, sparse_decode, topk_selection
from interp.decompose.sae.unit_decoder import normalize_rows_, remove_parallel_gradient_
from interp.decompose.sae.weights import load_tensors
from interp.store import ActivationStore


@dataclass(frozen=True)
class SAEConfig:
    architecture: str = "topk"
    """relu | topk | batchtopk | jumprelu | matryoshka."""
    n_features: int = 4096
    """d_sae, the number of latents."""
    k: int = 32
    """TopK / BatchTopK: active latents per token (BatchTopK: on average over the batch)."""
    l1_coeff: float = 5.0
    """ReLU: weight of the decoder-norm-weighted L1 penalty (on activations scaled to mean norm sqrt(d_in))."""
    l1_warmup_steps: int = 200
    """ReLU: the L1 coefficient grows linearly from 0 over these steps."""
    l0_coeff: float = 0.5
    """JumpReLU: weight of the L0 penalty (with target_l0: of the squared relative miss of the target)."""
    threshold_lr_scale: float = 10.0
    """JumpReLU: the log threshold's learning rate as a multiple of lr."""
    target_l0: float = 0.0
    """JumpReLU: train to this mean number of active latents per token (0 = penalize L0 itself)."""
    l0_per_token: bool = False
    """JumpReLU with target_l0: the squared relative miss of each token's L0, averaged (SAELens' "quadratic" mode),
    instead of the miss of the batch's mean L0 (which lets tokens' L0 spread freely around the target)."""
    bandwidth: float = 0.05
    """JumpReLU: width of the rectangle kernel of the straight-through estimator (SAELens' default; at 0.001 the
    threshold hardly moves on activations scaled to norm sqrt(d_in), so L0 cannot be controlled)."""
    initial_threshold: float = 0.01
    """JumpReLU: initial per-latent threshold theta (replaced by the target's value when target_l0 is set)."""
    encoder_init_scale: float = 1.0
    """W_enc starts as this times W_dec^T (unit rows). SAELens starts at 0.1 (its decoder_init_norm); on
    benchmarks/synth.py's cpu-long data 0.1 lifts ReLU F1 0.18 -> 0.53 and JumpReLU 0.36 -> 0.50 but lowers TopK /
    BatchTopK (0.43 -> 0.40, 0.47 -> 0.41), so the default stays 1."""
    lr: float = 0.0
    """AdamW learning rate; 0 = 2e-4 / sqrt(n_features / 16384) (the scaling rule of eai-sparsify)."""
    batch_size: int = 4096
    n_steps: int = 1000
    warmup_steps: int = 50
    """Linear learning-rate warmup."""
    decay_start: float = 0.8
    """Fraction of n_steps after which the learning rate decays linearly to 0."""
    aux_k: int = 0
    """AuxK: dead latents used to reconstruct the residual (0 = d_in // 2)."""
    aux_coeff: float = 1 / 32
    dead_tokens: int = 1_000_000
    """A latent that has not fired for this many training tokens counts as dead."""
    resample_every: int = 0
    """ReLU: resample dead latents every this many steps (0 = n_steps // 4; negative = never)."""
    matryoshka_widths: tuple[int, ...] = ()
    """Matryoshka: cumulative prefix widths, strictly increasing (n_features is added as the last when missing);
    () = n/16, n/8, n/4, n/2, n."""
    threshold_momentum: float = 0.99
    """BatchTopK: running average of the smallest kept activation, the inference threshold."""
    normalize: bool = True
    """Scale activations to mean norm sqrt(d_in) for training."""
    seed: int = 0
    device: str = "auto"
    autocast: bool = True
    """bf16 autocast of the forward pass on CUDA."""
    checkpoint_every: int = 200

    def __post_init__(self) -> None:
        check_ranges(self, SAE_RANGES, DecomposerError)
        if self.architecture not in ARCHITECTURES:
            raise DecomposerError(
                f"unknown SAE architecture {self.architecture!r}; valid: {', '.join(ARCHITECTURES)}"
            )
        if ARCHITECTURES[self.architecture].uses_k and not 0 < self.k <= self.n_features:
            raise DecomposerError(f"k={self.k} must be between 1 and n_features={self.n_features}")
        if not 0 <= self.target_l0 <= self.n_features:
            raise DecomposerError(
                f"target_l0={self.target_l0} must be between 0 (off) and n_features={self.n_features}"
            )
        widths = self.widths
        if any(b <= a for a, b in zip(widths, widths[1:], strict=False)) or widths[-1] != self.n_features:
            raise DecomposerError(
                f"matryoshka_widths={list(self.matryoshka_widths)} must increase strictly up to at most "
                f"n_features={self.n_features}, e.g. {self.n_features // 4},{self.n_features // 2}"
            )

    @property
    def widths(self) -> tuple[int, ...]:
        """Matryoshka prefix widths, the last being n_features."""
        if not self.matryoshka_widths:
            return tuple(w for w in (self.n_features >> s for s in (4, 3, 2, 1, 0)) if w > 0)
        widths = tuple(int(w) for w in self.matryoshka_widths)
        return widths if widths[-1] == self.n_features else (*widths, self.n_features)

    @property
    def learning_rate(self) -> float:
        return self.lr or 2e-4 / math.sqrt(self.n_features / 16384)


SAE_RANGES = {
    "n_features": ">= 1", "l1_coeff": ">= 0", "l1_warmup_steps": ">= 0", "l0_coeff": ">= 0", "bandwidth": "> 0",
    "initial_threshold": "> 0", "encoder_init_scale": "> 0", "lr": ">= 0", "batch_size": ">= 1", "n_steps": ">= 1", "warmup_steps": ">= 0",
    "decay_start": "in [0, 1]", "aux_k": ">= 0", "aux_coeff": ">= 0", "dead_tokens": ">= 1",
    "threshold_momentum": "in [0, 1)", "checkpoint_every": ">= 1",
}  # fmt: skip


class SAEModule(nn.Module):
    """The parameters and the forward pass of one SAE (on scaled activations while training)."""

    def __init__(self, config: SAEConfig, d_in: int):
        super().__init__()
        self.config, self.d_in = config, d_in
        self.architecture = ARCHITECTURES[config.architecture]
        d_sae = config.n_features
        gen = torch.Generator().manual_seed(config.seed)
        w_dec = torch.randn(d_sae, d_in, generator=gen)
        w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)
        self.W_enc = nn.Parameter(w_dec.T * config.encoder_init_scale)
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.log_threshold = nn.Parameter(torch.full((d_sae,), math.log(config.initial_threshold)))
        self.register_buffer("batch_threshold", torch.tensor(0.0))  # BatchTopK inference threshold
        self.register_buffer("threshold_ready", torch.tensor(0.0))  # JumpReLU: threshold set from the target
        self.register_buffer("scale", torch.tensor(1.0))  # activation scale (1 once folded)

    def optimizer_groups(self, lr: float) -> list[dict]:
        """AdamW parameter groups: the JumpReLU log-threshold moves `threshold_lr_scale` times faster (Adam moves a
        log threshold by about lr per step: at lr 2e-4, 1% per 50 steps, too slow to follow the encoder)."""
        others = [p for name, p in self.named_parameters() if name != "log_threshold"]
        return [{"params": others, "lr": lr},
                {"params": [self.log_threshold], "lr": lr * self.config.threshold_lr_scale}]  # fmt: skip

    @property
    def resamples_dead(self) -> bool:
        return self.architecture.resamples_dead

    @property
    def threshold(self) -> torch.Tensor:
        """Per-latent inference threshold `[d_sae]` (theta for JumpReLU, the batch threshold for BatchTopK), else 0."""
        if self.architecture.threshold is None:
            return torch.zeros(self.config.n_features, device=self.b_enc.device)
        return self.architecture.threshold(self)

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.scale - self.b_dec) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Inference codes `[n, d_sae]` of raw activations `x [n, d_in]` (dense, >= 0)."""
        return self.architecture.encode(self, self.pre_acts(x))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return (codes @ self.W_dec + self.b_dec) / self.scale

    def training_loss(
        self, x: torch.Tensor, dead: torch.Tensor, l1_coeff: float
    ) -> tuple[torch.Tensor, dict]:
        """Loss on a batch of scaled activations `x [B, d_in]`; also returns codes statistics for the trainer.

        MSE = mean over tokens of the squared error summed over d_in, plus the architecture's penalty and AuxK.
        """
        arch = self.architecture
        if arch.select is not None:
            x_hat, codes, pre, fired, l0, nested = self._sparse_forward(x)
        else:
            (x_hat, codes, pre, fired, l0), nested = self._dense_forward(x), None
        error = x - x_hat
        mse = error.square().sum(-1).mean()
        loss = mse if nested is None else nested
        if arch.penalty is not None:
            loss = loss + arch.penalty(self, pre, codes, l1_coeff)
        if arch.aux_loss and dead.any():
            loss = loss + self.config.aux_coeff * self._aux_loss(x - self.b_dec, pre, error.detach(), dead)
        variance = x.detach().var(0, correction=0).sum()  # mean over tokens of ||x - mean||^2
        mse_value = float(mse.detach())
        stats = {"l0": l0, "mse": mse_value, "fvu": mse_value / max(float(variance.detach()), 1e-12),
                 "fired": fired.detach()}  # fmt: skip
        return loss, stats

    def _sparse_forward(self, x: torch.Tensor):
        """TopK-style: the only dense product is the encoder's forward; the rest touches the kept pairs only.
        Returns (x_hat [B, d_in], kept values [nnz], pre [B, d_sae], fired [d_sae], mean L0, the architecture's
        own reconstruction term or None)."""
        with torch.no_grad():
            data = x - self.b_dec
            pre = self._encoder_pre(data)
            sel = self.architecture.select(self, pre)
        vals = selected_pre(data, self.b_dec, self.W_enc, self.b_enc, pre, sel).clamp_min(0)
        if self.architecture.reconstruction is not None:
            x_hat, nested = self.architecture.reconstruction(self, x, sel, vals)
        else:
            x_hat, nested = sparse_decode(sel, vals, self.W_dec) + self.b_dec, None
        fired = torch.zeros(self.config.n_features, device=x.device).index_add_(
            0, sel.cols, (vals > 0).float()
        )
        return x_hat, vals, pre, fired, float((vals > 0).sum()) / x.shape[0], nested

    def _dense_forward(self, x: torch.Tensor):
        """Dense codes under autograd. Returns (x_hat, codes [B, d_sae], pre, fired [d_sae], mean L0)."""
        pre = (x - self.b_dec) @ self.W_enc + self.b_enc
        codes = self.architecture.train_codes(self, pre)
        x_hat = codes @ self.W_dec + self.b_dec
        fired = (codes > 0).float().sum(0)
        return x_hat, codes, pre, fired, float((codes > 0).sum(1).float().mean())

    @torch.no_grad()
    def _encoder_pre(self, data: torch.Tensor) -> torch.Tensor:
        """data W_enc + b_enc `[B, d_sae]` without autograd, written into a buffer kept between steps (on CPU a
        fresh tensor of that size each step costs about as much in page faults as the top-k)."""
        if torch.is_autocast_enabled(data.device.type):
            return torch.addmm(self.b_enc, data, self.W_enc)
        shape = (data.shape[0], self.W_enc.shape[1])
        buffer = getattr(self, "_pre_buffer", None)
        if (
            buffer is None
            or buffer.shape != shape
            or buffer.dtype != data.dtype
            or buffer.device != data.device
        ):
            buffer = self._pre_buffer = data.new_empty(shape)
        return torch.addmm(self.b_enc, data, self.W_enc, out=buffer)

    def _aux_loss(
        self, centered: torch.Tensor, pre: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor
    ) -> torch.Tensor:
        """AuxK (Gao et al.): reconstruct the residual with the top aux_k dead latents, normalized by its variance.
        `pre` is the batch's pre-activations `[B, d_sae]` (no gradient); gradients go through the chosen entries."""
        aux_k = min(self.config.aux_k or self.d_in // 2, int(dead.sum()))
        with torch.no_grad():
            dead_latents = dead.nonzero()[:, 0]  # ascending, so the chosen latents stay sorted per token
            local = topk_selection(pre.index_select(1, dead_latents), aux_k)
            sel = make_selection(local.rows, dead_latents[local.cols], local.offsets)
        vals = selected_pre(centered, self.b_dec, self.W_enc, self.b_enc, pre, sel).clamp_min(0)
        residual_hat = sparse_decode(sel, vals, self.W_dec)
        variance = distributed.batch_variance(residual)  # of the global batch under DDP
        return (residual - residual_hat).square().sum(-1).mean() / variance.clamp_min(1e-12)

    def normalize_decoder(self) -> None:
        normalize_rows_(self.W_dec)

    def remove_parallel_gradient(self) -> None:
        remove_parallel_gradient_(self.W_dec)

    @torch.no_grad()
    def fold_scale(self) -> None:
        """Fold the activation scale s into the weights: encode/decode of raw activations stay exact."""
        s = self.scale.clone()
        self.W_enc.mul_(s)
        self.W_dec.div_(s)
        self.b_dec.div_(s)
        self.scale.fill_(1.0)


class SAE:
    """A sparse autoencoder decomposer (any of ARCHITECTURES), trained by interp.decompose.train."""

    config_class = SAEConfig
    module_class = SAEModule

    def __init__(self, config: SAEConfig | None = None, d_in: int | None = None):
        self.config = config if config is not None else self.config_class()
        self.n_features = self.config.n_features
        self.d_in = d_in
        self.module = self.module_class(self.config, d_in) if d_in is not None else None
        self.history: list[dict] = []

    @property
    def method(self) -> str:
        return self.config.architecture

    def build(self, d_in: int) -> nn.Module:
        if self.module is None or self.d_in != d_in:
            self.d_in, self.module = d_in, self.module_class(self.config, d_in)
        return self.module

    def fit(self, data: ActivationStore | torch.Tensor, checkpoint_dir: str | Path | None = None,
            progress: bool = True):  # fmt: skip
        from interp.decompose.train import train

        train(self, data, checkpoint_dir, progress)
        return self

    def _check(self) -> nn.Module:
        if self.module is None:
            raise DecomposerError("this SAE is not trained; call fit(data) or load(folder)")
        return self.module

    @property
    def directions(self) -> torch.Tensor:
        w = self._check().W_dec.detach()
        return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        module = self._check()
        x = check_activations(x, self.d_in, error=DecomposerError)
        return module.encode(x.to(module.W_dec.device, module.W_dec.dtype))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        module = self._check()
        if codes.ndim != 2 or codes.shape[1] != self.n_features:
            raise DecomposerError(f"codes must be [n, {self.n_features}], got {list(codes.shape)}")
        return module.decode(codes.to(module.W_dec.device, module.W_dec.dtype))

    def tensors(self) -> dict[str, torch.Tensor]:
        """SAELens' parameter names and shapes (scale folded in)."""
        m = self._check()
        if float(m.scale) != 1.0:
            raise DecomposerError("fold the activation scale before saving (training does this at its end)")
        out = {"W_enc": m.W_enc, "b_enc": m.b_enc, "W_dec": m.W_dec, "b_dec": m.b_dec}
        if m.architecture.threshold is not None:
            out["threshold"] = m.threshold
        return {k: v.detach().float().cpu().contiguous() for k, v in out.items()}

    def save(self, folder: str | Path, model_name: str = "", hook_name: str = "") -> None:
        from interp.decompose.formats.saelens import write_saelens_files

        tensors = self.tensors()
        save_decomposer(folder, self.method, self.config, tensors,
                        {"d_in": self.d_in, "history": self.history[-50:]})  # fmt: skip
        write_saelens_files(folder, self.method, tensors, self.d_in, self.config, model_name, hook_name)

    @classmethod
    def load(cls, folder: str | Path):
        meta, tensors = read_decomposer(folder)
        sae = cls(cls.config_class(**meta["config"]), meta["d_in"])
        load_tensors(sae.module, tensors)
        sae.history = meta.get("history", [])
        return sae
