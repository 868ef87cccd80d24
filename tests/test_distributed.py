"""torch.distributed on CPU (gloo, 2 processes): a 2-rank capture equals a 1-rank capture."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from interp.core.distributed import rank_range

CORPUS = [f"Sentence {i} is about cats, dogs and the weather on day {i}." for i in range(40)]


def _contexts(model):
    from interp.corpus import Document, pack

    return pack([Document(t) for t in CORPUS], model.tokenizer, context_len=16, n_tokens=400)


def _capture_rank(rank: int, world: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        from interp.capture import capture
        from interp.models import load_model

        model = load_model("tiny-llama", device="cpu")
        capture(model, _contexts(model), "0.mlp_hidden,1.resid_post", out, batch_size=3, shard_tokens=30,
                progress=False)  # fmt: skip
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    """A TCP port nobody listens on now (for torchrun's --master-port; never a fixed number)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _capture_rank_or_error(rank: int, world: int, init_file: str, out: str, errors: str) -> None:
    """`_capture_rank`, writing a CaptureError's message to `errors`/rank_R.txt instead of raising."""
    from interp.capture import CaptureError

    try:
        _capture_rank(rank, world, init_file, out)
    except CaptureError as e:
        os.makedirs(errors, exist_ok=True)
        with open(os.path.join(errors, f"rank_{rank}.txt"), "w") as f:
            f.write(str(e))


def test_rank_range_splits_contiguously():
    blocks = [rank_range(10, r, 3) for r in range(3)]
    assert blocks == [(0, 4), (4, 7), (7, 10)]
    assert rank_range(5, 0, 1) == (0, 5)


def test_two_rank_capture_equals_one_rank(tmp_path, tiny_llama):
    from interp.capture import capture
    from interp.store import ActivationStore

    single, _ = capture(tiny_llama, _contexts(tiny_llama), "0.mlp_hidden,1.resid_post", tmp_path / "one",
                        batch_size=3, shard_tokens=30, progress=False)  # fmt: skip
    mp.start_processes(_capture_rank, args=(2, str(tmp_path / "init"), str(tmp_path / "two")), nprocs=2,
                       start_method="spawn")  # fmt: skip
    for site, store in single.items():
        merged = ActivationStore.open(tmp_path / "two" / site)
        assert merged.n_tokens == store.n_tokens
        assert {s.file.split("/")[0] for s in merged.manifest.shards} == {"rank_000", "rank_001"}
        assert torch.allclose(merged.load_all(), store.load_all(), atol=1e-6)
        for key, value in store.tokens().items():
            assert torch.equal(merged.tokens()[key], value), key
    # rerunning resumes per rank: nothing left to do, nothing duplicated
    mp.start_processes(_capture_rank, args=(2, str(tmp_path / "init2"), str(tmp_path / "two")), nprocs=2,
                       start_method="spawn")  # fmt: skip
    assert ActivationStore.open(tmp_path / "two" / "0.mlp_hidden").n_tokens == single["0.mlp_hidden"].n_tokens


@pytest.mark.parametrize("before,after", [(2, 3), (3, 2)])
def test_a_rerun_with_another_number_of_processes_is_refused(tmp_path, before, after):
    """Each rank owns a block of contexts, so a rerun with another world size would merge overlapping rank stores
    (the old code: 2 -> 3 duplicated contexts). It is refused on every rank, and nothing written changes."""
    from interp.store import ActivationStore

    out, errors = tmp_path / "run", tmp_path / "errors"
    mp.start_processes(_capture_rank, args=(before, str(tmp_path / "init1"), str(out)), nprocs=before,
                       start_method="spawn")  # fmt: skip
    n_tokens = ActivationStore.open(out / "0.mlp_hidden").n_tokens
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    mp.start_processes(_capture_rank_or_error, args=(after, str(tmp_path / "init2"), str(out), str(errors)),
                       nprocs=after, start_method="spawn")  # fmt: skip
    messages = [(errors / f"rank_{r}.txt").read_text() for r in range(after)]
    assert all(f"captured by {before} process(es), this capture runs {after}" in m for m in messages)
    assert f"--nproc-per-node {before}" in messages[0] and "another --out" in messages[0]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files
    assert ActivationStore.open(out / "0.mlp_hidden").n_tokens == n_tokens


@pytest.mark.slow
def test_torchrun_cli(tmp_path):
    """`torchrun --nproc-per-node 2 -m interp capture --distributed` end to end."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(CORPUS))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           "-m", "interp", "capture", "--distributed", "--model", "tiny-gpt2", "--sites", "1.resid_post",
           "--corpus", str(corpus), "--n-tokens", "300", "--context-len", "16", "--device", "cpu",
           "--out", str(tmp_path / "run")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    from interp.features import FeatureIndex
    from interp.store import ActivationStore

    assert ActivationStore.open(tmp_path / "run" / "1.resid_post").n_tokens == 300
    torchrun = cmd[:5]  # python -m torch.distributed.run --nproc-per-node 2
    fit = [*torchrun, "--master-port", str(free_port()), "-m", "interp", "fit", "--distributed", "--method", "topk", "--store", str(tmp_path / "run" / "1.resid_post"),
           "--k", "32", "--topk-k", "4", "--n-steps", "20", "--batch-size", "64", "--device", "cpu",
           "--out", str(tmp_path / "topk")]  # fmt: skip
    result = subprocess.run(fit, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("fitting topk") == 1 and "on 2 processes" in result.stdout
    index = [*torchrun, "--master-port", str(free_port()), "-m", "interp", "index", "--distributed", str(tmp_path / "topk"),
             "--device", "cpu", "--top-k", "5"]  # fmt: skip
    result = subprocess.run(index, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert FeatureIndex.open(tmp_path / "topk").manifest.n_tokens == 300


def test_torchrun_without_distributed_is_refused(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from interp.cli import app

    monkeypatch.setenv("WORLD_SIZE", "2")
    result = CliRunner().invoke(app, ["fit", "--method", "topk", "--store", str(tmp_path)])
    assert result.exit_code == 2 and "add --distributed" in result.output


def _snmf_rank(rank: int, world: int, init_file: str, store_path: str, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        from safetensors.torch import save_file

        from interp.decompose.snmf import SNMF, SNMFConfig
        from interp.store import ActivationStore

        snmf = SNMF(SNMFConfig(n_features=6, init=init, max_iter=25, stream=True)).fit(
            ActivationStore.open(store_path), progress=False
        )
        save_file({"F": snmf.f.contiguous(), "losses": torch.tensor(snmf.state.losses)}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("init", ["svd", "random"])
def test_distributed_snmf_equals_single_process(tmp_path, init):
    from safetensors.torch import load_file

    from interp.decompose.snmf import SNMF, SNMFConfig
    from interp.store import ActivationStore, StoreManifest

    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(1200, 6, generator=gen).relu() @ torch.randn(6, 64, generator=gen)).contiguous()
    store = ActivationStore.create(
        tmp_path / "s", StoreManifest("m", "0.mlp_hidden", 64, "float32", "x", 8, True)
    )
    for i in range(4):
        ids = torch.arange(300)
        store.append(x[i * 300 : (i + 1) * 300], ids, ids, ids, context_end=i + 1)
    single = SNMF(SNMFConfig(n_features=6, init=init, max_iter=25, stream=True)).fit(store, progress=False)
    mp.start_processes(_snmf_rank, args=(2, str(tmp_path / "init"), str(tmp_path / "s"), init, str(tmp_path / "f")),
                       nprocs=2, start_method="spawn")  # fmt: skip
    for rank in range(2):
        result = load_file(str(tmp_path / f"f.{rank}"))
        assert torch.allclose(result["F"], single.f, atol=1e-4 * single.f.abs().max()), rank
        assert torch.allclose(result["losses"], torch.tensor(single.state.losses), rtol=1e-4)


def _snmf_store(path):
    from interp.store import ActivationStore, StoreManifest

    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(1200, 6, generator=gen).relu() @ torch.randn(6, 64, generator=gen)).contiguous()
    store = ActivationStore.create(path, StoreManifest("m", "0.mlp_hidden", 64, "float32", "x", 8, True))
    for i in range(4):
        ids = torch.arange(300)
        store.append(x[i * 300 : (i + 1) * 300], ids, ids, ids, context_end=i + 1)
    return store


SNMF_RESUME = {"n_features": 6, "max_iter": 20, "stream": True, "checkpoint_every": 10, "tol": 0.5}


def _snmf_resume_rank(rank: int, world: int, init_file: str, store_path: str, ckpt: str, max_iter: int,
                      out: str) -> None:  # fmt: skip
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        from safetensors.torch import save_file

        from interp.decompose.snmf import SNMF, SNMFConfig
        from interp.store import ActivationStore

        snmf = SNMF(SNMFConfig(**{**SNMF_RESUME, "max_iter": max_iter}))
        snmf.fit(ActivationStore.open(store_path), checkpoint_dir=ckpt, progress=False)
        save_file({"F": snmf.f.contiguous(), "losses": torch.tensor(snmf.state.losses)}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_snmf_checkpoints_resume_with_another_number_of_processes(tmp_path):
    """2 processes -> 1 and 1 -> 2: each rank reads the columns of G it now holds from the folders of the ranks
    that saved them, and the resumed fit ends where an uninterrupted single-process fit ends. The tolerance makes
    the best iterate lag behind the latest, so G_best is re-split too."""
    from safetensors.torch import load_file

    from interp.decompose.snmf import SNMF, SNMFConfig

    store = _snmf_store(tmp_path / "s")
    full = SNMF(SNMFConfig(**SNMF_RESUME)).fit(store, progress=False)

    def run(world: int, ckpt: str, max_iter: int, out: str) -> None:
        args = (world, str(tmp_path / f"init-{out}"), str(tmp_path / "s"), str(tmp_path / ckpt), max_iter,
                str(tmp_path / out))  # fmt: skip
        mp.start_processes(_snmf_resume_rank, args=args, nprocs=world, start_method="spawn")

    run(2, "two_to_one", 10, "a")  # 2 processes, checkpoint at 10
    assert json.loads((tmp_path / "two_to_one" / "layout.json").read_text())["world_size"] == 2
    one = SNMF(SNMFConfig(**SNMF_RESUME)).fit(store, checkpoint_dir=tmp_path / "two_to_one", progress=False)
    assert not (
        tmp_path / "two_to_one" / "ranks_2"
    ).exists()  # the former split is gone once the new one is saved
    SNMF(SNMFConfig(**{**SNMF_RESUME, "max_iter": 10})).fit(store, checkpoint_dir=tmp_path / "one_to_two",
                                                             progress=False)  # fmt: skip
    run(2, "one_to_two", 20, "b")
    results = [(one.f, torch.tensor(one.state.losses))]
    results += [tuple(load_file(str(tmp_path / f"b.{rank}")).values()) for rank in range(2)]
    for f, losses in results:
        assert torch.allclose(f, full.f, atol=1e-4 * full.f.abs().max())
        assert torch.allclose(losses, torch.tensor(full.state.losses), rtol=1e-4)
    assert full.state.best_iteration < 20


# ------------------------------------------------------------------------------------------ DDP training
ARCHITECTURES = ("relu", "topk", "batchtopk", "jumprelu", "mpsae")
# small enough for seconds; dead_tokens and resample_every low so AuxK and resampling both run
DDP_TRAIN = {"n_features": 48, "k": 3, "batch_size": 128, "n_steps": 30, "lr": 3e-3, "warmup_steps": 5,
             "dead_tokens": 128, "device": "cpu", "checkpoint_every": 10}  # fmt: skip


def _decomposer(arch: str, n_steps: int = DDP_TRAIN["n_steps"]):
    from interp.decompose.mp_sae import MPSAE, MPSAEConfig
    from interp.decompose.sae import SAE, SAEConfig

    settings = {**DDP_TRAIN, "n_steps": n_steps}
    if arch == "mpsae":
        return MPSAE(MPSAEConfig(**{k: v for k, v in settings.items() if k != "dead_tokens"}))
    extra = {"l1_coeff": 0.3, "l1_warmup_steps": 5, "resample_every": 10, "l0_coeff": 0.05}
    sae = SAE(SAEConfig(architecture=arch, **settings, **extra))
    if arch == "relu":  # 8 latents that never fire, so resampling has work at step 10
        with torch.no_grad():
            sae.build(16).b_enc[:8] = -100.0
    return sae


def _planted_store(path):
    from interp.store import ActivationStore, StoreManifest

    gen = torch.Generator().manual_seed(0)
    atoms = torch.nn.functional.normalize(torch.randn(24, 16, generator=gen), dim=1)
    codes = torch.rand(2000, 24, generator=gen) * (torch.rand(2000, 24, generator=gen) < 0.12)
    x = codes @ atoms + 0.3
    store = ActivationStore.create(path, StoreManifest("m", "0.resid_post", 16, "float32", "x", 8, True))
    for i, size in enumerate((600, 500, 400, 500)):  # unequal shards
        begin = sum((600, 500, 400, 500)[:i])
        ids = torch.arange(size)
        store.append(x[begin : begin + size], ids, ids, ids, context_end=i + 1)
    return store


def _stop_at(step: int):
    """Patch the trainer to die (KeyboardInterrupt) when it reaches `step`; returns the undo."""
    import interp.decompose.train as train_module

    real = train_module.learning_rate_factor

    def dying(current, *args):
        if current == step:
            raise KeyboardInterrupt
        return real(current, *args)

    train_module.learning_rate_factor = dying
    return lambda: setattr(train_module, "learning_rate_factor", real)


def _ddp_rank(rank: int, world: int, init_file: str, root: str) -> None:
    """Each rank: train every architecture on the store; kill a TopK run at step 25 (checkpoint at 20); finish a
    TopK run that a single process started."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        from safetensors.torch import save_file

        from interp.store import ActivationStore

        store = ActivationStore.open(f"{root}/store")
        for arch in ARCHITECTURES:
            fitted = _decomposer(arch).fit(store, progress=False)
            state = {k: v.detach().contiguous() for k, v in fitted.module.state_dict().items()}
            state["losses"] = torch.tensor([h["loss"] for h in fitted.history])
            state["fvu"] = torch.tensor([h["fvu"] for h in fitted.history])
            save_file(state, f"{root}/{arch}.rank{rank}.safetensors")
        undo = _stop_at(25)
        with contextlib.suppress(KeyboardInterrupt):
            _decomposer("topk").fit(store, checkpoint_dir=f"{root}/ckpt_two", progress=False)
        undo()
        resumed = _decomposer("topk").fit(store, checkpoint_dir=f"{root}/ckpt_one", progress=False)
        save_file({"W_dec": resumed.module.W_dec.detach().contiguous()}, f"{root}/resumed_in_two.rank{rank}")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """Single-process fits, a single-process TopK run killed at step 15, then the 2-rank runs (one spawn)."""
    root = tmp_path_factory.mktemp("ddp")
    store = _planted_store(root / "store")
    single = {arch: _decomposer(arch).fit(store, progress=False) for arch in ARCHITECTURES}
    undo = _stop_at(15)
    with pytest.raises(KeyboardInterrupt):
        _decomposer("topk").fit(store, checkpoint_dir=root / "ckpt_one", progress=False)
    undo()
    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        mp.start_processes(_ddp_rank, args=(2, str(root / "init"), str(root)), nprocs=2, start_method="spawn")
    finally:
        if env["OMP_NUM_THREADS"] is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = env["OMP_NUM_THREADS"]
    return root, store, single


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_ddp_training_equals_single_process(ddp_runs, arch):
    """2 gloo ranks with global batch B train the same SAE as 1 process with batch B (each rank read half)."""
    from safetensors.torch import load_file

    root, _, single = ddp_runs
    one = single[arch]
    two = [load_file(str(root / f"{arch}.rank{r}.safetensors")) for r in range(2)]
    gap = max(float((two[0][n] - v).abs().max()) for n, v in one.module.state_dict().items())
    print(f"{arch}: largest |2 ranks - 1 process| over all weights after 30 steps: {gap:.2e}")
    for name, value in one.module.state_dict().items():
        assert torch.equal(two[0][name], two[1][name]), f"ranks disagree on {name}"
        assert torch.allclose(two[0][name], value, atol=1e-5, rtol=1e-5), (arch, name)
    losses = torch.tensor([h["loss"] for h in one.history])
    assert torch.allclose(two[0]["losses"], losses, rtol=1e-4, atol=1e-6)
    assert torch.allclose(two[0]["fvu"], torch.tensor([h["fvu"] for h in one.history]), rtol=1e-4, atol=1e-6)
    if arch in ("relu", "topk", "batchtopk"):  # latents died: AuxK and resampling ran
        assert any(h["dead"] > 0 for h in one.history)


def test_checkpoints_resume_with_another_world_size(ddp_runs):
    """A 2-rank run killed at step 25 resumes in 1 process, and a 1-process run killed at step 15 resumes in 2
    ranks; both finish equal to an uninterrupted run."""
    import json

    from safetensors.torch import load_file

    root, store, single = ddp_runs
    full = single["topk"].module.W_dec.detach()
    saved = json.loads((root / "ckpt_two" / "trainer.json").read_text())
    assert saved["step"] == 20 and saved["rows_consumed"] == 20 * DDP_TRAIN["batch_size"]
    resumed = _decomposer("topk").fit(store, checkpoint_dir=root / "ckpt_two", progress=False)
    assert torch.allclose(resumed.module.W_dec.detach(), full, atol=1e-4)
    assert [h["step"] for h in resumed.history] == list(range(1, 31))
    for r in range(2):
        assert torch.allclose(load_file(str(root / f"resumed_in_two.rank{r}"))["W_dec"], full, atol=1e-4)


def test_global_batches_split_one_order():
    """Rank parts of each global batch concatenate to the single-process batch; epochs cover every row once."""
    from interp.decompose.batches import GlobalBatches

    x = torch.arange(90.0)[:, None]
    one = GlobalBatches(x, 12, seed=3, rank=0, world=1)
    parts = [GlobalBatches(x, 12, seed=3, rank=r, world=3) for r in range(3)]
    for step in range(20):
        assert torch.equal(torch.cat([p.rows(step) for p in parts]), one.rows(step))
    epoch = torch.cat([one.rows(s) for s in range(one.batches_per_epoch)])
    assert epoch.unique().numel() == epoch.numel() == 84
    from interp.decompose import DecomposerError

    with pytest.raises(DecomposerError, match="multiple of the 3 processes"):
        GlobalBatches(x, 10, seed=0, rank=0, world=3)


def test_global_batches_over_a_store(tmp_path):
    from interp.decompose.batches import GlobalBatches

    store = _planted_store(tmp_path / "s")
    all_rows = store.load_all()
    one = GlobalBatches(store, 100, seed=1, rank=0, world=1, group_shards=2)
    parts = [GlobalBatches(store, 100, seed=1, rank=r, world=2, group_shards=2) for r in range(2)]
    rows = torch.cat([one.rows(s) for s in range(one.batches_per_epoch)])
    assert rows.unique().numel() == rows.numel() == 2000  # every row once per epoch
    for step in (0, 5, 19, 20, 33):  # 19/20: the epoch boundary
        assert torch.equal(torch.cat([p.rows(step) for p in parts]), one.rows(step))
        assert torch.equal(parts[1].batch(step), all_rows[parts[1].rows(step)])


# ------------------------------------------------------------------------------------------ feature index
INDEX = {"top_k": 5, "window": 3, "band_samples": 2, "device": "cpu"}


def _index_rank(rank: int, world: int, init_file: str, folder: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        from interp.features import IndexConfig, build_index

        build_index(folder, out=out, config=IndexConfig(**INDEX), progress=False)
    finally:
        dist.destroy_process_group()


def test_distributed_index_equals_single_process(tmp_path, tiny_llama):
    """2 ranks, each streaming half of the store's shards, write the index one process writes."""
    import json

    import pandas as pd
    from safetensors.torch import load_file

    from interp.capture import capture
    from interp.decompose.sae import SAE, SAEConfig
    from interp.features import IndexConfig, build_index

    stores, _ = capture(tiny_llama, _contexts(tiny_llama), "1.mlp_hidden", tmp_path / "run", batch_size=4,
                        shard_tokens=100, progress=False)  # fmt: skip
    store = stores["1.mlp_hidden"]
    assert store.n_shards >= 4
    sae = SAE(SAEConfig(n_features=32, k=4, n_steps=20, batch_size=64, device="cpu")).fit(
        store, progress=False
    )
    folder = tmp_path / "topk"
    sae.save(folder)
    (folder / "source.json").write_text(json.dumps({"store": str(store.path)}))
    build_index(folder, out=tmp_path / "one", config=IndexConfig(**INDEX), model=tiny_llama, progress=False)
    mp.start_processes(_index_rank, args=(2, str(tmp_path / "init"), str(folder), str(tmp_path / "two")), nprocs=2,
                       start_method="spawn")  # fmt: skip
    one, two = (load_file(str(tmp_path / name / "index.safetensors")) for name in ("one", "two"))
    assert one.keys() == two.keys()
    assert (
        int((one["top_rows"] >= 0).sum()) > 32 and int((one["band_rows"] >= 0).sum()) > 32
    )  # examples exist
    for name, value in one.items():
        if value.is_floating_point():
            assert torch.allclose(two[name], value, atol=1e-6, equal_nan=True), name
        else:
            assert torch.equal(two[name], value), name
    tables = [pd.read_parquet(tmp_path / name / "features.parquet") for name in ("one", "two")]
    pd.testing.assert_frame_equal(tables[0], tables[1])
    manifests = [json.loads((tmp_path / name / "manifest.json").read_text()) for name in ("one", "two")]
    assert manifests[0]["n_tokens"] == manifests[1]["n_tokens"] == store.n_tokens
    assert manifests[1]["mean_input_norm"] == pytest.approx(manifests[0]["mean_input_norm"], rel=1e-6)
