"""Judge a steering run's texts again with the LLM judge, without the steered model (`interp steer-judge`).

Reads a finished or partial `steer-eval` folder (`config.json`, `cells.jsonl`, `detection.csv`) and writes a new
folder in the same format, so interp.steer.report and benchmarks/steer_paper_table.py read it:
- `config.json`: the run's, with `judge` set to the new judge; `rejudge.json`: the source folder and the judge's
  endpoint settings (a resume with other ones is refused, naming them)
- `cells.jsonl`: every source cell (unsteered rows included) with the new judge's scores; a rerun judges only the
  cells not yet there (also the cells a partial source run has added since)
- `detection.csv` (copied), `results.*`, `summary.md` and the figures, as the run writes them
- `llm_replies.jsonl`: the judge's replies by request (a request asked before is not sent again)

Judges: `llm` (the AxBench ratings are the scores) or `both` (the source run's offline scores of the same texts
are kept under `offline_*`, the LLM's are the scores, `spearman` per cell). Re-scoring offline needs the model's
perplexities: use `steer-eval` for that.

Strength selection stays held out: when a cell kept its selection texts (`select_texts`, runs since this module),
they are judged and the new judge's selection scores choose the strength; a cell from an older run without them
keeps its source selection scores (the source judge chooses, still on the selection prompts only), and summary.md
says how many cells were chosen that way.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from interp.core.fingerprint import check_same, make_fingerprint
from interp.core.io import atomic_write_json
from interp.steer.detection import Detection
from interp.steer.llm_judge import Complete, check_complete
from interp.steer.report import UNSTEERED, Layout, write_results
from interp.steer.run import BASELINES, cell_key, finished_cells, read_cells
from interp.steer.scoring import SCORES, combined, llm_ratings

REJUDGE_MODES = ("llm", "both")
SETTINGS_FILE = "rejudge.json"


class RejudgeError(ValueError):
    """A run that cannot be judged again (missing, without texts, other settings)."""


@dataclass(frozen=True)
class Source:
    """A steering run's folder as the rejudge reads it."""

    folder: Path
    config: dict
    cells: list[dict]  # in the file's order: the unsteered rows first, then the grid
    detections: list[Detection]

    @classmethod
    def read(cls, folder: Path) -> Source:
        missing = [n for n in ("config.json", "cells.jsonl", "detection.csv") if not (folder / n).exists()]
        if missing:
            raise RejudgeError(f"{folder} is not a steer-eval run folder (no {', '.join(missing)}); pass the --out "
                               "folder of an `interp steer-eval` run that has finished at least one cell")  # fmt: skip
        cells, _ = read_cells(folder / "cells.jsonl")  # a torn last line: being written by a run still going
        untexted = [f"{c['concept']} / {c['method']}" for c in cells if not c.get("texts")]
        if not cells or untexted:
            raise RejudgeError(f"the cells of {folder} have no generated texts to judge "
                               f"({', '.join(untexted[:3]) or 'no cells yet'}); rerun `interp steer-eval`")  # fmt: skip
        import pandas as pd

        detections = [Detection(**row) for row in pd.read_csv(folder / "detection.csv").to_dict("records")]
        return cls(folder, json.loads((folder / "config.json").read_text()), cells, detections)

    def instructions(self, split: str) -> list[str]:
        """The prompt each text of `split` continues (prompt-major, as the run samples)."""
        prompts = self.config["prompts" if split == "test" else "select_prompts"]
        return [p for p in prompts for _ in range(self.config["n_samples"])]


def _check_judge(mode: str, source: Source) -> None:
    if mode not in REJUDGE_MODES:
        raise RejudgeError(f"unknown judge {mode!r} for steer-judge; valid: {', '.join(REJUDGE_MODES)} (re-scoring "
                           "offline needs the model's perplexities: rerun `interp steer-eval --judge offline`)")  # fmt: skip
    if mode == "both" and not all("offline_score" in c["test"] for c in source.cells):
        raise RejudgeError(f"the run in {source.folder} has no offline scores to compare with (judge "
                           f"{source.config.get('judge')!r}); use --judge llm")  # fmt: skip


