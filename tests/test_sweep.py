"""`interp fit --sweep`: several SAEs of a grid trained together from one read of the store per step."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from interp.cli import app
from interp.decompose import load_decomposer
from interp.decompose.batches import GlobalBatches
from interp.store import ActivationStore, StoreManifest

runner = CliRunner()
STEPS = 30
FIT = ["--k", "32", "--n-steps", str(STEPS), "--batch-size", "64", "--device", "cpu", "--seed", "3"]


@pytest.fixture
def store(tmp_path):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(1200, 12, generator=gen).relu() @ torch.randn(12, 64, generator=gen)).contiguous()
    s = ActivationStore.create(
        tmp_path / "s", StoreManifest("m", "0.mlp_hidden", 64, "float32", "x", 8, True)
    )
    for i in range(4):
        ids = torch.arange(300)
        s.append(x[i * 300 : (i + 1) * 300], ids, ids, ids, context_end=i + 1)
    return str(tmp_path / "s"), x


@pytest.mark.parametrize("method", ["topk", "mpsae"])
def test_a_sweep_equals_fits_one_at_a_time_and_reads_each_batch_once(tmp_path, store, method, monkeypatch):
    """Catches members that see other batches than a lone fit (shared stream advanced per member: wrong SAEs),
    a batch read once per member, and members sharing one module or optimizer."""
    path, x = store
    reads = []
    original = GlobalBatches.batch
    monkeypatch.setattr(GlobalBatches, "batch", lambda self, step: reads.append(step) or original(self, step))
    out = tmp_path / method
    result = runner.invoke(app, ["fit", "--method", method, "--store", path, "--out", str(out), *FIT,
                                 "--sweep", "k=2,4,8"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert reads == list(range(STEPS))  # one read of the store per step for the three SAEs
    for k in (2, 4, 8):
        alone = tmp_path / f"alone{k}"
        assert runner.invoke(app, ["fit", "--method", method, "--store", path, "--out", str(alone), *FIT,
                                   "--topk-k", str(k)]).exit_code == 0  # fmt: skip
        swept, single = load_decomposer(tmp_path / f"{method}-k{k}"), load_decomposer(alone)
        assert swept.config.k == k
        assert torch.allclose(swept.directions, single.directions, atol=1e-5)
        assert torch.allclose(swept.encode(x[:200]), single.encode(x[:200]), atol=1e-4)
    again = runner.invoke(app, ["fit", "--method", method, "--store", path, "--out", str(out), *FIT,
                                "--sweep", "k=2,4,8"])  # fmt: skip
    assert again.exit_code == 0 and "already done" in again.output


def test_a_sweep_over_a_batch_setting_is_refused(tmp_path, store):
    """Members must share the batches: a sweep of batch_size would silently read several streams."""
    result = runner.invoke(app, ["fit", "--method", "topk", "--store", store[0], "--out", str(tmp_path / "t"),
                                 *FIT, "--sweep", "batch_size=32,64"])  # fmt: skip
    assert result.exit_code != 0 and "cannot vary" in result.output
