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
folded into the weights when training ends, so `encode` / `decode` work on raw activations. TopK and BatchTopK
training does one dense product (the encoder's forward, without autograd); everything after the selection touches
only the kept (token, latent) pairs: the decoder (`embedding_bag`), its backward (a sampled dense-dense product for
the codes, a sparse-dense product for W_dec) and the encoder's backward (sparse-dense products for W_enc, b_enc
and b_dec). AuxK reuses the same pre-activations. Gradients equal the dense formulation's (tests/test_sae.py).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from interp.core import distributed
from interp.core.checks import check_activations
from interp.decompose.base import DecomposerError, read_decomposer, save_decomposer
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
class Selection(NamedTuple):
    """The (token, latent) pairs a TopK-style SAE keeps, in row-major order (latents ascending within a token).

    Token `rows[i]` uses latent `cols[i]`; token b's pairs are `offsets[b] : offsets[b + 1]` (CSR layout);
    `latent_token` is `[cols; rows]` `[2, nnz]`, the indices of the transposed pattern.
    """

    rows: torch.Tensor  # [nnz]
    cols: torch.Tensor  # [nnz]
    offsets: torch.Tensor  # [B + 1]
    latent_token: torch.Tensor  # [2, nnz]


def _selection(rows: torch.Tensor, cols: torch.Tensor, offsets: torch.Tensor) -> Selection:
    return Selection(rows, cols, offsets, torch.stack([cols, rows]))


def topk_selection(pre: torch.Tensor, k: int) -> Selection:
    """The k largest latents of each row of `pre [B, d_sae]`."""
    n_rows = pre.shape[0]
    cols = pre.topk(k, dim=1, sorted=False).indices.sort(dim=1).values.reshape(-1)
    rows = torch.arange(n_rows, device=pre.device).repeat_interleave(k)
    return _selection(rows, cols, torch.arange(0, n_rows * k + 1, k, device=pre.device))


def mask_selection(mask: torch.Tensor) -> Selection:
    """The latents where `mask [B, d_sae]` is true."""
    rows, cols = mask.nonzero(as_tuple=True)
    offsets = torch.zeros(mask.shape[0] + 1, dtype=torch.long, device=mask.device)
    offsets[1:] = torch.bincount(rows, minlength=mask.shape[0]).cumsum(0)
    return _selection(rows, cols, offsets)


def _rows_to_latents(
    sel: Selection, weights: torch.Tensor, dense: torch.Tensor, n_latents: int
) -> torch.Tensor:
    """S^T dense `[n_latents, d]` for the sparse S `[B, n_latents]` holding `weights [nnz]` at the selection:
    one axpy per kept pair (a COO sparse-dense product), never a dense [B, n_latents] matrix."""
    s_t = torch.sparse_coo_tensor(
        sel.latent_token, weights, (n_latents, dense.shape[0]), check_invariants=False
    )
    return torch.sparse.mm(s_t, dense)


class _SelectedPre(torch.autograd.Function):
    """pre[rows, cols] of pre = (x - b_dec) W_enc + b_enc, `[nnz]`, with pre `[B, d_sae]` computed once outside
    autograd. Gradients go to b_dec, W_enc and b_enc (x is data) through the selected entries only:
    dW_enc = (x - b_dec)^T S, db_enc = column sums of S, db_dec = -W_enc db_enc (S: the sparse gradient)."""

    @staticmethod
    def forward(ctx, centered, b_dec, w_enc, b_enc, pre, sel: Selection):
        ctx.save_for_backward(centered, w_enc)
        ctx.sel = sel
        return pre[sel.rows, sel.cols]

    @staticmethod
    def backward(ctx, grad):
        centered, w_enc = ctx.saved_tensors
        sel = ctx.sel
        grad = grad.to(w_enc.dtype)
        grad_b_enc = grad.new_zeros(w_enc.shape[1]).index_add_(0, sel.cols, grad)
        grad_b_dec = -(w_enc @ grad_b_enc) if ctx.needs_input_grad[1] else None
        grad_w_enc = None
        if ctx.needs_input_grad[2]:
            grad_w_enc = _rows_to_latents(sel, grad, centered.to(w_enc.dtype), w_enc.shape[1]).T.contiguous()
        return None, grad_b_dec, grad_w_enc, grad_b_enc, None, None


