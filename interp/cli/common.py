"""What every command shares: the error policy (a clear message and exit code 2, no traceback, for user mistakes),
the offline policy, printing on rank 0, and the one `--set name=value` parser, typed from config dataclasses."""

from __future__ import annotations

import dataclasses
import functools
import os
import types
import typing
from collections.abc import Callable
from typing import Any, Union

import typer

from interp.core.paths import ONLINE_VARIABLE

USER_ERRORS: tuple[type[Exception], ...] = (ValueError, FileNotFoundError, ConnectionError)
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


def fail(error: Exception) -> None:
    """Print `error` for a person and exit with status 2."""
    typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


INTERRUPTED = 130  # the shell's status for a command ended by Ctrl-C (128 + SIGINT)


def interruptible(command: Callable[..., None]) -> Callable[..., None]:
    """`command` that answers Ctrl-C with one line saying how to resume, and exit status 130 (no traceback).

    Every long job (capture, fit, index, steer-eval) keeps what it finished, so the same command resumes it."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except KeyboardInterrupt:
            typer.secho("interrupted; rerun the same command to resume", fg=typer.colors.YELLOW, err=True)
            raise typer.Exit(INTERRUPTED) from None

    return wrapper


def offline_by_default(env: dict[str, str] | None = None) -> dict[str, str]:
    """No hub calls unless the user asked for them (`interp --online ...`, INTERP_ONLINE=1, or these variables set
    to 0): loads work offline and fail fast behind a firewall. Sets them in `env` (default: this process's
    environment) and returns it."""
    env = os.environ if env is None else env
    online = env.get(ONLINE_VARIABLE, "").lower() in _TRUE
    for name in OFFLINE_VARIABLES:
        if online:
            env[name] = "0"
        else:
            env.setdefault(name, "1")
    return env


def echo0(message: str) -> None:
    """Print on rank 0 only (every line once under torchrun, also after the process group is gone)."""
    from interp.core import distributed

    if distributed.rank() == 0 and os.environ.get("RANK", "0") == "0":
        typer.echo(message)


# ------------------------------------------------------------------------------------------ --set name=value
def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """`["a=1", "b=x"]` -> {"a": "1", "b": "x"}."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set takes name=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _parse_bool(text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


_SCALARS = {bool: _parse_bool, int: int, float: float, str: str}


def coerce(text: str, hint: Any) -> Any:
    """A CLI string as a value of type `hint` (bool, int, float, str, X | None, tuple[X, ...])."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if text.lower() == "none" and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)] or [str]
        return coerce(text, inner)
    if origin is tuple:
        return tuple(coerce(part.strip(), args[0]) for part in text.split(",") if part.strip())
    if hint in _SCALARS:
        return _SCALARS[hint](text)
    return text


def config_from_options(config_class: type, options: dict[str, Any], flags: dict[str, str] | None = None,
                        what: str = "") -> Any:  # fmt: skip
    """`config_class(**options)`, strings coerced to each field's annotated type; options that are None are left
    at their defaults; a name the config has no field for is an error naming its flag (`flags` maps field names
    to the flags that set them) and the valid names."""
    hints = typing.get_type_hints(config_class)
    fields = {f.name for f in dataclasses.fields(config_class)}
    kwargs = {}
    for name, value in options.items():
        if value is None:
            continue
        if name not in fields:
            flag = (flags or {}).get(name, f"--set {name}=...")
            raise ValueError(
                f"{flag} does not apply{' to ' + what if what else ''}; its settings: {', '.join(sorted(fields))}"
            )
        if isinstance(value, str):
            try:
                value = coerce(value, hints[name])
            except ValueError as e:
                raise ValueError(f"--set {name}={value!r}: {e}") from None
        kwargs[name] = value
    try:
        return config_class(**kwargs)
    except ValueError as e:  # a setting out of range: name the flag that set it
        name = getattr(e, "setting", None)
        if name is None or name not in kwargs:
            raise
        flag = (flags or {}).get(name, f"--set {name}=...")
        raise type(e)(f"{flag}: {e}") from None
