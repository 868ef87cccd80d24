"""Write the golden files of tests/test_formats.py with the real libraries (run in a side venv, not by the tests):

    python3 -m venv /tmp/peers
    /tmp/peers/bin/pip install torch==2.13.0 sae-lens==6.54.12 eai-sparsify==1.3.3 dictionary-learning==0.1.0
    /tmp/peers/bin/python tests/golden/make_golden.py tests/golden

Each dictionary (d_in 64, 128 latents, seeded random weights with nonzero biases and thresholds) is saved by its
library's own save function into tests/golden/<library>/<name>/, and `expected.safetensors` beside it holds that
library's own codes and reconstruction of the fixed batch in tests/golden/input.safetensors.
Gemma Scope's params.npz is written by numpy in the published layout (no library writes that file); its expected
codes come from SAELens' own JumpReLU SAE loaded with those arrays, as SAELens' Gemma Scope loader does.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

D_IN, D_SAE, N = 64, 128, 16


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Random weights (W_dec rows of varied norm), nonzero biases; thresholds positive and cutting some codes."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if p.ndim == 1 else 1 / p.shape[-1] ** 0.5))
            if "W_dec" in name:
                p.mul_(torch.rand(p.shape[0], 1, generator=gen) + 0.5)
            if "threshold" in name:
                p.copy_(torch.rand(p.shape, generator=gen) * 0.3 + 0.05)


def write_expected(folder: Path, codes: torch.Tensor, recon: torch.Tensor) -> None:
    save_file(
        {"codes": codes.detach().float().contiguous(), "recon": recon.detach().float().contiguous()},
        str(folder / "expected.safetensors"),
    )


def saelens(out: Path, x: torch.Tensor) -> None:
    import sae_lens
    from sae_lens import SAE
    from sae_lens.saes import (
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
    )

    meta = {"model_name": "gpt2", "hook_name": "blocks.6.hook_resid_post"}
    inference = {
        "standard": {"architecture": "standard"},
        "topk": {"architecture": "topk", "k": 8},
        "topk_rescaled": {"architecture": "topk", "k": 8, "rescale_acts_by_decoder_norm": True},
        "jumprelu": {"architecture": "jumprelu", "metadata": {**meta, "hook_name": "blocks.3.mlp.hook_post"}},
        "jumprelu_no_bdec": {"architecture": "jumprelu", "apply_b_dec_to_input": False},
        "matching_pursuit": {
            "architecture": "matching_pursuit",
            "max_iterations": 6,
            "residual_threshold": 0.0,
            "stop_on_duplicate_support": False,
        },
        "gated": {"architecture": "gated"},  # last: the seeds of the others stay as they were
    }
    for seed, (name, cfg) in enumerate(inference.items()):
        sae = SAE.from_dict({"d_in": D_IN, "d_sae": D_SAE, "metadata": meta, **cfg})
        randomize(sae, seed)
        sae.save_model(out / name)
        codes = sae.encode(x)
        write_expected(out / name, codes, sae.decode(codes))
    # training SAEs, saved for inference as SAELens does at the end of training (as JumpReLU SAEs)
    training = {
        "batchtopk": (BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=8)),
        "matryoshka": (MatryoshkaBatchTopKTrainingSAE, MatryoshkaBatchTopKTrainingSAEConfig(
            d_in=D_IN, d_sae=D_SAE, k=8, matryoshka_widths=[16, 48, D_SAE])),
    }  # fmt: skip
    for seed, (name, (cls, cfg)) in enumerate(training.items(), start=20):
        cfg.metadata.model_name, cfg.metadata.hook_name = meta["model_name"], meta["hook_name"]
        sae = cls(cfg)
        randomize(sae, seed)
        sae.topk_threshold.fill_(0.4)
        sae.save_inference_model(out / name)
        loaded = SAE.load_from_disk(out / name)  # the inference SAE SAELens itself loads from those files
        codes = loaded.encode(x)
        write_expected(out / name, codes, loaded.decode(codes))
    matryoshka_training(out.parent / "saelens_training" / "matryoshka", x)
    saelens_transcoders(out.parent / "saelens_transcoders", x)
    print("sae-lens", sae_lens.__version__)


def saelens_transcoders(out: Path, x: torch.Tensor) -> None:
    """SAELens' transcoders (ReLU / JumpReLU, with and without W_skip), d_in 64 -> d_out 48; `recon` is SAELens'
    forward (decoded codes plus W_skip x): the transcoder's prediction of the target."""
    from sae_lens.saes import transcoder as tc

    meta = {
        "model_name": "gpt2",
        "hook_name": "blocks.6.ln2.hook_normalized",
        "hook_name_out": "blocks.6.hook_mlp_out",
    }
    kinds = {
        "transcoder": (tc.Transcoder, tc.TranscoderConfig),
        "skip_transcoder": (tc.SkipTranscoder, tc.SkipTranscoderConfig),
        "jumprelu_transcoder": (tc.JumpReLUTranscoder, tc.JumpReLUTranscoderConfig),
        "jumprelu_skip_transcoder": (tc.JumpReLUSkipTranscoder, tc.JumpReLUSkipTranscoderConfig),
    }
    for seed, (name, (cls, config_cls)) in enumerate(kinds.items(), start=40):
        cfg = config_cls.from_dict({"d_in": D_IN, "d_sae": D_SAE, "d_out": 48, "apply_b_dec_to_input": False,
                                    "metadata": meta})  # fmt: skip
        sae = cls(cfg)
        randomize(sae, seed)
        sae.save_model(out / name)
        with torch.no_grad():
            write_expected(out / name, sae.encode(x), sae(x))


