"""Fingerprints of a long job's settings and data, and the one check every checkpoint makes before resuming.

A fingerprint is a JSON-ready dict: `{"settings": {...}, "data": {...}}`. The settings are a config's fields
without those that cannot change the result (`RESULT_FREE`: where the job runs, how often it saves, whether it
shows progress); the data is what the job reads (a store's path, row count and manifest hash, or a tensor's shape
and checksums). A checkpoint saves its fingerprint; a resume compares and refuses on any difference, naming each
field as `name: old -> new`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import torch

RESULT_FREE = frozenset({"device", "checkpoint_every", "progress"})
"""Config fields that never change a job's result (for equal results on every device)."""


def plain(value: Any) -> Any:
    """`value` as JSON would read it back (tuples as lists, dataclasses as dicts)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def free_fields(config: Any, resume: bool = False) -> set[str]:
    """Fields of `config` left out of its fingerprint: `RESULT_FREE`, the config class's own `RESULT_FREE` (e.g.
    SNMF's streaming switches) and, for a checkpoint (`resume`), its `RESUME_FREE` (fields a resumed job may change,
    e.g. SNMF's max_iter, or settings used only after the fit)."""
    extra = set(getattr(config, "RESULT_FREE", ()))
    return RESULT_FREE | extra | (set(getattr(config, "RESUME_FREE", ())) if resume else set())


def settings_of(config: Any, ignore: set[str] | frozenset[str] | None = None, resume: bool = False) -> dict:
    """The fields of `config` (a dataclass or a dict) that change results: all but `ignore` (default:
    `free_fields(config, resume)`)."""
    ignore = free_fields(config, resume) if ignore is None else ignore
    return {k: v for k, v in plain(config).items() if k not in ignore}


def tensor_digest(x: torch.Tensor) -> list:
    """A cheap checksum of a tensor: its shape and three float64 sums (one pass over it)."""
    d = x.detach().double()
    return [list(d.shape), float(d.sum()), float(d.abs().sum()), float(d.square().sum())]


def json_digest(data: Any) -> str:
    """A short sha256 of `data` as sorted JSON."""
    return hashlib.sha256(json.dumps(plain(data), sort_keys=True).encode()).hexdigest()[:16]


def make_fingerprint(settings: dict, data: dict) -> dict:
    """The fingerprint of a job: its result-changing settings and what it reads."""
    return plain({"settings": settings, "data": data})


def differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """The fields where two fingerprints (or any nested dicts) differ, as `name: old -> new`."""
    out = []
    for key in sorted(set(saved) | set(current), key=str):
        old, new = saved.get(key, "(unset)"), current.get(key, "(unset)")
        name = f"{prefix}{key}"
        if isinstance(old, dict) and isinstance(new, dict):
            out += differences(old, new, f"{name}.")
        elif old != new:
            out.append(f"{name}: {_short(old)} -> {_short(new)}")
    return out


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def check_same(
    saved: dict | None, current: dict, what: str, fix: str, error: type[Exception] = ValueError
) -> None:
    """Refuse to resume `what` when its saved fingerprint differs from `current`; `saved` None (a checkpoint from
    before fingerprints) passes. The message names every differing field and `fix`."""
    if saved is None:
        return
    diff = differences(saved, current)
    if diff:
        raise error(f"{what} was made with other settings ({'; '.join(diff)}); {fix}")
