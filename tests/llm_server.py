"""A real OpenAI-compatible server for tests: `transformers serve` on a tiny planted chat model, offline.

The model answers by table: its reply depends only on the last word of the prompt (all its layers add zero, so
the last position's logits are the unembedding of that word's embedding, and the unembedding maps each word to
its planted successor, then to end-of-text). So the server gives known replies to known prompts: the tests
check the pipeline against planted truth, through a real HTTP server and the real `openai` client.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import torch

SPECIAL = ["<unk>", "<bos>", "<eos>"]


def planted_chat_model(folder: Path, replies: dict[str, str]) -> Path:
    """Save a Llama-architecture chat model whose reply to a prompt ending in word w is `replies[w]` (one token),
    and an empty reply to any other prompt."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = SPECIAL + list(replies) + [r for r in replies.values() if r not in replies]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    d = 64
    assert len(vocab) <= d
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<bos>",
                                        eos_token="<eos>", pad_token="<eos>")  # fmt: skip
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    config = LlamaConfig(vocab_size=d, hidden_size=d, intermediate_size=2 * d, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=4, head_dim=16, max_position_embeddings=8192,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=False)  # fmt: skip
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.model.embed_tokens.weight.copy_(torch.eye(d))
        model.model.norm.weight.fill_(1.0)
        for layer in model.model.layers:
            layer.input_layernorm.weight.fill_(1.0)
            layer.post_attention_layernorm.weight.fill_(1.0)
        successor = {vocab[w]: vocab[r] for w, r in replies.items()}
        for i in range(d):
            model.lm_head.weight[successor.get(i, vocab["<eos>"]), i] = 10.0
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 2
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command() -> list[str] | None:
    """`transformers serve` of this venv, or None when transformers[serving] is not installed."""
    import importlib.util

    if any(importlib.util.find_spec(m) is None for m in ("fastapi", "uvicorn", "openai")):
        return None
    script = Path(sys.executable).parent / "transformers"
    return [str(script), "serve"] if script.exists() else None


class Server:
    """`transformers serve FOLDER` on a free localhost port; `stop()` ends only the process it started."""

    def __init__(self, folder: Path, log: Path, start_timeout: float = 120.0):
        command = serve_command()
        if command is None:
            raise RuntimeError("transformers[serving] is not installed")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.model = str(folder)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        self.log = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(command + [str(folder), "--host", "127.0.0.1", "--port",
                                                       str(self.port), "--device", "cpu"],
                                            stdout=out, stderr=subprocess.STDOUT, env=env)  # fmt: skip
        deadline = time.monotonic() + start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"transformers serve exited: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(
            f"transformers serve did not start in {start_timeout} s: {log.read_text()[-2000:]}"
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