def matryoshka_training(folder: Path, x: torch.Tensor) -> None:
    """SAELens' own Matryoshka BatchTopK training loss on the fixed batch (no dead latents, so no AuxK), with the
    training SAE saved by its own save_model."""
    from sae_lens.saes import MatryoshkaBatchTopKTrainingSAE, MatryoshkaBatchTopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    cfg = MatryoshkaBatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=8, matryoshka_widths=[16, 48, D_SAE],
                                               rescale_acts_by_decoder_norm=False)  # fmt: skip
    sae = MatryoshkaBatchTopKTrainingSAE(cfg)
    randomize(sae, 30)
    sae.save_model(folder)
    step = sae.training_forward_pass(TrainStepInput(x, {}, None, 0, False))
    losses = {k: v.detach().reshape(1).float() for k, v in step.losses.items()}
    save_file(
        {"loss": step.loss.detach().reshape(1).float(), **losses}, str(folder / "expected_loss.safetensors")
    )


def sparsify(out: Path, x: torch.Tensor) -> None:
    from sparsify import SparseCoder, SparseCoderConfig

    sae = SparseCoder(D_IN, SparseCoderConfig(num_latents=D_SAE, k=8))
    randomize(sae, 40)
    folder = out / "layers.6"  # sparsify saves one folder per hookpoint
    sae.save_to_disk(folder)
    enc = sae.encode(x)
    codes = torch.zeros(N, D_SAE).scatter_(1, enc.top_indices, enc.top_acts)
    write_expected(folder, codes, sae.decode(enc.top_acts, enc.top_indices))
    sparsify_transcoders(out.parent / "sparsify_transcoders", x)


def sparsify_transcoders(out: Path, x: torch.Tensor) -> None:
    """sparsify's transcoders (`transcode=True`, with and without `skip_connection`) of the hookpoint layers.6.mlp
    (the MLP module's input -> its output; d_in = d_out = 64 in sparsify); `recon` is sparsify's own forward
    (`sae_out`: decoded top-k codes plus x W_skip^T), the prediction of the target."""
    from sparsify import SparseCoder, SparseCoderConfig

    for seed, (name, skip) in enumerate({"transcoder": False, "skip_transcoder": True}.items(), start=45):
        sae = SparseCoder(
            D_IN, SparseCoderConfig(num_latents=D_SAE, k=8, transcode=True, skip_connection=skip)
        )
        randomize(sae, seed)
        folder = out / name / "layers.6.mlp"
        sae.save_to_disk(folder)
        with torch.no_grad():
            enc = sae.encode(x)
            codes = torch.zeros(N, D_SAE).scatter_(1, enc.top_indices, enc.top_acts)
            write_expected(folder, codes, sae(x).sae_out)