def _check_resume(out: Path, settings: dict) -> None:
    saved = out / SETTINGS_FILE
    if (out / "config.json").exists() and not saved.exists():
        raise RejudgeError(f"{out} holds a steer-eval run, not a rejudged one; pass another --out")
    if saved.exists():
        check_same(make_fingerprint(json.loads(saved.read_text()), {}), make_fingerprint(settings, {}),
                   f"the rejudged run in {out}", "rejudge with the same settings, or pass another --out",
                   RejudgeError)  # fmt: skip


def rejudge(source_folder: Path, out: Path, mode: str, complete: Complete, endpoint: dict | None = None,
            check: Complete | None = None, progress: bool = True) -> list[dict]:  # fmt: skip
    """Judge every cell of the run in `source_folder` with `mode` into `out` (resumable); returns the judged cells.

    `complete` sends the judge's prompts; `check` (default `complete`) is asked once before anything is written,
    so an unreachable endpoint leaves no folder. `endpoint` (model, max_tokens, ...) is recorded in rejudge.json."""
    source = Source.read(Path(source_folder))
    _check_judge(mode, source)
    if Path(out).resolve() == source.folder.resolve():
        raise RejudgeError("--out must be another folder than the run judged (the source is only read)")
    settings = {"source": str(source.folder.resolve()), "judge": mode, **(endpoint or {})}
    _check_resume(out, settings)
    check_complete(check or complete)
    out.mkdir(parents=True, exist_ok=True)
    # the settings first: a folder with a config.json alone is a steer-eval run's, which a resume refuses
    atomic_write_json(out / SETTINGS_FILE, settings)
    atomic_write_json(out / "config.json", {**source.config, "judge": mode})
    shutil.copyfile(source.folder / "detection.csv", out / "detection.csv")
    done = finished_cells(out / "cells.jsonl")
    todo = [c for c in source.cells if cell_key(c) not in done]
    for cell in tqdm(todo, desc="steer-judge", unit="cell", disable=not progress):
        row = judge_cell(cell, source, mode, complete)
        with open(out / "cells.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        done[cell_key(row)] = row
    rows = [done[cell_key(c)] for c in source.cells]
    _write_report(out, rows, source, mode, settings)
    return rows


def judge_cell(cell: dict, source: Source, mode: str, complete: Complete) -> dict:
    """`cell` with each split judged anew: the test texts always; the selection texts when the run kept them
    (else the source's selection scores stay, marked by `select_judge`)."""
    row = {
        **cell,
        "select_judge": mode if cell.get("select_texts") else source.config.get("judge", "offline"),
    }
    for split, texts in (("test", cell["texts"]), ("select", cell.get("select_texts"))):
        if not texts:
            continue
        kept = {f"offline_{k}": cell[split][f"offline_{k}"] for k in SCORES} if mode == "both" else {}
        ratings = llm_ratings(complete, texts, source.instructions(split), cell["concept"])
        row[split] = combined(mode, {**kept, **ratings})
    return row


def _write_report(out: Path, rows: list[dict], source: Source, mode: str, settings: dict) -> None:
    config = source.config
    unsteered = [r for r in rows if r["method"] == UNSTEERED]
    steered = [r for r in rows if r["method"] != UNSTEERED]
    methods = list(dict.fromkeys(r["method"] for r in steered))
    kept = sum(r["select_judge"] != mode for r in steered)
    note = (f"{config['n_samples']} samples x {len(config['prompts'])} test prompts x {config['max_new_tokens']} "
            f"tokens per cell; texts of {source.folder} judged again by {settings.get('model', 'the LLM')}")  # fmt: skip
    if kept:
        note += (f"; {kept} of {len(steered)} cells kept no selection texts (a run older than steer-judge): their "
                 "strength was chosen with the source judge's selection scores, still held out from the test prompts")  # fmt: skip
    layout = Layout(
        f"Steering evaluation: {config['model']}, detection at {config['site']}, concepts {config['concepts']}, "
        f"rejudged ({mode})", list(dict.fromkeys(r["concept"] for r in unsteered)), [*methods, UNSTEERED],
        [m for m in methods if not m.startswith(BASELINES)], {r["method"]: r["site"] for r in steered},
        (len(config["prompts"]), config["n_samples"]), mode, note,
    )  # fmt: skip
    write_results(out, steered, unsteered, source.detections, layout)
