"""`interp bench store`: fitted decomposers of a real site in one table, SAEBench's core metrics and sparse probing.

Per decomposer folder: reconstruction and sparsity on its store (interp.evaluate.recon: fvu, explained_variance,
l0, dead_fraction, alive_fraction, shrinkage), spliced-in next-token metrics (interp.evaluate.splice: ce_score =
CE loss recovered against zero-ablation, kl_score, kl, ce_delta), and on a labelled text set sparse probing and
TPP (interp.evaluate.probing). Results are kept per decomposer in `out/results/` (a rerun skips finished ones;
other settings are refused, naming them) and written as metrics.csv / report.md / frontier.html. What every
decomposer of a site shares is computed once and kept in `out/references/` (interp.evaluate.reference).
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

from interp.core.fingerprint import json_digest
from interp.core.io import atomic_write_json
from interp.corpus import Contexts
from interp.decompose import load_decomposer
from interp.decompose.base import CONFIG_FILE, read_source
from interp.evaluate.absorption import (
    AbsorptionConfig,
    TooFewTokens,
    absorption,
    from_letter_tensors,
    letter_probes,
    letter_tensors,
    store_letter_data,
)
from interp.evaluate.autointerp_scores import autointerp_scores
from interp.evaluate.bench import check_settings, collect_rows
from interp.evaluate.probing import Pooled, TextTokens, pool, sparse_probing, text_tokens, tpp
from interp.evaluate.recon import evaluate
from interp.evaluate.reference import cached, model_key
from interp.evaluate.report import write_report
from interp.evaluate.splice import reference_key, splice_reference, spliced_metrics
from interp.models import load_model
from interp.models.sites import parse_site
from interp.store import ActivationStore


@dataclass
class LabelledTexts:
    """Texts `[n]` with integer labels `[n]` (class_names[label]), and train / held-out index lists."""

    name: str
    texts: list[str]
    labels: list[int]
    class_names: list[str]
    train: list[int]
    test: list[int]


def _name(folder: Path, taken: set[str]) -> str:
    name = folder.name if folder.name not in taken else f"{folder.parent.name}-{folder.name}"
    taken.add(name)
    return name


def _store_for(folder: Path, store_path: Path | None) -> ActivationStore:
    source = read_source(folder)
    path = store_path or (Path(source["store"]) if source else None)
    if path is None:
        raise ValueError(f"{folder} does not say which store it was fitted on; pass --store")
    return ActivationStore.open(path)


Share = Callable[[str, dict, Callable[[], dict]], dict]
"""share(kind, key, compute): a decomposer-independent reference, computed once (interp.evaluate.reference)."""


def _no_share(kind: str, key: dict, compute: Callable[[], dict]) -> dict:
    return compute()


def core_metrics(decomposer, store: ActivationStore, max_tokens: int, model, n_contexts: int,
                 share: Share = _no_share) -> dict:  # fmt: skip
    """Reconstruction / sparsity, and the spliced-in scores when the store has its contexts."""
    out = evaluate(decomposer, store, max_tokens=max_tokens)
    out["alive_fraction"] = 1 - out["dead_fraction"]
    if n_contexts > 0 and store.contexts_path.exists():
        contexts = Contexts.load(store.contexts_path)
        target = getattr(decomposer.config, "target_site", "")
        key = reference_key(model, store.site, contexts, n_contexts, target_site=target)
        reference = share("splice", key, partial(splice_reference, model, store.site, contexts, n_contexts,
                                                 target_site=target))  # fmt: skip
        spliced = spliced_metrics(model, decomposer, store.site, contexts, n_contexts, reference=reference)
        spliced["ce_score"] = spliced.pop("ce_loss_recovered")
        out.update({k: v for k, v in spliced.items() if k != "n_tokens"})
    return out


def _text_tokens(model, store: ActivationStore, texts: LabelledTexts, share: Share) -> TextTokens:
    """The model's activations of the probing texts at the store's site, shared by the site's decomposers."""
    site = parse_site(store.site, model.info.n_layers)

    def compute() -> dict:
        found = text_tokens(model, site, texts.texts)
        return {"acts": found.acts, "owner": found.owner, "n_texts": torch.tensor(found.n_texts)}

    key = {**model_key(model), "site": store.site, "texts": json_digest(texts.texts), "max_len": 64,
           "batch_size": 16}  # fmt: skip
    found = share("probing", key, compute)
    return TextTokens(found["acts"], found["owner"], int(found["n_texts"]))


def probing_metrics(decomposer, store: ActivationStore, model, texts: LabelledTexts,
                    share: Share = _no_share) -> dict:  # fmt: skip
    """Sparse probing and TPP of `decomposer` at the store's site on `texts`; the model's activations of the
    texts are computed once per site and model (`share`)."""
    acts, codes = pool(_text_tokens(model, store, texts, share), decomposer)
    data = Pooled(
        acts, codes, torch.tensor(texts.labels), torch.tensor(texts.train), torch.tensor(texts.test)
    )
    return {**sparse_probing(data), **tpp(data, decomposer)}


def timed(evaluations: dict[str, Callable[[], dict]]) -> dict:
    """Every evaluation's metrics, with its wall time as `<name>_seconds` (absent for one that measured nothing,
    e.g. a skipped absorption) and the whole suite's as `eval_seconds`."""
    metrics: dict = {}
    begin = time.perf_counter()
    for name, evaluation in evaluations.items():
        start = time.perf_counter()
        found = evaluation()
        if found:
            metrics.update(found)
            metrics[f"{name}_seconds"] = time.perf_counter() - start
    metrics["eval_seconds"] = time.perf_counter() - begin
    return metrics


