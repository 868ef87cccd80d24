"""Other libraries' dictionaries: SAELens export, and import of SAELens, sparsify, dictionary_learning and
Gemma Scope files into interp decomposer folders (see imported.py). `FORMATS` is the one table of readers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interp.decompose.formats.imported import FormatError, Imported, replace, to_decomposer, write_imported


@dataclass(frozen=True)
class Format:
    detect: Callable[[Path], bool]
    read: Callable[..., Any]
    """(path, **flags) -> Imported"""
    looks_like: str


def _saelens(folder: Path) -> bool:
    from interp.decompose.formats.saelens import SAELENS_CONFIG, SAELENS_WEIGHTS

    return (folder / SAELENS_CONFIG).exists() and (folder / SAELENS_WEIGHTS).exists()


def _reader(module: str, name: str) -> Callable[..., Any]:
    def read(path: Path, **flags):
        import importlib

        return getattr(importlib.import_module(f"interp.decompose.formats.{module}"), name)(path, **flags)

    return read


def _detector(module: str, name: str) -> Callable[[Path], bool]:
    def detect(path: Path) -> bool:
        import importlib

        return getattr(importlib.import_module(f"interp.decompose.formats.{module}"), name)(path)

    return detect


FORMATS: dict[str, Format] = {
    "saelens": Format(_saelens, _reader("saelens", "read_saelens"), "cfg.json + sae_weights.safetensors"),
    "sparsify": Format(_detector("sparsify", "is_sparsify"), _reader("sparsify", "read_sparsify"),
                       "cfg.json + sae.safetensors (one folder per hookpoint)"),
    "dictionary_learning": Format(_detector("dictionary_learning", "is_dictionary_learning"),
                                  _reader("dictionary_learning", "read_dictionary_learning"), "ae.pt + config.json"),
    "gemma_scope": Format(_detector("gemma_scope", "is_gemma_scope"), _reader("gemma_scope", "read_gemma_scope"),
                          "params.npz"),
}  # fmt: skip
FLAGS_READ = {
    "gemma_scope": ("model_name", "site"),
    "sparsify": ("model_name",),
}  # files lacking the metadata


def detect_format(path: str | Path) -> str | None:
    """The name of the format of the dictionary at `path`, or None."""
    path = Path(path)
    return next((name for name, spec in FORMATS.items() if spec.detect(path)), None)


def read_dictionary(path: str | Path, format: str | None = None, **flags) -> Imported:
    """Read the dictionary at `path` (format detected unless given) as an `Imported`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    format = format or detect_format(path)
    if format is None and path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.is_dir() and detect_format(p))
        if inside:
            raise FormatError(f"{path} holds several dictionaries; pick one: {', '.join(inside)}")
    if format not in FORMATS:
        known = "; ".join(f"{name}: {spec.looks_like}" for name, spec in FORMATS.items())
        raise FormatError(f"no dictionary format {format!r} recognised at {path}; interp reads {known}")
    allowed = FLAGS_READ.get(format, ())
    return FORMATS[format].read(path, **{k: v for k, v in flags.items() if k in allowed and v})


def import_dictionary(
    source: str | Path,
    out: str | Path,
    format: str | None = None,
    model_name: str = "",
    site: str | None = None,
    store: str | Path | None = None,
) -> tuple[Any, Imported]:
    """Convert the dictionary at `source` into the interp folder `out`; with `store`, check its d_in and site
    against that store and record it (source.json) so `interp index` / `evaluate` find it. Returns (decomposer,
    what was read)."""
    from interp.decompose.base import write_source
    from interp.models.sites import parse_site, site_of_hook
    from interp.store import ActivationStore

    opened = ActivationStore.open(store) if store is not None else None
    known_model = model_name or (opened.manifest.model if opened is not None else "")
    imported = read_dictionary(source, format, model_name=known_model, site=site)
    changes: dict[str, Any] = {"model_name": model_name} if model_name else {}
    if site:
        changes["site"] = parse_site(site).name
    elif imported.site is None:
        site_of_hook(imported.hook_name or "(none)")  # raises, naming the hook and the --site fix
    imported = replace(imported, **changes)
    if opened is not None:
        if opened.manifest.d != imported.d_in:
            raise FormatError(
                f"the dictionary reads d_in={imported.d_in} but the store {store} holds {opened.manifest.d}-wide "
                f"activations of {opened.site}; use a store of the dictionary's site ({imported.site})"
            )
        if opened.site != imported.site:
            raise FormatError(
                f"the dictionary was trained on {imported.site} but the store {store} is {opened.site}; "
                "pass a store of that site, or --site if the hook name was mapped wrongly"
            )
    decomposer = write_imported(out, imported)
    if opened is not None:
        write_source(out, opened)
    return decomposer, imported


def load_foreign(folder: str | Path) -> Any | None:
    """The decomposer in another library's folder at `folder` (read as `interp import` would), or None."""
    folder = Path(folder)
    return to_decomposer(read_dictionary(folder)) if folder.exists() and detect_format(folder) else None
