"""Sparse autoencoders: ReLU + L1, TopK, BatchTopK and JumpReLU, with SAELens' parameter names and shapes.

    pre = (x - b_dec) W_enc + b_enc         W_enc [d_in, d_sae], b_enc [d_sae]
    f   = sparsify(pre) >= 0                 codes [n, d_sae]
    x_hat = f W_dec + b_dec                  W_dec [d_sae, d_in] (unit rows), b_dec [d_in]

| architecture | training codes | inference codes | sparsity term |
|---|---|---|---|
| relu | ReLU(pre) | same | l1_coeff * sum_i f_i ||W_dec[i]|| (warmed up) |
| topk | k largest of ReLU(pre) | same | none (k sets L0); AuxK on dead latents |
| batchtopk | k * batch largest of ReLU(pre) over the batch | pre > threshold (running estimate) | AuxK |
| jumprelu | pre * H(pre - theta), straight-through in theta | same | l0_coeff * L0 (straight-through) |

Activations are scaled to mean norm sqrt(d_in) while training (so settings transfer across sites); the scale is
folded into the weights when training ends, so `encode` / `decode` work on raw activations. TopK-style decoders
and the TopK encoder's backward touch only the chosen latents (`embedding_bag`), not all d_sae.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from interp import distributed
from interp.decompose.base import DecomposerError, check_activations, read_decomposer, save_decomposer
from interp.store import ActivationStore

ARCHITECTURES = ("relu", "topk", "batchtopk", "jumprelu")


@dataclass(frozen=True)
class SAEConfig:
    architecture: str = "topk"
    """relu | topk | batchtopk | jumprelu."""
    n_features: int = 4096
    """d_sae, the number of latents."""
    k: int = 32
    """TopK / BatchTopK: active latents per token (BatchTopK: on average over the batch)."""
    l1_coeff: float = 5.0
    """ReLU: weight of the decoder-norm-weighted L1 penalty (on activations scaled to mean norm sqrt(d_in))."""
    l1_warmup_steps: int = 200
    """ReLU: the L1 coefficient grows linearly from 0 over these steps."""
    l0_coeff: float = 0.5
    """JumpReLU: weight of the L0 penalty."""
    bandwidth: float = 0.001
    """JumpReLU: width of the rectangle kernel of the straight-through estimator."""
    initial_threshold: float = 0.001
    """JumpReLU: initial per-latent threshold theta."""
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
        if self.architecture not in ARCHITECTURES:
            raise DecomposerError(
                f"unknown SAE architecture {self.architecture!r}; valid: {', '.join(ARCHITECTURES)}"
            )
        if self.architecture in ("topk", "batchtopk") and not 0 < self.k <= self.n_features:
            raise DecomposerError(f"k={self.k} must be between 1 and n_features={self.n_features}")

    @property
    def learning_rate(self) -> float:
        return self.lr or 2e-4 / math.sqrt(self.n_features / 16384)


# --------------------------------------------------------------------------------------------- sparse helpers
class _TopKEncode(torch.autograd.Function):
    """(vals, idx) = top-k of ReLU(x W + b) `[n, k]`; the backward touches only the chosen latents."""

    @staticmethod
    def forward(ctx, x, w_enc, b_enc, k: int):
        pre = torch.addmm(b_enc, x, w_enc)
        vals, idx = pre.topk(k, dim=1, sorted=False)
        vals = vals.clamp_min(0)
        ctx.save_for_backward(x, w_enc, idx, vals)
        return vals, idx

    @staticmethod
    def backward(ctx, grad_vals, _grad_idx):
        x, w_enc, idx, vals = ctx.saved_tensors
        grad_vals = grad_vals * (vals > 0)
        w_t = w_enc.T.contiguous()  # [d_sae, d_in]: a latent's encoder column as a table row
        grad_x = nn.functional.embedding_bag(idx, w_t, per_sample_weights=grad_vals, mode="sum")
        table = w_t.detach().requires_grad_(
            True
        )  # same index structure as the decoder: reuse its fast backward
        with torch.enable_grad():
            out = nn.functional.embedding_bag(idx, table, per_sample_weights=grad_vals, mode="sum")
            (grad_w_t,) = torch.autograd.grad(out, table, grad_outputs=x)
        grad_b = vals.new_zeros(w_enc.shape[1]).index_add_(0, idx.reshape(-1), grad_vals.reshape(-1))
        return grad_x, grad_w_t.T, grad_b, None


def sparse_decode(idx: torch.Tensor, vals: torch.Tensor, w_dec: torch.Tensor) -> torch.Tensor:
    """sum_t vals[:, t] W_dec[idx[:, t]], `[n, d_in]`, touching only the chosen rows."""
    return nn.functional.embedding_bag(idx, w_dec, per_sample_weights=vals, mode="sum")


class _JumpReLU(torch.autograd.Function):
    """pre * H(pre - theta); gradient to theta by the rectangle-kernel straight-through estimator."""

    @staticmethod
    def forward(ctx, pre, theta, bandwidth: float):
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx, grad):
        pre, theta = ctx.saved_tensors
        bw = ctx.bandwidth
        near = ((pre - theta).abs() < bw / 2).to(grad.dtype)
        grad_theta = (-(theta / bw) * near * grad).sum(0)
        return grad * (pre > theta), grad_theta, None


class _Step(torch.autograd.Function):
    """H(pre - theta) for the L0 penalty; straight-through gradient to theta only."""

    @staticmethod
    def forward(ctx, pre, theta, bandwidth: float):
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, theta = ctx.saved_tensors
        bw = ctx.bandwidth
        near = ((pre - theta).abs() < bw / 2).to(grad.dtype)
        return None, (-(1.0 / bw) * near * grad).sum(0), None


# --------------------------------------------------------------------------------------------- the module
class SAEModule(nn.Module):
    """The parameters and the forward pass of one SAE (on scaled activations while training)."""

    def __init__(self, config: SAEConfig, d_in: int):
        super().__init__()
        self.config, self.d_in = config, d_in
        d_sae = config.n_features
        gen = torch.Generator().manual_seed(config.seed)
        w_dec = torch.randn(d_sae, d_in, generator=gen)
        w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)
        self.W_enc = nn.Parameter(w_dec.T.clone())
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.log_threshold = nn.Parameter(torch.full((d_sae,), math.log(config.initial_threshold)))
        self.register_buffer("batch_threshold", torch.tensor(0.0))  # BatchTopK inference threshold
        self.register_buffer("scale", torch.tensor(1.0))  # activation scale (1 once folded)

    @property
    def threshold(self) -> torch.Tensor:
        """Per-latent threshold `[d_sae]`: theta for JumpReLU, the batch threshold for BatchTopK, else 0."""
        if self.config.architecture == "jumprelu":
            return self.log_threshold.exp()
        if self.config.architecture == "batchtopk":
            return self.batch_threshold.expand(self.config.n_features)
        return torch.zeros(self.config.n_features, device=self.b_enc.device)

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.scale - self.b_dec) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Inference codes `[n, d_sae]` of raw activations (dense, >= 0)."""
        pre = self.pre_acts(x)
        arch = self.config.architecture
        if arch == "relu":
            return pre.clamp_min(0)
        if arch == "topk":
            vals, idx = pre.topk(self.config.k, dim=1)
            return torch.zeros_like(pre).scatter_(1, idx, vals.clamp_min(0))
        return pre * (pre > self.threshold) * (pre > 0)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return (codes @ self.W_dec + self.b_dec) / self.scale

    def training_loss(
        self, x: torch.Tensor, dead: torch.Tensor, l1_coeff: float
    ) -> tuple[torch.Tensor, dict]:
        """Loss on a batch of scaled activations `x [B, d_in]`; also returns codes statistics for the trainer.

        MSE = mean over tokens of the squared error summed over d_in.
        """
        cfg, arch = self.config, self.config.architecture
        centered = x - self.b_dec
        stats: dict = {}
        if arch == "topk":
            vals, idx = _TopKEncode.apply(centered, self.W_enc, self.b_enc, cfg.k)
            x_hat = sparse_decode(idx, vals, self.W_dec) + self.b_dec
            fired = torch.zeros(cfg.n_features, device=x.device).index_add_(
                0, idx.reshape(-1), (vals > 0).reshape(-1).float()
            )
            stats["l0"] = float((vals > 0).sum(1).float().mean())
        else:
            pre = centered @ self.W_enc + self.b_enc
            if arch == "relu":
                codes = pre.clamp_min(0)
            elif arch == "batchtopk":
                # keep the k * B largest over the whole batch (under DDP: over every rank's part of it)
                relu = pre.clamp_min(0)
                cut = distributed.kth_largest(relu.reshape(-1), cfg.k * x.shape[0] * distributed.world_size())
                codes = relu * (relu >= cut)
                smallest = cut  # smallest kept (fewer than k * B positive: the smallest positive)
                if float(cut) <= 0:  # the same on every rank
                    positive = relu.detach().masked_fill(relu <= 0, math.inf).min()
                    smallest = distributed.all_reduce(positive, "min").nan_to_num(posinf=0.0)
                m = cfg.threshold_momentum
                first = self.batch_threshold == 0
                self.batch_threshold.copy_(
                    torch.where(first, smallest, m * self.batch_threshold + (1 - m) * smallest).detach()
                )
            else:  # jumprelu
                theta = self.log_threshold.exp()
                codes = _JumpReLU.apply(pre, theta, cfg.bandwidth)
            x_hat = codes @ self.W_dec + self.b_dec
            fired = (codes > 0).float().sum(0)
            stats["l0"] = float((codes > 0).sum(1).float().mean())
        error = x - x_hat
        mse = error.square().sum(-1).mean()
        loss = mse
        if arch == "relu":
            loss = loss + l1_coeff * (codes * self.W_dec.norm(dim=1)).sum(-1).mean()
        elif arch == "jumprelu":
            l0 = _Step.apply(pre, self.log_threshold.exp(), cfg.bandwidth).sum(-1).mean()
            loss = loss + cfg.l0_coeff * l0
        if arch in ("topk", "batchtopk") and dead.any():
            loss = loss + cfg.aux_coeff * self._aux_loss(centered, error.detach(), dead)
        variance = (x - x.mean(0)).square().sum(-1).mean()
        mse_value = float(mse.detach())
        stats.update(
            mse=mse_value, fvu=mse_value / max(float(variance.detach()), 1e-12), fired=fired.detach()
        )
        return loss, stats

    def _aux_loss(self, centered: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
        """AuxK (Gao et al.): reconstruct the residual with the top aux_k dead latents, normalized by its variance."""
        aux_k = min(self.config.aux_k or self.d_in // 2, int(dead.sum()))
        pre = centered @ self.W_enc + self.b_enc
        pre = pre.masked_fill(~dead, float("-inf"))
        vals, idx = pre.topk(aux_k, dim=1)
        residual_hat = sparse_decode(idx, vals.clamp_min(0), self.W_dec)
        variance = distributed.batch_variance(residual)  # of the global batch under DDP
        return (residual - residual_hat).square().sum(-1).mean() / variance.clamp_min(1e-12)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_parallel_gradient(self) -> None:
        """Project out of W_dec's gradient its component along each (unit) row, so steps keep rows unit-norm."""
        if self.W_dec.grad is not None:
            parallel = (self.W_dec.grad * self.W_dec).sum(1, keepdim=True)
            self.W_dec.grad.sub_(parallel * self.W_dec)

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
        x = check_activations(x, self.d_in)
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
        if self.config.architecture in ("jumprelu", "batchtopk"):
            out["threshold"] = m.threshold
        return {k: v.detach().float().cpu().contiguous() for k, v in out.items()}

    def save(self, folder: str | Path, model_name: str = "", hook_name: str = "") -> None:
        from interp.decompose.saelens_format import write_saelens_files

        tensors = self.tensors()
        save_decomposer(folder, self.method, self.config, tensors,
                        {"d_in": self.d_in, "history": self.history[-50:]})  # fmt: skip
        write_saelens_files(folder, self.method, tensors, self.d_in, self.config, model_name, hook_name)

    @classmethod
    def load(cls, folder: str | Path):
        meta, tensors = read_decomposer(folder)
        sae = cls(cls.config_class(**meta["config"]), meta["d_in"])
        m = sae.module
        with torch.no_grad():
            for name, param in m.named_parameters():
                if name in tensors:
                    param.copy_(tensors[name])
            if "threshold" in tensors:
                m.log_threshold.copy_(tensors["threshold"].clamp_min(1e-12).log())
                m.batch_threshold.copy_(tensors["threshold"][0])
        sae.history = meta.get("history", [])
        return sae
