"""`interp browse`: the Streamlit feature browser on the indexes in the cache."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from interp.cli.common import offline_by_default


def browse_cmd(
    index: Annotated[
        Path | None, typer.Argument(help="an index or decomposer folder to open (default: pick in the app)")
    ] = None,
    cache: Annotated[
        Path | None, typer.Option(help="cache folder to list runs from (default: interp's)")
    ] = None,
    port: Annotated[int, typer.Option(help="port on localhost")] = 8501,
    open_browser: Annotated[bool, typer.Option(help="open a browser window")] = True,
) -> None:
    """Open the Streamlit feature browser on the feature indexes in the cache."""
    import interp.browser.entry as entry

    env = offline_by_default(dict(os.environ))
    if cache is not None:
        env["INTERP_CACHE"] = str(cache.resolve())
    if index is not None:
        env["INTERP_INDEX"] = str(index.resolve())
    cmd = [sys.executable, "-m", "streamlit", "run", entry.__file__, "--server.port", str(port),
           "--server.address", "localhost", "--server.headless", str(not open_browser).lower(),
           "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal"]  # fmt: skip
    typer.echo(f"feature browser on http://localhost:{port} (Ctrl-C to stop)")
    raise typer.Exit(run_child(cmd, env))


def run_child(cmd: list[str], env: dict[str, str]) -> int:
    """Run `cmd` until it exits; SIGTERM or Ctrl-C to this process stops the child too (no orphaned server)."""
    child = subprocess.Popen(cmd, env=env)

    def stop(signum, frame) -> None:
        child.terminate()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        return child.wait()
    except KeyboardInterrupt:
        child.terminate()
        return child.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
