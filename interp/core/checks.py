"""Checks of activation tensors shared by capture, decomposers, the trainer and the index."""

from __future__ import annotations

import torch


class ActivationError(ValueError):
    """Activations of the wrong shape, width, or with NaN / inf."""


def all_finite(x: torch.Tensor) -> bool:
    """No NaN or inf in `x`. Any NaN or inf makes the sum of `x` non-finite, so one fast reading pass (a plain
    sum) settles the common case; only a sum that overflowed on finite values takes the elementwise check."""
    if x.is_floating_point() and bool(torch.isfinite(x.sum())):
        return True
    return bool(torch.isfinite(x).all())


def check_activations(
    x: torch.Tensor,
    d_in: int | None = None,
    what: str = "activations",
    error: type[Exception] = ActivationError,
    first_row: int = 0,
) -> torch.Tensor:
    """Validate `x [n, d_in]`: 2-D, the right width, finite; raises `error` naming what is wrong. Returns `x`.

    `first_row` is the number of x's first row in a larger whole (a store), so the rows named are that whole's.
    """
    if not isinstance(x, torch.Tensor):
        raise error(f"{what} must be a torch.Tensor [n, d_in], got {type(x).__name__}")
    if x.ndim != 2:
        raise error(f"{what} must be 2-D [n, d_in], got shape {list(x.shape)}; flatten batch and position")
    if d_in is not None and x.shape[1] != d_in:
        raise error(
            f"{what} have width {x.shape[1]} but this decomposer was fitted on d_in={d_in}; "
            "use activations of the same site"
        )
    if x.shape[0] == 0:
        raise error(f"{what} are empty (0 rows); capture some tokens first")
    if not all_finite(x):
        bad = ((~torch.isfinite(x)).any(dim=1).nonzero()[:5, 0] + first_row).tolist()
        raise error(f"{what} contain NaN or inf (rows {bad}...); fix or drop those rows first")
    return x


RULES = {
    ">= 1": lambda v: v >= 1,
    ">= 0": lambda v: v >= 0,
    "> 0": lambda v: v > 0,
    "in (0, 1]": lambda v: 0 < v <= 1,
    "in [0, 1]": lambda v: 0 <= v <= 1,
    "in [0, 1)": lambda v: 0 <= v < 1,
}
"""The ranges a numeric setting can be held to (`check_ranges`)."""


def check_ranges(config: object, rules: dict[str, str], error: type[Exception] = ValueError) -> None:
    """Refuse a numeric field of `config` outside its range (`rules`: field -> a key of `RULES`; None passes;
    a tuple is checked element by element). The error names the field and carries it as `.setting`, so the
    command line can name its flag."""
    for name, rule in rules.items():
        value = getattr(config, name)
        values = value if isinstance(value, tuple) else (value,)
        if any(v is not None and not RULES[rule](v) for v in values):
            shown = ",".join(map(str, value)) if isinstance(value, tuple) else repr(value)
            exc = error(f"{name}={shown} must be {rule}")
            exc.setting = name  # type: ignore[attr-defined]
            raise exc
