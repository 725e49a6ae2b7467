"""Command-line options generated from the option objects (:mod:`depthprune.options`): a command
declares ``model: ModelSpec`` (or a rank request, heal recipe, compensation spec) and
:func:`takes` puts one ``--flag`` per field of it in the command's signature, with the field's
help, type, default and bounds, and hands the command the object built from them. A new field
is a new option of every command that takes the object, with nothing written here.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable

import typer
from typer.core import TyperCommand


@dataclass(frozen=True)
class Uses:
    """How a command takes an option object: ``exclude`` fields it has no use for, ``defaults``
    and ``help`` that differ from the object's for this command, ``flags`` renaming options
    (field -> option name without ``--``), ``build`` (default: the class, or its ``from_cli``)."""

    cls: type
    exclude: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)
    help: dict[str, str] = field(default_factory=dict)
    flags: dict[str, str] = field(default_factory=dict)
    #: a field read as the command's positional argument (e.g. the model id): (field, help)
    argument: tuple[str, str] | None = None


#: option name -> ``"module:function"`` writing its help when ``--help`` is shown (a field's ``help_from``)
LATE_HELP: dict[str, str] = {}


class GeneratedHelp(TyperCommand):
    """A command whose option help may be written when ``--help`` is shown (:data:`LATE_HELP`),
    e.g. ``--method``'s list of the registered methods: the registry imports torch, too heavy for
    the CLI's start-up, and a method registered after the CLI was imported is listed too."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        for param in self.params:
            source = LATE_HELP.get(param.name or "")
            if source:
                module, _, name = source.partition(":")
                param.help = getattr(importlib.import_module(module), name)()
        super().format_help(ctx, formatter)


def cli_fields(cls: type, exclude: tuple[str, ...] = ()) -> list[dataclasses.Field]:
    """The fields of ``cls`` that are command-line options."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True) and f.name not in exclude]


def _fields(use: Uses) -> list[dataclasses.Field]:
    """The fields a command reads: its argument first, then its options."""
    named = {f.name: f for f in dataclasses.fields(use.cls)}
    return ([named[use.argument[0]]] if use.argument else []) + cli_fields(use.cls, use.exclude)


def _cli_type(cls: type, f: dataclasses.Field) -> Any:
    """The type the command line reads for field ``f``: its ``cli_type``, else the field's type
    (``X | None`` kept; typer reads ``int | None`` as an optional int)."""
    if "cli_type" in f.metadata:
        return f.metadata["cli_type"]
    hint = typing.get_type_hints(cls)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) and len(args) == 1:
        return args[0] | None
    return hint


def parameter(cls: type, f: dataclasses.Field, use: Uses) -> inspect.Parameter:
    """The keyword-only typer parameter of field ``f``."""
    meta = f.metadata
    if use.argument and f.name == use.argument[0]:
        return inspect.Parameter(_param_name(use, f), inspect.Parameter.KEYWORD_ONLY,
                                 annotation=Annotated[str, typer.Argument(help=use.argument[1])])
    bounds = {k: meta[k] for k in ("min", "max") if k in meta}
    flag = use.flags.get(f.name) or meta.get("flag")
    decls = (f"--{flag}",) if flag else ()
    info = typer.Option(*decls, help=use.help.get(f.name, meta.get("help", "")), **bounds)
    if "help_from" in meta:
        LATE_HELP[_param_name(use, f)] = meta["help_from"]
    default = use.defaults.get(f.name, f.default)
    return inspect.Parameter(_param_name(use, f), inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[_cli_type(cls, f), info])


def _param_name(use: Uses, f: dataclasses.Field) -> str:
    return (use.flags.get(f.name) or f.metadata.get("flag") or f.name).replace("-", "_")


def takes(**uses: Uses | type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command whose parameters named in ``uses`` are option objects: typer sees one
    option per field instead, the command gets the object."""
    specs = {name: u if isinstance(u, Uses) else Uses(u) for name, u in uses.items()}

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn, eval_str=True)
        params: list[inspect.Parameter] = []
        for p in signature.parameters.values():
            if p.name in specs:
                use = specs[p.name]
                params += [parameter(use.cls, f, use) for f in _fields(use)]
            else:
                params.append(p)

        @functools.wraps(fn)
        def command(**values: Any) -> Any:
            for name, use in specs.items():
                fields = {f.name: values.pop(_param_name(use, f)) for f in _fields(use)}
                values[name] = use.cls.from_cli(fields) if hasattr(use.cls, "from_cli") else use.cls(**fields)
            return fn(**values)
        # keyword-only: typer passes every value by name, and the declared order is the --help order
        command.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params])
        return command
    return decorate
