"""Two stores of one capture read side by side: a transcoder's input site and its target site, row for row.

`PairedStore(input, target)` reads like the input store whose rows are `[x | y]`, `[n, d_in + d_target]`, so a
trainer that draws row numbers from one store draws the same tokens from both. Stores of different captures
(other token ids, positions, row counts, shard sizes or packing) are refused: their rows are other tokens.
"""

from __future__ import annotations

import torch

from interp.store.activations import ActivationStore
from interp.store.manifest import StoreError

PACKING = ("model", "corpus_fingerprint", "context_len", "drop_bos")
"""Manifest fields two stores of one capture share (the site, width and dtype may differ)."""


class PairedStore(ActivationStore):
    """Rows `[x | y]` of an input store and a target store captured in the same run."""

    def __init__(self, input_store: ActivationStore, target: ActivationStore):
        super().__init__(input_store.path, input_store.manifest)
        self.input, self.target = input_store, target
        check_paired(input_store, target)

    @property
    def d(self) -> int:
        return self.input.d + self.target.d

    @property
    def d_target(self) -> int:
        return self.target.d

    def fingerprint(self) -> dict:
        return {**self.input.fingerprint(), "target": self.target.fingerprint()}

    def load_shard(self, index: int) -> dict[str, torch.Tensor]:
        shard = dict(self.input.load_shard(index))
        target = self.target.load_shard(index)["acts"].to(shard["acts"].dtype)
        shard["acts"] = torch.cat([shard["acts"], target], dim=1)
        return shard

    def read_rows(self, rows: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.cat([self.input.read_rows(rows, dtype), self.target.read_rows(rows, dtype)], dim=1)

    def __repr__(self) -> str:
        return f"PairedStore({self.input.path} -> {self.target.path}, n_tokens={self.n_tokens})"


def check_paired(input_store: ActivationStore, target: ActivationStore) -> None:
    """Raise StoreError unless the two stores hold the same tokens in the same rows and shards."""
    a, b = input_store.manifest, target.manifest
    fix = (
        "capture both sites in one run (interp capture --sites 9.mlp_in,9.mlp_out) and pass those two stores"
    )
    where = f"the input store {input_store.path} and the target store {target.path}"
    if a.n_tokens != b.n_tokens or [s.n_tokens for s in a.shards] != [s.n_tokens for s in b.shards]:
        raise StoreError(
            f"{where} hold other numbers of rows ({a.n_tokens} vs {b.n_tokens}) or shards; {fix}"
        )
    differing = [k for k in PACKING if getattr(a, k) != getattr(b, k)]
    if differing:
        raise StoreError(f"{where} differ in {', '.join(differing)} (other captures); {fix}")
    ta, tb = input_store.tokens(), target.tokens()
    for key in ("token_ids", "context_ids", "positions"):
        if not torch.equal(ta[key], tb[key]):
            raise StoreError(f"{where} hold other {key.replace('_', ' ')} in the same rows; {fix}")
