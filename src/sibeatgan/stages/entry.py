"""What every stage's entry shares: --params and -S overrides, SIGTERM as Ctrl-C, and user
errors as one line (exit 1)."""

from __future__ import annotations

import signal
from collections.abc import Callable

import click

from sibeatgan.config import ConfigError, Params, load_params
from sibeatgan.io import FolderBusyError, OutputError, StoreError

# errors whose message is the whole story: one line, exit 1, no traceback
USER_ERRORS: tuple[type[Exception], ...] = (
    ConfigError,
    FileNotFoundError,
    PermissionError,
    FolderBusyError,
    OutputError,  # a full disk (or quota, or read-only file system), naming the file
    StoreError,  # the MLflow tracking store failed, naming its URI
    ValueError,
)


def stop_on_sigterm() -> None:
    """SIGTERM (`kill`, a scheduler's stop) stops like Ctrl-C: MLflow runs end as KILLED and
    no output is left half-written (outputs are written atomically)."""
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def params_file_option(help: str = "Parameter file to read."):
    return click.option(
        "--params",
        "params_path",
        default="params.yaml",
        show_default=True,
        type=click.Path(dir_okay=False),
        help=help,
    )


overrides_option = click.option(
    "-S",
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override one parameter, e.g. -S train.epochs=5 -S student.kd=false (repeatable).",
)


def stage_command(run: Callable[[Params], str], doc: str) -> click.Command:
    """A command that reads params.yaml (with -S overrides), runs the stage and prints the
    line it returns."""

    @click.command(help=doc, context_settings={"help_option_names": ["-h", "--help"]})
    @params_file_option()
    @overrides_option
    def command(params_path: str, overrides: tuple[str, ...]) -> None:
        stop_on_sigterm()
        try:
            click.echo(run(load_params(params_path, list(overrides))))
        except USER_ERRORS as err:
            raise click.ClickException(str(err)) from err

    return command
