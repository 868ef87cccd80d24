"""One trainer for every gradient-based decomposer (the SAE family and MP-SAE).

It streams shuffled minibatches (from an ActivationStore, bounded memory, or a tensor), scales activations to mean
norm sqrt(d_in), initializes b_dec at the data mean, and runs AdamW with linear warmup and a linear decay at the
end. After each step the decoder's rows are put back on the unit sphere (the gradient's component along each row
is removed first). Dead latents are tracked in tokens since they last fired: AuxK uses them (TopK-style), ReLU
SAEs resample them. Checkpoints (safetensors + the optimizer state + JSON) let a killed run resume to the same
result.

Under torch.distributed (torchrun) training is data-parallel: the module is wrapped in DistributedDataParallel,
`batch_size` is the global batch, each rank reads its part of every global batch (`interp.decompose.batches`), and
everything the update depends on is computed over the global batch (BatchTopK's cut, AuxK's normalization, fire
counts, resampling inputs, logged loss / FVU / L0), so W ranks train the same SAE as one process (float tolerance).
Rank 0 writes the checkpoints; they hold the global step, so a run resumes with any number of processes. The module
trained must provide `training_loss(x, dead, l1_coeff)`, `normalize_decoder()`,
`remove_parallel_gradient()`, `fold_scale()`, a `scale` buffer and a `b_dec` parameter.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from tqdm.auto import tqdm

from interp.core import distributed
from interp.core.checks import all_finite, check_activations
from interp.core.device import resolve_device
from interp.core.fingerprint import check_same, make_fingerprint, settings_of
from interp.core.io import atomic_save_safetensors, atomic_torch_save, atomic_write_json
from interp.decompose.base import DecomposerError
from interp.decompose.batches import GlobalBatches
from interp.store import ActivationStore, data_fingerprint


def learning_rate_factor(step: int, n_steps: int, warmup: int, decay_start: float) -> float:
    """Linear warmup to 1, constant, then linear decay to 0 over the last (1 - decay_start) of the steps."""
    if step < warmup:
        return (step + 1) / warmup
    decay_from = int(decay_start * n_steps)
    if step >= decay_from:
        return max(0.0, (n_steps - step) / max(1, n_steps - decay_from))
    return 1.0


def _check_data(data: ActivationStore | torch.Tensor, batch_size: int) -> int:
    if isinstance(data, ActivationStore):
        if data.n_tokens == 0:
            raise DecomposerError(f"the store at {data.path} is empty; capture some tokens first")
        n, d = data.n_tokens, data.d
        sample = next(data.iter_shards())
        check_activations(sample[:4096], d, f"activations of {data.path}", error=DecomposerError)
    else:
        check_activations(data, error=DecomposerError)
        n, d = data.shape
    if n < batch_size:
        raise DecomposerError(
            f"batch_size={batch_size} is larger than the {n} tokens available; lower --batch-size"
        )
    return d


def _resample_dead(module, x: torch.Tensor, dead: torch.Tensor, optimizer: torch.optim.Optimizer,
                   gen: torch.Generator) -> int:  # fmt: skip
    """ReLU SAEs: point dead latents at inputs the SAE reconstructs worst (Anthropic's resampling, simplified).

    `x` is the whole global batch and `gen` is seeded by the step, so every rank makes the same change.
    """
    idx = dead.nonzero()[:, 0]
    if idx.numel() == 0:
        return 0
    with torch.no_grad():
        codes = (x - module.b_dec) @ module.W_enc + module.b_enc
        errors = (x - (codes.clamp_min(0) @ module.W_dec + module.b_dec)).square().sum(-1)
        picks = torch.multinomial(errors.cpu() + 1e-12, idx.numel(), replacement=True, generator=gen)
        directions = x[picks.to(x.device)] - module.b_dec
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


class _TrainingLoss(nn.Module):
    """The module's `training_loss` as `forward`, so DistributedDataParallel can wrap it (DDP hooks forward)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor, dead: torch.Tensor, l1_coeff: float) -> tuple[torch.Tensor, dict]:
        return self.module.training_loss(x, dead, l1_coeff)


def _data_parallel(module: nn.Module, device: torch.device) -> nn.Module:
    """`training_loss` as a module call; under torch.distributed wrapped in DDP (gradients averaged over ranks)."""
    wrapped = _TrainingLoss(module)
    if distributed.world_size() == 1:
        return wrapped
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    # find_unused_parameters: an architecture leaves some parameters out (e.g. the JumpReLU threshold); buffers
    # (scale, BatchTopK threshold) are computed identically on every rank, so they are not synced at each forward
    # (the option is `forward_sync_buffers` since torch 2.13, `broadcast_buffers` before)
    names = inspect.signature(DistributedDataParallel).parameters
    no_buffer_sync = {
        "forward_sync_buffers" if "forward_sync_buffers" in names else "broadcast_buffers": False
    }
    return DistributedDataParallel(
        wrapped, device_ids=[device.index or torch.cuda.current_device()] if device.type == "cuda" else None,
        find_unused_parameters=True, **no_buffer_sync,
    )  # fmt: skip


@torch.no_grad()
def _init_from_data(module, batches: GlobalBatches, d_in: int, normalize: bool, device: torch.device) -> None:
    """Activation scale (mean norm -> sqrt(d_in)) and b_dec (the scaled mean) from a fixed sample of rows; under
    torch.distributed each rank reads its part of the sample and the sums are all-reduced."""
    sample = batches.sample(16384).to(device)
    sample = sample[torch.isfinite(sample).all(dim=1)]  # a row with NaN is named when its batch comes
    sums = torch.cat(
        [sample.norm(dim=1).sum().reshape(1), sample.sum(0), sample.new_tensor([sample.shape[0]])]
    )
    sums = distributed.all_reduce_sum(sums.double())
    n, mean = sums[-1], sums[1:-1] / sums[-1]
    if normalize:
        module.scale.fill_(math.sqrt(d_in) / float((sums[0] / n).clamp_min(1e-12)))
    mean = mean[-module.b_dec.shape[0] :]  # a transcoder's rows are [x | y]: b_dec starts at y's mean
    module.b_dec.copy_((mean * float(module.scale)).to(module.b_dec.dtype))


def _global_metrics(
    x: torch.Tensor, loss: torch.Tensor, stats: dict, batch_size: int
) -> tuple[dict, torch.Tensor]:
    """Loss, FVU and L0 of the global batch, and its fire counts `[n_features]`, from every rank's part `x`.

    One all-reduce of [loss, squared error, L0 sum, rows with NaN / inf, sum ||x||^2, sum x, fire counts]; FVU is measured about the
    global batch mean: sum ||x - x_hat||^2 / (sum ||x||^2 - ||sum x||^2 / B).
    """
    n = x.shape[0]
    head = torch.tensor([float(loss.detach()), stats["mse"] * n, stats["l0"] * n, stats.get("bad", 0)],
                        dtype=torch.float64, device=x.device)  # fmt: skip
    packed = torch.cat([head, x.square().sum(dtype=torch.float64).reshape(1), x.sum(0, dtype=torch.float64),
                        stats["fired"].double()])  # fmt: skip
    packed = distributed.all_reduce_sum(packed)
    world = distributed.world_size()
    sq_error, sum_x2, sum_x = packed[1], packed[4], packed[5 : 5 + x.shape[1]]
    variance = float(sum_x2 - sum_x.square().sum() / batch_size)
    record = {"loss": float(packed[0]) / world, "fvu": float(sq_error) / max(variance, 1e-12),
              "l0": float(packed[2]) / batch_size, "bad": int(packed[3])}  # fmt: skip
    return record, packed[5 + x.shape[1] :].float()


@dataclass
class Run:
    """One decomposer's training state between steps (several share one stream of batches in a sweep)."""

    decomposer: Any
    data: Any
    batches: GlobalBatches
    module: nn.Module
    optimizer: torch.optim.Optimizer
    loss_of: nn.Module
    ckpt: Path | None
    fingerprint: dict
    step: int
    history: list
    since_fired: torch.Tensor
    resample_every: int
    bar: Any


def start_run(decomposer, data: ActivationStore | torch.Tensor, batches: GlobalBatches, d_in: int,
              checkpoint_dir: str | Path | None, progress: bool) -> Run:  # fmt: skip
    """Build the module and optimizer, resume from `checkpoint_dir` or initialize from the data."""
    cfg = decomposer.config
    device = resolve_device(cfg.device)
    module = decomposer.build(d_in).to(device)
    # fused: one kernel per step for all parameters (on 2 CPU cores ~4x faster than the per-op foreach path)
    lr = decomposer.config.learning_rate
    groups = module.optimizer_groups(lr) if hasattr(module, "optimizer_groups") else module.parameters()
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), weight_decay=0.0,
                                  fused=device.type in ("cpu", "cuda"))  # fmt: skip
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    fingerprint = training_fingerprint(decomposer, data) if ckpt is not None else {}
    resumed = _load_checkpoint(ckpt, fingerprint, module, optimizer, device)
    if resumed is None:
        _init_from_data(module, batches, d_in, cfg.normalize, device)
        step, history, since_fired = 0, [], torch.zeros(cfg.n_features, device=device)
    else:
        step, history, since_fired = resumed
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    resample_every = cfg.resample_every if getattr(module, "resamples_dead", False) else -1
    if resample_every == 0:
        resample_every = max(1, cfg.n_steps // 4)
    bar = tqdm(total=cfg.n_steps, initial=step, desc=f"train {decomposer.method}",
               disable=not progress or distributed.rank() != 0)  # fmt: skip
    return Run(decomposer, data, batches, module, optimizer, _data_parallel(module, device), ckpt, fingerprint,
               step, history, since_fired, resample_every, bar)  # fmt: skip


def advance(run: Run, batch: torch.Tensor) -> None:
    """One step of `run` on this rank's part `batch [b, d_in]` of global batch `run.step` (not modified)."""
    cfg, module, step = run.decomposer.config, run.module, run.step
    x = batch.to(run.since_fired.device) * module.scale
    record, fired = _train_step(module, run.loss_of, run.optimizer, x, run.since_fired, step, cfg,
                                lambda rows, s=step: _non_finite_error(run.data, run.batches.rows(s)[rows], s))  # fmt: skip
    since_fired = run.since_fired
    since_fired += cfg.batch_size
    since_fired[fired > 0] = 0
    step = run.step = step + 1
    resample_now = run.resample_every > 0 and step % run.resample_every == 0 and step < cfg.n_steps
    if resample_now and (since_fired >= cfg.dead_tokens).any():
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        if _resample_dead(
            module, distributed.all_gather_cat(x), since_fired >= cfg.dead_tokens, run.optimizer, gen
        ):
            since_fired[since_fired >= cfg.dead_tokens] = 0
    record = {"step": step, **record, "dead": float((since_fired >= cfg.dead_tokens).float().mean())}
    run.history.append(record)
    run.bar.update(1)
    run.bar.set_postfix(loss=f"{record['loss']:.3g}", fvu=f"{record['fvu']:.3f}", l0=f"{record['l0']:.1f}",
                        dead=f"{record['dead']:.2f}")  # fmt: skip
    if (
        run.ckpt is not None
        and distributed.rank() == 0
        and (step % cfg.checkpoint_every == 0 or step == cfg.n_steps)
    ):
        _checkpoint(run.ckpt, module, run.optimizer, since_fired, step, run.history, cfg.batch_size,
                    run.fingerprint)  # fmt: skip


def finish_run(run: Run) -> None:
    run.bar.close()
    distributed.barrier()  # the last checkpoint is on disk before any rank returns
    run.module.fold_scale()
    run.decomposer.history = run.history


def train(
    decomposer, data: ActivationStore | torch.Tensor, checkpoint_dir: str | Path | None, progress: bool
) -> None:
    """Train `decomposer` (an SAE or MPSAE) in place; see the module docstring."""
    cfg = decomposer.config
    live = hasattr(data, "batch")  # a batch source with GlobalBatches' interface (interp.decompose.live)
    d_in = data.d if live else _check_data(data, cfg.batch_size)
    batches = data if live else GlobalBatches(data, cfg.batch_size, cfg.seed)
    run = start_run(decomposer, data, batches, d_in, checkpoint_dir, progress)
    while run.step < cfg.n_steps:
        advance(run, batches.batch(run.step))  # this rank's part of global batch `step`
    finish_run(run)


def training_fingerprint(decomposer, data: ActivationStore | torch.Tensor) -> dict:
    """What a checkpoint of this training must match to be resumed: the method, the settings that change the
    result (not the device, the checkpoint interval, nor the number of processes) and the data."""
    settings = {"method": decomposer.method, **settings_of(decomposer.config, resume=True)}
    return make_fingerprint(
        settings, data.fingerprint() if hasattr(data, "batch") else data_fingerprint(data)
    )


def _load_checkpoint(ckpt: Path | None, fingerprint: dict, module, optimizer, device: torch.device):
    """Restore module and optimizer from `ckpt`; returns (step, history, since_fired [n_features]) or None when
    there is nothing to resume. A checkpoint of other settings or data is refused, naming what differs."""
    if ckpt is None or not (ckpt / "trainer.json").exists():
        return None
    saved = json.loads((ckpt / "trainer.json").read_text())
    check_same(saved.get("fingerprint"), fingerprint, f"the checkpoint in {ckpt}",
               "rerun with the same settings (the number of processes may change), pass --overwrite to start "
               "afresh, or fit into another --out folder", DecomposerError)  # fmt: skip
    weights = load_file(str(_checkpoint_file(ckpt, saved, "module.safetensors")))
    module.load_state_dict({k: v.to(device) for k, v in weights.items()})
    optimizer.load_state_dict(
        torch.load(_checkpoint_file(ckpt, saved, "optimizer.pt"), weights_only=True, map_location=device)
    )
    since_fired = load_file(str(_checkpoint_file(ckpt, saved, "since_fired.safetensors")))["since_fired"]
    return saved["step"], saved["history"], since_fired.to(device)


def _non_finite_error(data: ActivationStore | torch.Tensor, rows: torch.Tensor, step: int) -> DecomposerError:
    """The error for NaN / inf met in batch `step`, naming the store (or tensor) rows `rows` that hold them."""
    where = f"the store at {data.path}" if isinstance(data, ActivationStore) else "the training tensor"
    named = (
        f"rows {sorted(rows.tolist())[:5]}" if rows.numel() else "rows of another process's part of the batch"
    )
    return DecomposerError(
        f"the activations of {where} contain NaN or inf ({named}, met in batch {step}); fix or drop those rows "
        "(e.g. capture again with the model in float32)"
    )


def _train_step(module, loss_of, optimizer, x: torch.Tensor, since_fired: torch.Tensor, step: int, cfg,
                non_finite) -> tuple[dict, torch.Tensor]:  # fmt: skip
    """One optimizer step on this rank's part `x [b, d_in]` of global batch `step`; returns the global metrics and
    how often each latent fired `[n_features]` over the global batch. Rows of `x` with NaN / inf (counted over
    every rank, with the metrics) raise `non_finite(bad rows of x)` on every rank."""
    bad = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    if not all_finite(x):  # one sum per batch: the data is checked as it streams, not only its start
        bad = ~torch.isfinite(x).all(dim=1)
        if distributed.world_size() == 1:
            raise non_finite(bad.nonzero()[:, 0].cpu())
    factor = learning_rate_factor(step, cfg.n_steps, cfg.warmup_steps, cfg.decay_start)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
    l1_warmup = getattr(cfg, "l1_warmup_steps", 0)
    l1_coeff = getattr(cfg, "l1_coeff", 0.0) * min(1.0, (step + 1) / max(1, l1_warmup))
    dead = since_fired >= cfg.dead_tokens
    use_autocast = cfg.autocast and x.device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_autocast else contextlib.nullcontext()
    with autocast:
        loss, stats = loss_of(x, dead, l1_coeff)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # under DDP: gradients averaged over ranks = the global batch's gradient
    target = stats.pop("target", x)  # a transcoder's FVU is of its target rows
    record, fired = _global_metrics(target, loss, {**stats, "bad": int(bad.sum())}, cfg.batch_size)
    if record.pop("bad"):
        raise non_finite(bad.nonzero()[:, 0].cpu())
    if not math.isfinite(record["loss"]):  # the global loss: every rank stops together
        raise DecomposerError(f"the training loss became {record['loss']} at step {step}; lower --lr")
    module.remove_parallel_gradient()
    optimizer.step()
    module.normalize_decoder()
    return record, fired


CHECKPOINT_FILES = ("module.safetensors", "optimizer.pt", "since_fired.safetensors")


def _checkpoint(ckpt: Path, module, optimizer, since_fired: torch.Tensor, step: int, history: list,
                batch_size: int, fingerprint: dict) -> None:  # fmt: skip
    """Module, optimizer, dead-latent counters and the global position (step in global batches, rows consumed).

    The files of a step get the step in their names and `trainer.json`, replaced last, names them: a run killed
    while writing resumes from the previous complete checkpoint. Older files are then removed.
    """
    ckpt.mkdir(parents=True, exist_ok=True)
    files = {name: f"{name.split('.')[0]}-{step:08d}.{name.split('.', 1)[1]}" for name in CHECKPOINT_FILES}
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    atomic_save_safetensors(state, ckpt / files["module.safetensors"])
    atomic_save_safetensors({"since_fired": since_fired.cpu()}, ckpt / files["since_fired.safetensors"])
    atomic_torch_save(optimizer.state_dict(), ckpt / files["optimizer.pt"])
    atomic_write_json(ckpt / "trainer.json", {"step": step, "rows_consumed": step * batch_size,
                                              "batch_size": batch_size, "files": files, "history": history,
                                              "fingerprint": fingerprint})  # fmt: skip
    for old in ckpt.iterdir():
        if old.name not in files.values() and old.name.split("-")[0] in (
            "module",
            "optimizer",
            "since_fired",
        ):
            old.unlink(missing_ok=True)


def _checkpoint_file(ckpt: Path, saved: dict, name: str) -> Path:
    """A file of the checkpoint `saved` (trainer.json) describes (older checkpoints use the plain names)."""
    return ckpt / saved.get("files", {}).get(name, name)
