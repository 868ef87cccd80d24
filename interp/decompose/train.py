"""One trainer for every gradient-based decomposer (the SAE family and MP-SAE).

It streams shuffled minibatches (from an ActivationStore, bounded memory, or a tensor), scales activations to mean
norm sqrt(d_in), initializes b_dec at the data mean, and runs AdamW with linear warmup and a linear decay at the
end. After each step the decoder's rows are put back on the unit sphere (the gradient's component along each row
is removed first). Dead latents are tracked in tokens since they last fired: AuxK uses them (TopK-style), ReLU
SAEs resample them. Checkpoints (safetensors + the optimizer state + JSON) let a killed run resume to the same
result. The module trained must provide `training_loss(x, dead, l1_coeff)`, `normalize_decoder()`,
`remove_parallel_gradient()`, `fold_scale()`, a `scale` buffer and a `b_dec` parameter.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from interp.decompose.base import DecomposerError, check_activations
from interp.device import resolve_device
from interp.store import ActivationStore, atomic_save_safetensors, atomic_write_json


def minibatches(data: ActivationStore | torch.Tensor, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless shuffled minibatches `[batch_size, d]`; epoch e is shuffled with seed + e."""
    epoch = 0
    while True:
        if isinstance(data, ActivationStore):
            yield from data.batches(batch_size, shuffle=True, seed=seed + epoch, drop_last=True)
        else:
            order = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(seed + epoch))
            for start in range(0, data.shape[0] - batch_size + 1, batch_size):
                yield data[order[start : start + batch_size]].float()
        epoch += 1


def learning_rate_factor(step: int, n_steps: int, warmup: int, decay_start: float) -> float:
    """Linear warmup to 1, constant, then linear decay to 0 over the last (1 - decay_start) of the steps."""
    if step < warmup:
        return (step + 1) / warmup
    decay_from = int(decay_start * n_steps)
    if step >= decay_from:
        return max(0.0, (n_steps - step) / max(1, n_steps - decay_from))
    return 1.0


def _data_sample(data: ActivationStore | torch.Tensor, n: int = 16384) -> torch.Tensor:
    if isinstance(data, ActivationStore):
        return next(data.batches(min(n, data.n_tokens), shuffle=True, seed=12345))
    return data[torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(12345))[:n]].float()


def _check_data(data: ActivationStore | torch.Tensor, batch_size: int) -> int:
    if isinstance(data, ActivationStore):
        if data.n_tokens == 0:
            raise DecomposerError(f"the store at {data.path} is empty; capture some tokens first")
        n, d = data.n_tokens, data.d
        sample = next(data.iter_shards())
        check_activations(sample[:4096], d, f"activations of {data.path}")
    else:
        check_activations(data)
        n, d = data.shape
    if n < batch_size:
        raise DecomposerError(
            f"batch_size={batch_size} is larger than the {n} tokens available; lower --batch-size"
        )
    return d


