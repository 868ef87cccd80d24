"""Named sets of steering-eval settings (`interp steer-eval --preset NAME`): a table, one entry per preset.

A preset fills `SteerEvalConfig` fields before the TOML file and the explicit flags, which override it. Its values
are ordinary settings, so they land in the run's `config.json` and a resume with other values is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PAPER_KL_TARGETS = (0.025, 0.05, 0.1, 0.2, 0.5)


@dataclass(frozen=True)
class Preset:
    """What a preset sets (`settings`: SteerEvalConfig field -> value) and what the user still gives."""

    about: str
    settings: dict[str, Any] = field(default_factory=dict)
    needs: str = ""  # the inputs a preset cannot choose (shown when they are missing)


PRESETS: dict[str, Preset] = {
    "paper": Preset(
        about="the SNMF paper's steering comparison (Shafran et al.) as far as 2 CPU cores allow",
        settings={
            "methods": ("features", "diff_in_means", "random"),
            "kl_targets": PAPER_KL_TARGETS,  # strengths matched to KL 0.025-0.5 on neutral prompts
            "signs": (1,),  # the paper steers along +direction only
            "steer_at": "paper",  # SNMF at mlp_hidden (Gemma: mapped past the post-MLP norm); others at mlp_out
            "n_random": 0,  # the random baseline: best of as many random directions as features
            "selection": ("detection",),
            "concepts": "bbc",  # concepts contained in the corpus the decomposers are fitted on
            "per_concept": 40,
            "n_samples": 2,  # x 4 test prompts = 8 samples per cell, as the paper's 8 samples
            "max_new_tokens": 40,  # the paper: 50; 40 keeps a one-layer run near an hour on 2 cores
            "top_k": 30,
            "top_p": 0.3,
        },
        needs="--decomposer folders fitted at --site: SNMF k=100 and k=400 and a TopK SAE (on mlp_hidden), or a "
        "TopK SAE with --site L.mlp_out (docs/steering.md lists the fit commands)",
    ),
}


class PresetError(ValueError):
    """An unknown preset name."""


def preset_settings(name: str | None) -> dict[str, Any]:
    """The settings of preset `name` (none: {}); an unknown name is refused naming the valid ones."""
    if name is None:
        return {}
    if name not in PRESETS:
        raise PresetError(f"unknown --preset {name!r}; valid: {', '.join(PRESETS)}")
    return dict(PRESETS[name].settings)
