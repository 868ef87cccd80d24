"""Execute the notebooks top to bottom with papermill, in a kernel on the Python running this script (its venv).

    python notebooks/run.py                                  # all notebooks, their own parameters (real model)
    python notebooks/run.py 01_quickstart -p n_tokens 5000   # one notebook, a parameter changed
    python notebooks/run.py --preset ci                      # the real model at CI's sizes (a few minutes each)
    python notebooks/run.py --preset tiny --cache /tmp/nbc   # the tiny model and sizes the tests use
    python notebooks/run.py --strip                          # clear outputs of notebooks/*.ipynb before a commit

Executed copies go to `--out` (default cache/notebooks/executed/, git-ignored), never back into notebooks/.
The kernel is a kernelspec written under `--out` that starts `sys.executable -m ipykernel_launcher`, so the
notebooks import the interp of this environment whatever other "python3" kernels are installed.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parent
ROOT = NOTEBOOKS.parent
KERNEL = "interp-python"
NAMES = ("01_quickstart", "02_feature_discovery", "03_causal_tests")

# What the tests pass: a tiny random model, small sizes (each notebook runs in well under a minute on a CPU).
_TINY_COMMON = {"model": "tiny-llama", "n_tokens": 1500, "context_len": 64, "device": "cpu"}
TINY: dict[str, dict] = {
    "01_quickstart": {**_TINY_COMMON, "n_features": 12, "max_iter": 20, "n_show": 3},
    "02_feature_discovery": {
        **_TINY_COMMON,
        "hierarchy": [16, 6, 3],
        "snmf_iter": 20,
        "sae_features": 64,
        "sae_k": 4,
        "sae_steps": 30,
        "batch_size": 256,
        "n_splice_contexts": 4,
        "n_show": 3,
    },
    "03_causal_tests": {
        **_TINY_COMMON,
        "n_features": 12,
        "max_iter": 20,
        "concept_names": ["sport", "tech"],
        "per_concept": 8,
        "strengths": [0.5, 2.0],
        "n_samples": 1,
        "max_new_tokens": 6,
    },
}

# CI's real-model stage: the default model with modest sizes (03 reuses the SNMF fit of 01: same settings).
_CI_COMMON = {"n_tokens": 10_000}
CI: dict[str, dict] = {
    "01_quickstart": {**_CI_COMMON, "n_features": 64, "max_iter": 100},
    "02_feature_discovery": {
        **_CI_COMMON,
        "hierarchy": [64, 16, 4],
        "snmf_iter": 100,
        "sae_features": 1024,
        "sae_k": 16,
        "sae_steps": 60,
        "batch_size": 1024,
        "n_splice_contexts": 4,
    },
    "03_causal_tests": {
        **_CI_COMMON,
        "n_features": 64,
        "max_iter": 100,
        "per_concept": 16,
        "strengths": [2.0],  # one strength: each cell samples and judges two prompt sets on the real model
        "n_samples": 1,
        "max_new_tokens": 8,
    },
}
PRESETS = {"tiny": TINY, "ci": CI}


def notebook_path(name: str) -> Path:
    path = NOTEBOOKS / (name if name.endswith(".ipynb") else f"{name}.ipynb")
    if not path.exists():
        valid = ", ".join(NAMES)
        raise FileNotFoundError(f"no notebook {path}; valid: {valid}")
    return path


def install_kernel(folder: Path) -> str:
    """Write a kernelspec for this interpreter under `folder` and put it first on JUPYTER_PATH; returns its name."""
    spec = folder / "kernels" / KERNEL
    spec.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": f"interp ({sys.executable})", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel, indent=1))
    paths = [str(folder), *[p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p]]
    os.environ["JUPYTER_PATH"] = os.pathsep.join(dict.fromkeys(paths))
    return KERNEL


def run_notebook(name: str, out_dir: Path, parameters: dict | None = None, timeout: int = 3600) -> Path:
    """Execute notebook `name` with `parameters` into `out_dir/<name>.ipynb` (raises on a failing cell, or on one
    running longer than `timeout` seconds)."""
    import papermill

    out_dir.mkdir(parents=True, exist_ok=True)
    kernel = install_kernel(out_dir / ".jupyter")
    target = out_dir / notebook_path(name).name
    papermill.execute_notebook(
        str(notebook_path(name)),
        str(target),
        parameters=parameters or {},
        kernel_name=kernel,
        cwd=str(ROOT),
        progress_bar=False,
        execution_timeout=timeout,
        start_timeout=300,  # a loaded machine can take a while to start a kernel
    )
    return target


def strip(path: Path) -> bool:
    """Clear outputs, execution counts and run metadata of a notebook in place; True when it changed."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    before = nbformat.writes(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        for key in ("execution", "papermill", "collapsed", "scrolled"):
            cell.metadata.pop(key, None)
    for key in ("papermill", "widgets"):
        nb.metadata.pop(key, None)
    after = nbformat.writes(nb)
    if after != before:
        path.write_text(after)
    return after != before


def _value(text: str) -> object:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", help=f"notebooks to run (default: {' '.join(NAMES)})")
    parser.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="a parameter (a Python literal or a string), for every notebook run")  # fmt: skip
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), help="tiny: the tests' model and sizes; ci: CI's"
    )
    parser.add_argument("--cache", help="interp cache for the runs (default: interp's, ./cache)")
    parser.add_argument(
        "--out", default=str(ROOT / "cache" / "notebooks" / "executed"), help="executed copies"
    )
    parser.add_argument(
        "--strip", action="store_true", help="clear the outputs of notebooks/*.ipynb and exit"
    )
    args = parser.parse_args(argv)
    if args.strip:
        for path in sorted(NOTEBOOKS.glob("*.ipynb")):
            print(("stripped " if strip(path) else "clean    ") + str(path.relative_to(ROOT)))
        return 0
    failed, total = [], time.perf_counter()
    for name in args.names or NAMES:
        params = dict(PRESETS[args.preset].get(name, {})) if args.preset else {}
        if args.cache:
            params["cache"] = str(Path(args.cache).resolve())
        params |= {key: _value(value) for key, value in args.param}
        started = time.perf_counter()
        try:
            target = run_notebook(name, Path(args.out), params)
            print(f"{name}: ok in {time.perf_counter() - started:.0f} s -> {target}", flush=True)
        except Exception as e:  # report every notebook, then fail
            failed.append(name)
            print(f"{name}: FAILED after {time.perf_counter() - started:.0f} s: {e}", flush=True)
    print(f"notebooks: {len(args.names or NAMES) - len(failed)} ok, {len(failed)} failed "
          f"in {time.perf_counter() - total:.0f} s")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