def dictionary_learning(out: Path, x: torch.Tensor) -> None:
    """Each trainer's dictionary through dictionary_learning's own trainSAE (0 steps: it saves ae.pt and
    config.json), then random weights written back with the same torch.save of the state dict trainSAE does."""
    from dictionary_learning.dictionary import AutoEncoder, JumpReluAutoEncoder
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE, BatchTopKTrainer
    from dictionary_learning.trainers.jumprelu import JumpReluTrainer
    from dictionary_learning.trainers.matryoshka_batch_top_k import (
        MatryoshkaBatchTopKSAE,
        MatryoshkaBatchTopKTrainer,
    )
    from dictionary_learning.trainers.standard import StandardTrainer
    from dictionary_learning.trainers.top_k import AutoEncoderTopK, TopKTrainer
    from dictionary_learning.training import trainSAE

    common = {"steps": 2, "warmup_steps": 0, "activation_dim": D_IN, "dict_size": D_SAE, "layer": 6, "lm_name": "gpt2",
              "device": "cpu"}  # fmt: skip
    trainers = {
        "topk": ({"trainer": TopKTrainer, "k": 8, **common}, AutoEncoderTopK),
        "batchtopk": ({"trainer": BatchTopKTrainer, "k": 8, **common}, BatchTopKSAE),
        "matryoshka": ({"trainer": MatryoshkaBatchTopKTrainer, "k": 8, "group_fractions": [0.125, 0.25, 0.625],
                        **common}, MatryoshkaBatchTopKSAE),
        "jumprelu": ({"trainer": JumpReluTrainer, "sparsity_warmup_steps": 0, **common}, JumpReluAutoEncoder),
        "standard": ({"trainer": StandardTrainer, "sparsity_warmup_steps": 0, **common}, AutoEncoder),
    }  # fmt: skip
    for seed, (name, (config, cls)) in enumerate(trainers.items(), start=50):
        folder = out / name
        trainSAE(iter([x]), [dict(config)], steps=0, save_dir=str(folder), device="cpu")
        trained = folder / "trainer_0"
        state = torch.load(trained / "ae.pt", weights_only=True)
        ae = cls.from_pretrained(str(trained / "ae.pt")) if name != "jumprelu" else _jumprelu(cls, state)
        randomize(ae, seed)
        if "threshold" in dict(ae.named_buffers()):
            ae.threshold.fill_(0.4)
        torch.save({k: v.cpu() for k, v in ae.state_dict().items()}, trained / "ae.pt")
        again = (
            cls.from_pretrained(str(trained / "ae.pt"))
            if name != "jumprelu"
            else _jumprelu(cls, torch.load(trained / "ae.pt", weights_only=True))
        )
        codes = again.encode(x)
        write_expected(trained, codes, again.decode(codes))


def _jumprelu(cls, state):
    ae = cls(D_IN, D_SAE)
    ae.load_state_dict(state)
    return ae


def gemma_scope(out: Path, x: torch.Tensor) -> None:
    """params.npz in Gemma Scope's published layout; expected codes from SAELens' JumpReLU SAE with those arrays
    and apply_b_dec_to_input=False (the settings SAELens' Gemma Scope loader uses)."""
    from sae_lens import SAE

    gen = torch.Generator().manual_seed(60)
    params = {
        "W_enc": torch.randn(D_IN, D_SAE, generator=gen) / 8, "W_dec": torch.randn(D_SAE, D_IN, generator=gen) / 8,
        "b_enc": torch.randn(D_SAE, generator=gen) * 0.3, "b_dec": torch.randn(D_IN, generator=gen) * 0.3,
        "threshold": torch.rand(D_SAE, generator=gen) * 0.3 + 0.05,
    }  # fmt: skip
    folder = out / "layer_6" / "width_128" / "average_l0_20"
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "params.npz", **{k: v.numpy() for k, v in params.items()})
    sae = SAE.from_dict(
        {"architecture": "jumprelu", "d_in": D_IN, "d_sae": D_SAE, "apply_b_dec_to_input": False}
    )
    sae.load_state_dict({k: torch.from_numpy(v) for k, v in np.load(folder / "params.npz").items()})
    codes = sae.encode(x)
    write_expected(folder, codes, sae.decode(codes))


def main(root: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(N, D_IN, generator=torch.Generator().manual_seed(1)) * 1.5
    root.mkdir(parents=True, exist_ok=True)
    save_file({"x": x}, str(root / "input.safetensors"))
    for name, writer in {"saelens": saelens, "sparsify": sparsify, "dictionary_learning": dictionary_learning,
                         "gemma_scope": gemma_scope}.items():  # fmt: skip
        try:
            writer(root / name, x)
        except ImportError as e:
            print(f"skipped {name}: {e}")
    (root / "versions.json").write_text(json.dumps(_versions(), indent=1))


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("torch", "sae-lens", "eai-sparsify", "dictionary-learning", "numpy"):
        with contextlib.suppress(PackageNotFoundError):
            out[package] = version(package)
    return out


def roundtrip(converted: Path, root: Path) -> None:
    """Load with SAELens the SAELens files interp wrote into each converted folder (converted/<golden path>, e.g.
    by `interp import`) and print the max abs difference of SAELens' codes from the original library's."""
    from sae_lens import SAE
    from safetensors.torch import load_file

    x = load_file(str(root / "input.safetensors"))["x"]
    for expected in sorted(root.rglob("expected.safetensors")):
        folder = converted / expected.parent.relative_to(root)
        if not (folder / "cfg.json").exists():
            continue
        with torch.no_grad():
            codes = SAE.load_from_disk(folder).encode(x)
        diff = float((codes - load_file(str(expected))["codes"]).abs().max())
        print(
            f"{str(expected.parent.relative_to(root)):45s} SAELens codes of interp's export: max abs diff {diff:.2e}"
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--roundtrip"]:
        roundtrip(Path(sys.argv[2]), Path(__file__).parent)
    else:
        main(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent))
