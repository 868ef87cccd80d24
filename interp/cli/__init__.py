"""The `interp` command line: one module per command, registered from one table."""

from __future__ import annotations

import os

import typer

from interp.cli.bench import bench_app
from interp.cli.browse import browse_cmd
from interp.cli.capture import capture_cmd, models_cmd, summary_cmd
from interp.cli.common import interruptible
from interp.cli.demo import demo_cmd
from interp.cli.evaluate import evaluate_cmd
from interp.cli.explain import explain_cmd
from interp.cli.fit import fit_cmd
from interp.cli.import_ import import_cmd
from interp.cli.index import index_cmd
from interp.cli.steer_eval import steer_eval_cmd
from interp.cli.steer_judge import steer_judge_cmd
from interp.core.paths import ONLINE_VARIABLE

HELP = "capture | fit | import | evaluate | bench | index | explain | browse | steer-eval | steer-judge | models | summary | demo"
app = typer.Typer(add_completion=False, no_args_is_help=True, help=HELP, pretty_exceptions_enable=False)

COMMANDS = {
    "capture": capture_cmd, "summary": summary_cmd, "models": models_cmd, "fit": fit_cmd,
    "evaluate": evaluate_cmd, "index": index_cmd, "explain": explain_cmd, "browse": browse_cmd,
    "steer-eval": steer_eval_cmd, "demo": demo_cmd, "import": import_cmd, "steer-judge": steer_judge_cmd,
}  # fmt: skip
GROUPS = {"bench": bench_app}  # commands with subcommands


@app.callback()
def main_options(
    online: bool = typer.Option(
        False, "--online", help=f"allow the Hugging Face hub (same as {ONLINE_VARIABLE}=1)"
    ),
) -> None:
    """interp: capture, decompose, index, browse and steer the activations of language models."""
    if online:
        os.environ[ONLINE_VARIABLE] = "1"


for name, command in COMMANDS.items():
    app.command(name)(interruptible(command))
for name, group in GROUPS.items():
    app.add_typer(group, name=name)


def main() -> None:  # pragma: no cover
    app()
