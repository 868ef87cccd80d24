"""The table "format x architecture: loads / codes equal to the library's (max abs diff)" over every golden fixture
in tests/golden (written by the libraries themselves: tests/golden/make_golden.py).

    python benchmarks/formats_table.py [--saelens /tmp/peers/bin/python]

Per fixture: interp reads the library's folder (as `load_decomposer` / `interp import` do) and encodes the fixed
batch tests/golden/input.safetensors; `codes` is the max abs difference from the library's own codes, `recon` of
interp's reconstruction (a transcoder's y_hat, W_skip x included) from the library's. Then the fixture is converted
(`import_dictionary`) and the SAELens files interp writes beside its own are read back by interp's SAELens reader
(`export`), and, with `--saelens` (a venv with sae-lens), loaded by SAELens itself (`SAELens loads export`: its
codes against the original library's, via make_golden.py --roundtrip).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from interp.decompose.formats import import_dictionary, read_dictionary
from interp.decompose.formats.imported import to_decomposer
from interp.decompose.formats.saelens import read_saelens

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "golden"


def fixtures(root: Path = GOLDEN) -> list[Path]:
    """Every folder with the library's expected.safetensors (params.npz folders included)."""
    return sorted(p.parent for p in root.rglob("expected.safetensors"))


def _full(decomposer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, recon): a transcoder's recon is its prediction of the target (W_skip x included)."""
    codes = decomposer.encode(x)
    target = getattr(decomposer, "reconstruct_target", None)
    return codes, (target(x) if target is not None else decomposer.decode(codes))


def _diff(a: torch.Tensor, b: torch.Tensor) -> str:
    return f"{float((a - b).abs().max()):.1e}"


def measure(folder: Path, x: torch.Tensor, converted: Path) -> dict[str, str]:
    """One row: the fixture read by interp, and the SAELens files of its converted copy read back."""
    want = load_file(str(folder / "expected.safetensors"))
    row = {"fixture": str(folder.relative_to(GOLDEN)), "loads": "no", "method": "-", "codes": "-", "recon": "-",
           "fire": "-", "export": "-"}  # fmt: skip
    try:
        imported = read_dictionary(folder)
        decomposer = to_decomposer(imported)
    except Exception as e:  # a row of the table, not a crash: say why it does not load
        row["loads"] = f"no: {e}"
        return row
    codes, recon = _full(decomposer, x)
    row.update(loads="yes", method=imported.architecture, codes=_diff(codes, want["codes"]),
               recon=_diff(recon, want["recon"]), fire="yes" if torch.equal(codes > 0, want["codes"] > 0) else "NO")  # fmt: skip
    out = converted / row["fixture"]
    import_dictionary(folder, out, site=None if imported.site else "6.resid_post")
    if (out / "cfg.json").exists():
        back, _ = _full(to_decomposer(read_saelens(out)), x)
        row["export"] = _diff(back, want["codes"])
    else:
        row["export"] = "n/a (SAELens has no such architecture: TopK transcoder)"
    return row


def saelens_roundtrip(python: str, converted: Path) -> dict[str, str]:
    """fixture -> max abs diff of SAELens' own codes of interp's export from the original library's."""
    script = GOLDEN / "make_golden.py"
    proc = subprocess.run(
        [python, str(script), "--roundtrip", str(converted)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"SAELens round trip failed: {proc.stderr.strip().splitlines()[-1:]}")
    rows = [line.split() for line in proc.stdout.splitlines() if "max abs diff" in line]
    return {parts[0]: parts[-1] for parts in rows}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--saelens", default=None, help="python of a venv with sae-lens: SAELens loads the export"
    )
    args = parser.parse_args()
    x = load_file(str(GOLDEN / "input.safetensors"))["x"]
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        rows = [measure(folder, x, Path(tmp)) for folder in fixtures()]
        by_saelens = saelens_roundtrip(args.saelens, Path(tmp)) if args.saelens else {}
    head = ["fixture", "interp method", "loads", "codes max abs diff", "recon / y_hat max abs diff",
            "same latents fire", "SAELens export read back (codes)"] + (["SAELens loads export (codes)"] if args.saelens else [])  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        cells = [row[k] for k in ("fixture", "method", "loads", "codes", "recon", "fire", "export")]
        if args.saelens:
            cells.append(by_saelens.get(row["fixture"], "n/a"))
        print("| " + " | ".join(cells) + " |")
    versions = json.loads((GOLDEN / "versions.json").read_text())
    print(
        f"\n{len(rows)} fixtures, batch of {x.shape[0]} rows, d_in {x.shape[1]}; written by "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
    )


if __name__ == "__main__":
    main()
