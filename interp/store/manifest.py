"""What a store folder holds: its manifest (model, site, width, dtype, the packing it came from, the shards)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from interp import __version__

MANIFEST = "manifest.json"
CONTEXTS_FILE = "contexts.safetensors"  # in the run folder, beside its sites' stores


FORMAT_VERSION = 1


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class StoreError(ValueError):
    """A store on disk is missing, corrupt, or does not match what is asked of it."""


@dataclass
class ShardInfo:
    file: str
    n_tokens: int
    n_bytes: int
    context_start: int  # first context index (in corpus order) held by this shard
    context_end: int  # one past the last context index


@dataclass
class StoreManifest:
    model: str
    site: str
    d: int
    dtype: str
    corpus_fingerprint: str
    context_len: int
    drop_bos: bool
    shards: list[ShardInfo] = field(default_factory=list)
    interp_version: str = __version__
    format_version: int = FORMAT_VERSION

    @property
    def n_tokens(self) -> int:
        return sum(s.n_tokens for s in self.shards)

    @property
    def n_contexts(self) -> int:
        return self.shards[-1].context_end if self.shards else 0

    def to_json(self) -> dict:
        return {**asdict(self), "n_tokens": self.n_tokens, "n_contexts": self.n_contexts}

    @classmethod
    def from_json(cls, data: dict) -> StoreManifest:
        data = dict(data)
        data.pop("n_tokens", None)
        data.pop("n_contexts", None)
        if data.get("format_version") != FORMAT_VERSION:
            raise StoreError(
                f"store format version {data.get('format_version')} is not {FORMAT_VERSION}; "
                "re-run `interp capture` into a new --out folder"
            )
        shards = [ShardInfo(**s) for s in data.pop("shards")]
        return cls(**data, shards=shards)
