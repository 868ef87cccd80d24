"""One table from several `interp steer-eval` runs (the SNMF paper's comparison spans sites: SNMF, the SAE on
`mlp_hidden`, DiM and random are found at `L.mlp_hidden`; the SAE on `mlp_out` at `L.mlp_out`), also while they run.

    python benchmarks/steer_paper_table.py cache/steer/paper/9.mlp_hidden cache/steer/paper/9.mlp_out ...

Reads each run's config.json and cells.jsonl (finished cells only), refuses runs whose sampling or judge settings
differ, selects each method's strength per concept on the selection prompts (as the report does) and prints the
test scores with 95% bootstrap intervals, paired differences, and how many of each method's cells are done. The
means are over the concepts every method has a selected cell for (the others are named as left out).
`--by-target` adds the paper's view: at each KL target, no strength selection, each method's test concept score
and on-topic rate (cells that did not reach their target are left out and counted).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from interp.steer.report import UNSTEERED, markdown, score_tensor, select_strengths
from interp.steer.stats import Draws, bootstrap, paired_difference

SHARED = ("model", "concepts", "concept_names", "per_concept", "prompts", "select_prompts", "n_samples",
          "max_new_tokens", "top_k", "top_p", "seed", "judge", "kl_targets", "signs")  # fmt: skip
KEYS = ("score", "on_topic", "concept", "fluency")


def load_run(folder: Path) -> tuple[dict, list[dict]]:
    config = json.loads((folder / "config.json").read_text())
    cells = []
    for line in (
        (folder / "cells.jsonl").read_text().splitlines() if (folder / "cells.jsonl").exists() else []
    ):
        try:
            cells.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            continue
    return config, cells


def merge(folders: list[Path]) -> tuple[dict, list[dict], list[dict], dict[str, int]]:
    """(shared config, steered rows with unique method names, unsteered rows, planned cells per method)."""
    runs = [load_run(f) for f in folders]
    first = runs[0][0]
    for folder, (config, _) in zip(folders, runs, strict=True):
        differ = [k for k in SHARED if config.get(k) != first.get(k)]
        if differ:
            raise SystemExit(f"{folder} differs from {folders[0]} in {differ}: its scores are not comparable")
    in_runs: dict[str, int] = {}
    for _, cells in runs:
        for method in {r["method"] for r in cells} - {UNSTEERED}:
            in_runs[method] = in_runs.get(method, 0) + 1
    rows, unsteered, planned = [], {}, {}
    for config, cells in runs:
        n_concepts = len(config["concept_names"]) or len({r["concept"] for r in cells})
        for row in cells:
            if row["method"] == UNSTEERED:
                unsteered.setdefault(row["concept"], row)  # the same prompts and seed in every run
                continue
            name = row["method"] + (f"@{config['site']}" if in_runs[row["method"]] > 1 else "")
            rows.append({**row, "method": name})
            planned[name] = len(config["kl_targets"]) * len(config["signs"]) * n_concepts
    return first, rows, list(unsteered.values()), planned


def table(folders: list[Path]) -> str:
    config, rows, unsteered, planned = merge(folders)
    chosen = select_strengths(rows) | {(r["concept"], UNSTEERED): r for r in unsteered}
    methods = [*dict.fromkeys(r["method"] for r in rows), UNSTEERED]
    concepts = [
        c for c in dict.fromkeys(r["concept"] for r in unsteered) if all((c, m) in chosen for m in methods)
    ]
    left_out = sorted({r["concept"] for r in unsteered} - set(concepts))
    shape = (len(config["prompts"]), config["n_samples"])
    draws = Draws.make(*shape)
    done = {m: sum(r["method"] == m for r in rows) for m in methods}
    site = {r["method"]: r["site"] for r in rows}
    body = []
    for m in methods:
        cells = [str(bootstrap(score_tensor(chosen, m, concepts, shape, k), draws)) for k in KEYS]
        body.append(
            [m, site.get(m, "-"), *cells, f"{done[m]} / {planned.get(m, 0)}" if m != UNSTEERED else "-"]
        )
    features = [m for m in methods if not m.startswith(("diff_in_means", "random", UNSTEERED))]
    baselines = [m for m in methods if m.startswith(("diff_in_means", "random"))] + [UNSTEERED]
    pairs = [(a, b) for a in features for b in baselines] + [(b, UNSTEERED) for b in baselines[:-1]]
    pairs += [(a, b) for i, a in enumerate(features) for b in features[i + 1 :]]
    diffs = []
    for a, b in pairs:
        d = paired_difference(*(score_tensor(chosen, m, concepts, shape) for m in (a, b)), draws)
        verdict = "higher" if d.lo > 0 else "lower" if d.hi < 0 else "not distinguishable"
        diffs.append([f"{a} - {b}", str(d), verdict])
    note = f"concepts: {', '.join(concepts) or 'none yet'}" + (f"; left out (not every method has a cell): "
                                                               f"{', '.join(left_out)}" if left_out else "")  # fmt: skip
    return "\n".join([f"Judge: {config['judge']}. {config['n_samples']} samples x {shape[0]} test prompts x "
                      f"{config['max_new_tokens']} tokens per cell; {note}.", "",
                      markdown(["method", "steered at", *KEYS, "cells done"], body), "",
                      markdown(["difference", "mean [95%]", ""], diffs)]) + "\n"  # fmt: skip


def by_target(folders: list[Path], keys: tuple[str, ...] = ("concept", "on_topic")) -> str:
    """Per KL target: each method's test `keys` over the concepts whose cell reached that target."""
    config, rows, _, _ = merge(folders)
    shape = (len(config["prompts"]), config["n_samples"])
    draws = Draws.make(*shape)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    body = []
    for target in sorted({r["target"] for r in rows}):
        cells = {(r["concept"], r["method"]): r for r in rows if r["target"] == target and r["reached"]}
        line = [f"{target:g}"]
        for m in methods:
            concepts = [c for (c, name) in cells if name == m]
            missed = sum(r["method"] == m and r["target"] == target and not r["reached"] for r in rows)
            values = [str(bootstrap(score_tensor(cells, m, concepts, shape, k), draws)) for k in keys] \
                if concepts else ["-"] * len(keys)  # fmt: skip
            line.append(" / ".join(values) + (f" ({missed} not reached)" if missed else ""))
        body.append(line)
    return (f"Test {' / '.join(keys)} per KL target (mean over the concepts that reached it [95%]):\n\n"
            + markdown(["KL target", *methods], body) + "\n")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--by-target", action="store_true", help="also the per-KL-target table")
    args = parser.parse_args()
    print(table(args.runs))
    if args.by_target:
        print(by_target(args.runs))


if __name__ == "__main__":
    main()