def _resample_dead(module, x: torch.Tensor, dead: torch.Tensor, optimizer: torch.optim.Optimizer) -> int:
    """ReLU SAEs: point dead latents at inputs the SAE reconstructs worst (Anthropic's resampling, simplified)."""
    idx = dead.nonzero()[:, 0]
    if idx.numel() == 0:
        return 0
    with torch.no_grad():
        codes = (x - module.b_dec) @ module.W_enc + module.b_enc
        errors = (x - (codes.clamp_min(0) @ module.W_dec + module.b_dec)).square().sum(-1)
        picks = torch.multinomial(errors + 1e-12, idx.numel(), replacement=True)
        directions = x[picks] - module.b_dec
        directions = directions / directions.norm(dim=1, keepdim=True).clamp_min(1e-12)
        module.W_dec[idx] = directions
        alive_norm = module.W_enc[:, ~dead].norm(dim=0).mean() if (~dead).any() else torch.tensor(1.0)
        module.W_enc[:, idx] = directions.T * alive_norm * 0.2
        module.b_enc[idx] = 0
        for param in (module.W_dec, module.W_enc, module.b_enc):
            state = optimizer.state.get(param, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state and param is module.W_enc:
                    state[key][:, idx] = 0
                elif key in state:
                    state[key][idx] = 0
    return idx.numel()


def train(
    decomposer, data: ActivationStore | torch.Tensor, checkpoint_dir: str | Path | None, progress: bool
) -> None:
    """Train `decomposer` (an SAE or MPSAE) in place; see the module docstring."""
    cfg = decomposer.config
    device = resolve_device(cfg.device)
    d_in = _check_data(data, cfg.batch_size)
    module = decomposer.build(d_in).to(device)
    optimizer = torch.optim.AdamW(module.parameters(), lr=decomposer.config.learning_rate, betas=(0.9, 0.999),
                                  weight_decay=0.0)  # fmt: skip
    since_fired = torch.zeros(cfg.n_features, device=device)
    step, history = 0, []
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is not None and (ckpt / "trainer.json").exists():
        module.load_state_dict(
            {k: v.to(device) for k, v in load_file(str(ckpt / "module.safetensors")).items()}
        )
        optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True, map_location=device))
        saved = json.loads((ckpt / "trainer.json").read_text())
        step, history = saved["step"], saved["history"]
        since_fired = load_file(str(ckpt / "since_fired.safetensors"))["since_fired"].to(device)
    else:
        sample = _data_sample(data).to(device)
        with torch.no_grad():
            if cfg.normalize:
                module.scale.fill_(math.sqrt(d_in) / float(sample.norm(dim=1).mean().clamp_min(1e-12)))
            module.b_dec.copy_((sample * module.scale).mean(0))
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", decomposer.config.learning_rate)

    batches = minibatches(data, cfg.batch_size, cfg.seed)
    for _ in range(step):  # resume: the same batches in the same order
        next(batches)
    use_autocast = cfg.autocast and device.type == "cuda"
    resample_every = cfg.resample_every if getattr(cfg, "architecture", "") == "relu" else -1
    if resample_every == 0:
        resample_every = max(1, cfg.n_steps // 4)
    bar = tqdm(total=cfg.n_steps, initial=step, desc=f"train {decomposer.method}", disable=not progress)
    while step < cfg.n_steps:
        x = next(batches).to(device) * module.scale
        factor = learning_rate_factor(step, cfg.n_steps, cfg.warmup_steps, cfg.decay_start)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        l1_warmup = getattr(cfg, "l1_warmup_steps", 0)
        l1_coeff = getattr(cfg, "l1_coeff", 0.0) * min(1.0, (step + 1) / max(1, l1_warmup))
        dead = since_fired >= cfg.dead_tokens
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_autocast else contextlib.nullcontext()
        with autocast:
            loss, stats = module.training_loss(x, dead, l1_coeff)
        if not torch.isfinite(loss.detach()):
            raise DecomposerError(
                f"the training loss became {float(loss.detach())} at step {step}; lower --lr"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        module.remove_parallel_gradient()
        optimizer.step()
        module.normalize_decoder()
        since_fired += x.shape[0]
        since_fired[stats["fired"] > 0] = 0
        step += 1
        resample_now = resample_every > 0 and step % resample_every == 0 and step < cfg.n_steps
        if resample_now and _resample_dead(module, x, since_fired >= cfg.dead_tokens, optimizer):
            since_fired[since_fired >= cfg.dead_tokens] = 0
        record = {"step": step, "loss": float(loss.detach()), "fvu": stats["fvu"], "l0": stats["l0"],
                  "dead": float((since_fired >= cfg.dead_tokens).float().mean())}  # fmt: skip
        history.append(record)
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.3g}", fvu=f"{record['fvu']:.3f}", l0=f"{record['l0']:.1f}",
                        dead=f"{record['dead']:.2f}")  # fmt: skip
        if ckpt is not None and (step % cfg.checkpoint_every == 0 or step == cfg.n_steps):
            _checkpoint(ckpt, module, optimizer, since_fired, step, history)
    bar.close()
    module.fold_scale()
    decomposer.history = history


def _checkpoint(ckpt: Path, module, optimizer, since_fired: torch.Tensor, step: int, history: list) -> None:
    ckpt.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(
        {k: v.detach().cpu() for k, v in module.state_dict().items()}, ckpt / "module.safetensors"
    )
    atomic_save_safetensors({"since_fired": since_fired.cpu()}, ckpt / "since_fired.safetensors")
    tmp = ckpt / ".optimizer.pt.tmp"
    torch.save(optimizer.state_dict(), tmp)
    tmp.replace(ckpt / "optimizer.pt")
    atomic_write_json(ckpt / "trainer.json", {"step": step, "history": history})
