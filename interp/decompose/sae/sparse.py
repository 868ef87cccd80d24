"""The sparse pieces of TopK-style SAE training and the straight-through functions of JumpReLU.

A `Selection` holds the (token, latent) pairs a TopK-style SAE keeps; `SelectedPre` and `sparse_decode` run the
encoder's backward and the decoder through those pairs only (never a dense [B, d_sae] matrix in autograd).
`JumpReLU` and `Step` are pre * H(pre - theta) and H(pre - theta) with the rectangle-kernel estimator for theta.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from torch import nn


class Selection(NamedTuple):
    """The (token, latent) pairs a TopK-style SAE keeps, in row-major order (latents ascending within a token).

    Token `rows[i]` uses latent `cols[i]`; token b's pairs are `offsets[b] : offsets[b + 1]` (CSR layout).
    """

    rows: torch.Tensor  # [nnz]
    cols: torch.Tensor  # [nnz]
    offsets: torch.Tensor  # [B + 1]


def make_selection(rows: torch.Tensor, cols: torch.Tensor, offsets: torch.Tensor) -> Selection:
    return Selection(rows, cols, offsets)


def topk_selection(pre: torch.Tensor, k: int) -> Selection:
    """The k largest latents of each row of `pre [B, d_sae]`."""
    n_rows = pre.shape[0]
    cols = pre.topk(k, dim=1, sorted=False).indices.sort(dim=1).values.reshape(-1)
    rows = torch.arange(n_rows, device=pre.device).repeat_interleave(k)
    return make_selection(rows, cols, torch.arange(0, n_rows * k + 1, k, device=pre.device))


def mask_selection(mask: torch.Tensor) -> Selection:
    """The latents where `mask [B, d_sae]` is true."""
    rows, cols = mask.nonzero(as_tuple=True)
    offsets = torch.zeros(mask.shape[0] + 1, dtype=torch.long, device=mask.device)
    offsets[1:] = torch.bincount(rows, minlength=mask.shape[0]).cumsum(0)
    return make_selection(rows, cols, offsets)


def _rows_to_latents(
    sel: Selection, weights: torch.Tensor, dense: torch.Tensor, n_latents: int
) -> torch.Tensor:
    """S^T dense `[n_latents, d]` for the sparse S `[B, n_latents]` holding `weights [nnz]` at the selection,
    never a dense [B, n_latents] matrix: the pairs regrouped by latent (a stable sort of the columns), then one
    weighted embedding bag per latent over the rows of `dense` (a gather kernel: on CPU several times faster
    than the COO sparse-dense product)."""
    cols, order = sel.cols.sort(stable=True)
    offsets = torch.zeros(n_latents, dtype=torch.long, device=cols.device)
    offsets[1:] = torch.bincount(cols, minlength=n_latents)[:-1].cumsum(0)
    return nn.functional.embedding_bag(
        sel.rows[order], dense, offsets, mode="sum", per_sample_weights=weights[order].to(dense.dtype)
    )


class SelectedPre(torch.autograd.Function):
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


class JumpReLU(torch.autograd.Function):
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


class Step(torch.autograd.Function):
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


def selected_pre(centered, b_dec, w_enc, b_enc, pre: torch.Tensor, sel: Selection) -> torch.Tensor:
    """pre[rows, cols] `[nnz]` with gradients to b_dec, W_enc and b_enc through the selected entries only."""
    return SelectedPre.apply(centered, b_dec, w_enc, b_enc, pre, sel)
