"""GPU paths: `pytest -m gpu` on a machine with CUDA (skipped elsewhere), and the GPU benchmark script on CPU at toy
sizes so that it cannot rot between GPU sessions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_gpu_benchmark_script_runs_at_toy_sizes():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--preset", "tiny"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    for line in ("capture torch", "capture nnsight", "resid_post of every layer", "TopK", "MP-SAE step / TopK",
                 "SNMF:"):  # fmt: skip
        assert line in out.stdout, out.stdout


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("architecture", ["topk", "batchtopk", "jumprelu", "relu"])
def test_sae_trains_under_bf16_autocast_on_cuda(architecture):
    from interp.decompose.sae import SAE, SAEConfig

    x = torch.randn(4096, 64)
    sae = SAE(SAEConfig(architecture=architecture, n_features=256, k=8, batch_size=512, n_steps=30,
                        device="cuda", autocast=True))  # fmt: skip
    sae.fit(x, progress=False)
    codes = sae.encode(x[:16].cuda())
    assert codes.is_cuda and torch.isfinite(codes).all()
    assert sae.history[-1]["fvu"] < sae.history[0]["fvu"]


@pytest.mark.gpu
@needs_cuda
def test_every_edit_follows_the_activations_device_on_cuda(tiny_llama):
    from interp.decompose.sae import SAE, SAEConfig
    from interp.models.edits import AddDirection, Reconstruct, ZeroAblate
    from interp.models.hooks import steered_logits
    from interp.models.sites import parse_site

    model = tiny_llama
    model.hf.to("cuda")
    site = parse_site("1.resid_post")
    sae = SAE(SAEConfig(architecture="topk", n_features=32, k=4, device="cpu"), d_in=model.info.d_model)
    tokens = torch.randint(3, 200, (2, 8)).cuda()
    try:
        for edit in (
            Reconstruct(sae, "all"),
            ZeroAblate("all"),
            AddDirection(torch.randn(model.info.d_model), 1.0),
        ):
            logits = steered_logits(model, tokens, site, edit)
            assert logits.is_cuda and torch.isfinite(logits).all()
    finally:
        model.hf.to("cpu")
