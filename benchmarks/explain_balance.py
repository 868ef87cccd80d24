"""Balanced examples per firing definition for the 20 sampled features of each figure index (no LLM)."""

from interp.autointerp import ExplainConfig, parse_features
from interp.autointerp.run import gather
from interp.features import FeatureIndex

for name in ("snmf-k100", "topk-2048-k32"):
    index = FeatureIndex.open(f"cache/decomposers/fig/{name}/index")
    fs = parse_features(None, 20, index.n_features, 0)
    dens = sorted(index.feature(f).density for f in fs)
    print(
        name,
        f"density at index threshold over the 20: min {dens[0]:.3f} median {dens[10]:.3f} max {dens[-1]:.3f}",
    )
    for firing in ("relative", "auto"):
        for n_test in (6, 10):
            data, skipped, checked = gather(
                index, fs, ExplainConfig(n_test=n_test, per_prompt=6, firing=firing)
            )
            full = sum(len(fx.non_activating) == len(fx.activating) == n_test for _, fx in data.values())
            some = sum(bool(fx.non_activating) for _, fx in data.values())
            rules = {r: sum(fx.firing == r for _, fx in data.values()) for r in ("relative", "quantile")}
            print(
                f"  --firing {firing} --n-test {n_test}: {len(data)} live, {len(skipped)} dead; scorable (>=1 non-activating) {some}; "
                f"fully balanced {full}; rules {rules}; {checked}"
            )
