"""benchmarks/synth_search.py: the per-side L0 search finds the coefficient whose L0 is nearest the target on a
fake trainer whose L0 is a known falling function of the coefficient, keeps the nearest probe, and resumes
without retraining. Needs no SAELens."""

import json
import math

import pytest
import torch
from repo_scripts import load_script


def _search():
    return load_script("benchmarks/synth_search.py", "synth_search")


class _FakeFit:
    """Codes with scale / coeff active latents per row on average (rows get its floor or ceiling; capped at m):
    L0 falls as the coefficient grows."""

    def __init__(self, field: str, scale: float, n: int = 50, m: int = 400, d: int = 4):
        self.field, self.scale, self.n, self.m, self.d, self.calls = field, scale, n, m, d, []

    def __call__(self, arch: str, p: dict):
        coeff = p[self.field]
        self.calls.append(coeff)
        mean = min(self.m, self.scale / coeff)
        active = (mean + torch.arange(self.n) / self.n).floor().long()  # mean over rows = mean (to 1 / n)
        codes = (torch.arange(self.m)[None] < active[:, None]).float()
        return torch.randn(self.m, self.d), codes, torch.zeros(self.n, self.d), 1.0


def _settings(**kw):
    return {"k": 6, "search_probes": 6, "search_factor": 4.0, "search_tolerance": 0.15, "l1_coeff": 1.0,
            "l0_coeff": 1.0, "saelens_init_threshold": 0.01, **kw}  # fmt: skip


@pytest.mark.parametrize("scale", [120.0, 0.5])  # start too dense (raise c) / too sparse (lower c)
def test_search_lands_near_target_and_resumes(tmp_path, scale):
    s = _search()
    fit = _FakeFit("l1_coeff", scale)
    s.fit_searched("interp", "relu", _settings(), tmp_path, fit)
    summary = json.loads((tmp_path / "interp-relu.search.json").read_text())
    l0s = [q["l0"] for q in summary["probes"]]
    assert abs(summary["l0"] - 6) / 6 <= 0.15, summary  # L0 = scale / c: the search reaches c ~ scale / 6
    assert summary["l0"] == min(
        l0s, key=lambda v: abs(math.log(max(v, 1e-3) / 6))
    )  # the nearest probe is kept
    assert s.result_l0(tmp_path / "interp-relu.safetensors") == summary["l0"]
    assert len(fit.calls) == len(summary["probes"]) <= 6
    (tmp_path / "interp-relu.safetensors").unlink()  # killed before the copy: probes are reused
    again = _FakeFit("l1_coeff", scale)
    s.fit_searched("interp", "relu", _settings(), tmp_path, again)
    assert again.calls == []
    assert json.loads((tmp_path / "interp-relu.search.json").read_text()) == summary


def test_side_field_and_unsearched_arch(tmp_path):
    s = _search()
    fit = _FakeFit("saelens_init_threshold", 0.3)
    s.fit_searched("saelens", "jumprelu", _settings(), tmp_path, fit)
    summary = json.loads((tmp_path / "saelens-jumprelu.search.json").read_text())
    assert summary["field"] == "saelens_init_threshold" and abs(summary["l0"] - 6) <= 1
    once = _FakeFit("l1_coeff", 6.0)
    s.fit_searched("interp", "topk", _settings(), tmp_path, once)  # not searched: one fit, no summary
    assert once.calls == [1.0] and not (tmp_path / "interp-topk.search.json").exists()


def test_next_coefficient_bisects_in_log_space():
    s = _search()
    assert s.next_coefficient([(1.0, 60.0)], 6, 4.0) == 4.0
    assert s.next_coefficient([(1.0, 1.0)], 6, 4.0) == 0.25
    # the nearest bracket, not the first: (4, 30) and (16, 2)
    tried = [(1.0, 60.0), (4.0, 30.0), (64.0, 0.5), (16.0, 2.0)]
    assert s.next_coefficient(tried, 6, 4.0) == pytest.approx(8.0)
