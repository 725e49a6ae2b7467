"""How the command line fails: one line ``error: ...`` on stderr and an exit status (2: a user
error, 1: a bug, 130: Ctrl-C), never a traceback unless ``--debug``; warnings as one line
``warning: ...``. :func:`handle_errors` wraps every command, :class:`OneLineErrors` the usage
errors typer raises before a command runs."""

from __future__ import annotations

import functools
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import click
import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

from depthprune import settings
from depthprune.messages import one_line
from depthprune.outputs import describe_oserror

# soft_wrap: paths in messages are never broken across lines (logs, pipes, narrow terminals);
# markup off: a path such as runs/[a]/x must print as it is, not be parsed as rich markup
console = Console(soft_wrap=True, markup=False)
err = Console(stderr=True, soft_wrap=True, markup=False)


class OneLineErrors(TyperGroup):
    """The command group whose usage errors (an unknown option, a value out of range, a missing
    argument) print one line ``error: ...`` naming the command and option, exit 2, like every
    other error, instead of a usage box."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as exc:  # click's ClickException (typer vendors click)
            if type(exc).__name__ == "NoArgsIsHelpError":  # `depthprune` alone: the help
                from typer import rich_utils
                rich_utils.rich_format_error(exc)
                sys.exit(getattr(exc, "exit_code", 2))
            ctx = getattr(exc, "ctx", None)
            where = ctx.command_path if ctx is not None else "depthprune"
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            err.print(Text.assemble(("error:", "bold red"), f" {where}: {one_line(message)} (see {where} --help)"))
            sys.exit(2)
        except typer.Abort:
            err.print(Text.assemble(("error:", "bold red"), " aborted"))
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


def show_warning(message: Any, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """Warnings as one line ``warning: ...`` that does not break a progress bar."""
    text = f"warning: {' '.join(str(message).split())}"
    if "tqdm" in sys.modules:
        from tqdm import tqdm
        tqdm.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr)


def error_message(exc: BaseException) -> tuple[str, int]:
    """The one-line message and exit status for an exception escaping a command."""
    if isinstance(exc, ValueError):
        return one_line(str(exc)) or type(exc).__name__, 2
    if isinstance(exc, OSError):
        where = exc.filename if exc.filename is not None else ""
        if exc.filename2 is not None:
            where = f"{where} -> {exc.filename2}"
        return one_line(f"{where + ': ' if where else ''}{describe_oserror(exc)}"), 2
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return ("out of memory: lower --batch-size, use --dtype bfloat16, or spread the model with "
                "--device-map auto"), 2
    if isinstance(exc, KeyboardInterrupt):
        return ("interrupted; the output being written was discarded (a sweep or demo keeps the cells it "
                "stored and a heal its checkpoints: run the same command again to resume, heal with --resume)"), 130
    detail = one_line(str(exc))
    return (f"unexpected {type(exc).__name__}{': ' + detail if detail else ''} (a bug in depthprune? "
            "rerun with --debug for the traceback and report it)"), 1


def expand_user(value: Any) -> Any:
    """``~`` and ``~user`` expanded in a path option (or a list of them): the shell leaves
    ``--out=~/x`` and quoted paths alone, and a literal ``~`` directory is never what was meant."""
    if isinstance(value, Path):
        return value.expanduser()
    if isinstance(value, list) and value and all(isinstance(v, Path) for v in value):
        return [v.expanduser() for v in value]
    return value


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn every exception into one line ``error: ...`` on stderr (on a fresh line, progress
    bars closed) and an exit status: 2 for user errors, 1 for bugs, 130 for Ctrl-C. Path
    options reach the command with ``~`` expanded (:func:`expand_user`)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **{name: expand_user(value) for name, value in kwargs.items()})
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except BaseException as exc:  # noqa: BLE001 - the one place errors become messages
            if isinstance(exc, SystemExit):
                raise
            settings.close_progress_bars()
            try:
                message, status = error_message(exc)
            except BaseException:  # noqa: BLE001 - even formatting failed (out of memory?): still one line
                message = f"{type(exc).__name__} (its message could not be shown; rerun with --debug)"
                status = 2 if isinstance(exc, (ValueError, OSError, MemoryError)) else 1
            if settings.debug():
                traceback.print_exception(exc, file=sys.stderr)
            sys.stdout.flush()
            err.print(Text.assemble(("error:", "bold red"), " ", message))
            raise typer.Exit(status) from None
    return wrapper
