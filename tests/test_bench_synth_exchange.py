"""benchmarks/synth.py's file exchange: a dictionary written to safetensors and read back as `Precomputed` over a
`FileModel` must score exactly as the dictionary itself does (no row misaligned between batches, no code lost in
the sparse round trip). Needs no SAELens."""

import torch
from repo_scripts import load_script

from interp.evaluate.ground_truth import ground_truth_metrics


def _synth():
    return load_script("benchmarks/synth.py", "synth_bench")


class _Dictionary:
    """A ReLU dictionary with fixed weights: encode [n, d] -> [n, m], decode [n, m] -> [n, d]."""

    def __init__(self, directions: torch.Tensor):
        self.directions = directions

    def encode(self, x):
        return torch.relu(x @ self.directions.T - 0.5)

    def decode(self, codes):
        return codes @ self.directions


def test_exchange_round_trip_scores_as_the_dictionary(tmp_path):
    synth = _synth()
    gen = torch.Generator().manual_seed(0)
    n, d, n_true, m = 1000, 8, 20, 12  # n not a multiple of the batch size below
    features = torch.nn.functional.normalize(torch.randn(n_true, d, generator=gen), dim=1)
    true = torch.relu(torch.randn(n, n_true, generator=gen) - 1.0)
    x = true @ features
    parent = torch.full((n_true,), -1, dtype=torch.long)
    parent[4:8] = torch.tensor([0, 0, 1, 1])
    data = {"features": features, "eval": x, "parent": parent}
    data.update({f"true.{k}": v for k, v in synth.sparse(true).items()})
    assert torch.equal(synth.dense(data, "true"), true)

    model = synth.FileModel(data)
    dictionary = _Dictionary(torch.nn.functional.normalize(torch.randn(m, d, generator=gen), dim=1))
    codes = dictionary.encode(x)
    synth.save_result(tmp_path / "side-arch.safetensors", dictionary.directions, codes, dictionary.decode(codes),
                      123.0)  # fmt: skip
    loaded = synth.load_file(str(tmp_path / "side-arch.safetensors"))
    via_files = ground_truth_metrics(synth.Precomputed(loaded), model, n, batch_size=300)
    direct = ground_truth_metrics(dictionary, synth.FileModel(data), n, batch_size=300)
    assert via_files == direct
    assert float(loaded["rows_per_s"]) == 123.0
    assert model.is_parent[:2].all() and not model.is_parent[2:].any()
    assert 0 < direct["f1"] < 1 and direct["l0"] > 0  # a non-degenerate case