class _SparseDecode(torch.autograd.Function):
    """sum over a token's kept pairs of vals * W_dec[col], `[B, d_in]`, touching only the kept rows of W_dec.
    Backward: dvals = <g[row], W_dec[col]> per pair (sampled dense-dense product), dW_dec = S^T g."""

    @staticmethod
    def forward(ctx, vals, w_dec, sel: Selection):
        vals = vals.to(w_dec.dtype)
        ctx.save_for_backward(vals, w_dec)
        ctx.sel = sel
        return nn.functional.embedding_bag(
            sel.cols, w_dec, sel.offsets[:-1], mode="sum", per_sample_weights=vals
        )

    @staticmethod
    def backward(ctx, grad):
        vals, w_dec = ctx.saved_tensors
        sel = ctx.sel
        grad = grad.contiguous().to(w_dec.dtype)
        grad_vals = grad_w_dec = None
        if ctx.needs_input_grad[0]:
            with warnings.catch_warnings():  # "sparse CSR support is in beta"
                warnings.simplefilter("ignore", UserWarning)
                pattern = torch.sparse_csr_tensor(sel.offsets, sel.cols, torch.zeros_like(vals),
                                                  (grad.shape[0], w_dec.shape[0]))  # fmt: skip
                grad_vals = torch.sparse.sampled_addmm(pattern, grad, w_dec.T, beta=0.0).values()
        if ctx.needs_input_grad[1]:
            grad_w_dec = _rows_to_latents(sel, vals, grad, w_dec.shape[0])
        return grad_vals, grad_w_dec, None


def sparse_decode(sel: Selection, vals: torch.Tensor, w_dec: torch.Tensor) -> torch.Tensor:
    """sum_i vals[i] W_dec[cols[i]] per token, `[B, d_in]`; gradients touch only the kept latents."""
    return _SparseDecode.apply(vals, w_dec, sel)


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
        stats: dict = {}
        if arch in ("topk", "batchtopk"):  # sparse: the only dense product is the encoder's forward
            with torch.no_grad():
                data = x - self.b_dec
                pre = self._encoder_pre(data)
                sel = topk_selection(pre, cfg.k) if arch == "topk" else self._batch_selection(pre)
            vals = _SelectedPre.apply(data, self.b_dec, self.W_enc, self.b_enc, pre, sel).clamp_min(0)
            x_hat = sparse_decode(sel, vals, self.W_dec) + self.b_dec
            fired = torch.zeros(cfg.n_features, device=x.device).index_add_(0, sel.cols, (vals > 0).float())
            stats["l0"] = float((vals > 0).sum()) / x.shape[0]
        else:
            pre = (x - self.b_dec) @ self.W_enc + self.b_enc
            if arch == "relu":
                codes = pre.clamp_min(0)
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
            loss = loss + cfg.aux_coeff * self._aux_loss(data, pre, error.detach(), dead)
        variance = x.detach().var(0, correction=0).sum()  # mean over tokens of ||x - mean||^2
        mse_value = float(mse.detach())
        stats.update(
            mse=mse_value, fvu=mse_value / max(float(variance.detach()), 1e-12), fired=fired.detach()
        )
        return loss, stats

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

    @torch.no_grad()
    def _batch_selection(self, pre: torch.Tensor) -> Selection:
        """BatchTopK: keep the k * B largest ReLU(pre) over the whole batch (under DDP: over every rank's part of
        it); update the running inference threshold with the smallest kept activation."""
        cfg = self.config
        relu = pre.clamp_min(0)
        cut = distributed.kth_largest(relu.reshape(-1), cfg.k * pre.shape[0] * distributed.world_size())
        smallest = cut  # smallest kept (fewer than k * B positive: the smallest positive)
        if float(cut) <= 0:  # the same on every rank
            positive = relu.masked_fill(relu <= 0, math.inf).min()
            smallest = distributed.all_reduce(positive, "min").nan_to_num(posinf=0.0)
        m = cfg.threshold_momentum
        first = self.batch_threshold == 0
        self.batch_threshold.copy_(
            torch.where(first, smallest, m * self.batch_threshold + (1 - m) * smallest)
        )
        return mask_selection((pre >= cut) & (pre > 0))

    def _aux_loss(
        self, centered: torch.Tensor, pre: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor
    ) -> torch.Tensor:
        """AuxK (Gao et al.): reconstruct the residual with the top aux_k dead latents, normalized by its variance.
        `pre` is the batch's pre-activations `[B, d_sae]` (no gradient); gradients go through the chosen entries."""
        aux_k = min(self.config.aux_k or self.d_in // 2, int(dead.sum()))
        with torch.no_grad():
            dead_latents = dead.nonzero()[:, 0]  # ascending, so the chosen latents stay sorted per token
            local = topk_selection(pre.index_select(1, dead_latents), aux_k)
            sel = _selection(local.rows, dead_latents[local.cols], local.offsets)
        vals = _SelectedPre.apply(centered, self.b_dec, self.W_enc, self.b_enc, pre, sel).clamp_min(0)
        residual_hat = sparse_decode(sel, vals, self.W_dec)
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
        if self.config.architecture in ("jumprelu", "batchtopk"):
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