def _refresh_autointerp(folder: Path, name: str, site: str, path: Path) -> None:
    """The decomposer's autointerp rows, re-read on every run (explanations may come after the bench)."""
    scores = autointerp_scores(folder)
    if not scores:
        path.unlink(missing_ok=True)
        return
    method = json.loads((folder / CONFIG_FILE).read_text())["method"]
    rows = [{"decomposer": name, "method": method, "site": site, "metric": k, "value": v,
             "settings": json.dumps({"explanations": str(folder.resolve())})} for k, v in scores.items()]  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, rows)


def _absorption(decomposer, store, model, n_tokens: int, share: Share, name: str, log) -> dict:
    """First-letter absorption on the store's distinct word tokens (loaded and probed once per store), or {}
    (said) when the store has too few of them."""

    def compute() -> dict:
        decode = model.tokenizer.decode
        data = store_letter_data(store, lambda t: decode([t]), n_tokens)
        return letter_tensors(data, letter_probes(data))

    key = {"store": store.fingerprint(), "tokenizer": model.info.name, "n_tokens": n_tokens,
           "config": dataclasses.asdict(AbsorptionConfig())}  # fmt: skip
    try:
        data, probes = from_letter_tensors(share("letters", key, compute))
        return absorption(data, decomposer, probes=probes)
    except TooFewTokens as e:
        log(f"{name}: {e}")
        return {}


def run_store_bench(folders: list[Path], out: Path, store_path: Path | None, max_tokens: int, n_contexts: int,
                    texts: LabelledTexts | None, device: str = "auto", progress: bool = True,
                    log=print, absorption_tokens: int = 0) -> list[dict]:  # fmt: skip
    """Score every decomposer folder (module docstring); returns every metric row of `out`."""
    out = Path(out)
    settings = {"max_tokens": max_tokens, "n_contexts": n_contexts, "store": str(store_path or ""),
                "probe": texts.name if texts else "", "n_texts": len(texts.texts) if texts else 0,
                "absorption_tokens": absorption_tokens}  # fmt: skip
    check_settings(out, settings)
    model, taken, memo = None, set(), {}
    share = partial(cached, out / "references", memo=memo)
    for folder in tqdm(folders, desc="bench", disable=not progress):
        folder = Path(folder)
        name = _name(folder, taken)
        result = out / "results" / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.json"
        store = _store_for(folder, store_path)
        _refresh_autointerp(folder, name, store.site, result.with_suffix(".autointerp.json"))
        if result.exists():
            continue
        decomposer = load_decomposer(folder)
        method = json.loads((folder / CONFIG_FILE).read_text())["method"]
        if model is None and (n_contexts > 0 or texts is not None or absorption_tokens > 0):
            model = load_model(store.manifest.model, device=device)
        evaluations = {"core": partial(core_metrics, decomposer, store, max_tokens, model, n_contexts, share)}
        if texts is not None:
            evaluations["probing"] = partial(probing_metrics, decomposer, store, model, texts, share)
        if absorption_tokens > 0:
            evaluations["absorption"] = partial(_absorption, decomposer, store, model, absorption_tokens,
                                                share, name, log)  # fmt: skip
        metrics = timed(evaluations)
        metrics.pop("n_tokens", None)
        row_settings = json.dumps({**settings, "folder": str(folder.resolve())}, sort_keys=True)
        rows = [{"decomposer": name, "method": method, "site": store.site, "metric": k, "value": float(v),
                 "settings": row_settings} for k, v in metrics.items()]  # fmt: skip
        result.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(result, rows)
        log(f"{name}: FVU {metrics['fvu']:.3f}  L0 {metrics['l0']:.1f}  ({metrics['eval_seconds']:.0f} s)")
    rows = collect_rows(out)
    write_report(rows, out, "interp bench store", NOTES)
    return rows


NOTES = """Core (SAEBench): ce_score = (CE_zero - CE_spliced) / (CE_zero - CE_clean), kl_score = (KL_zero - KL_spliced)
/ KL_zero, both against zero-ablation of the site. Sparse probing: one-vs-rest per class, balanced, held-out
accuracy of a logistic probe on the top-k latents by mean difference (probe_k), on k random latents
(probe_random_k) and on the full activations (probe_full). TPP: own-class minus other-class probe accuracy drop
when the 20 latents most tied to a class are ablated. Absorption (SAEBench's first-letter task, on the store's
distinct alphabetic tokens): absorption_fraction = share of the probe-aligned reconstruction not carried by the
main latents, full_absorption_rate, absorption_n_main (main latents per letter), absorption_probe_f1 (the letter
probes' held-out F1: SAEBench wants >= 1B-parameter models, where it is high; low values mean the task says
little). Autointerp (from `interp explain`'s index/explanations.parquet, mean over explained features):
detection_f1, fuzzing_f1 and their shuffled-explanation baselines; empty where no explanations exist.
Wall time: core_seconds, probing_seconds, absorption_seconds per evaluation, eval_seconds for the suite. What
is the same for every decomposer of a site (the clean and zero-ablated passes, the model run over the probing
texts, the letter probes) is computed once into --out/references/ and reused by later calls: counted in the
seconds of the first decomposer that needed it.
"""
