"""A minimal decomposer for tests: fixed orthonormal directions, codes = relu(x @ D^T)."""

from dataclasses import dataclass

import torch

from interp.core.checks import check_activations
from interp.decompose.base import read_decomposer, save_decomposer


@dataclass(frozen=True)
class FixedConfig:
    n_features: int = 8
    d_in: int = 64
    seed: int = 0


class FixedDirections:
    config_class = FixedConfig

    def __init__(self, config, weights=None):
        self.config = config
        if weights is None:
            q, _ = torch.linalg.qr(
                torch.randn(
                    config.d_in, config.n_features, generator=torch.Generator().manual_seed(config.seed)
                )
            )
            weights = q.T.contiguous()
        self.weights = weights
        self.d_in, self.n_features = config.d_in, config.n_features

    @property
    def directions(self):
        return self.weights

    def fit(self, data, checkpoint_dir=None, progress=True):
        return self

    def encode(self, x):
        return torch.relu(check_activations(x, self.d_in) @ self.weights.T)

    def decode(self, codes):
        return codes @ self.weights

    def save(self, folder):
        save_decomposer(folder, "fixed", self.config, {"W": self.weights})

    @classmethod
    def load(cls, folder):
        meta, t = read_decomposer(folder)
        return cls(FixedConfig(**meta["config"]), t["W"])


class SplitIdentity(FixedDirections):
    """Exact reconstruction with non-negative codes: codes = [relu(x), relu(-x)], decode = c[:d] - c[d:]."""

    def __init__(self, d_in: int):
        eye = torch.eye(d_in)
        super().__init__(FixedConfig(n_features=2 * d_in, d_in=d_in), torch.cat([eye, -eye]))

    def encode(self, x):
        x = check_activations(x, self.d_in)
        return torch.cat([x.clamp_min(0), (-x).clamp_min(0)], dim=1)


def two_concept_run(tmp_path, monkeypatch, **fields):
    """A steer-eval config on tiny-llama: the fixed decomposer (6 directions in 1.mlp_hidden) and a cats / dogs
    concept file, 8 texts each; `fields` set the rest of the SteerEvalConfig."""
    import json

    from interp.decompose import base
    from interp.steer.run import SteerEvalConfig

    monkeypatch.setitem(base.METHODS, "fixed", "fixed_decomposer:FixedDirections")
    rows = [{"text": f"the {w} {w} is here and the {w} sat {i}", "concept": c}
            for i in range(8) for c, w in (("cats", "cat"), ("dogs", "dog"))]  # fmt: skip
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    FixedDirections(FixedConfig(n_features=6, d_in=128)).save(tmp_path / "fixed")
    return SteerEvalConfig(model="tiny-llama", site="1.mlp_hidden", decomposers=(str(tmp_path / "fixed"),),
                           concepts=str(tmp_path / "c.jsonl"), device="cpu", embedding_judge=False,
                           select_prompts=("Yesterday,",), **fields)  # fmt: skip
