"""The Python API: one public function per command, reachable as ``depthprune.NAME`` whatever
submodules were imported first (a subpackage named like a function would replace it)."""

from __future__ import annotations

import importlib
import pkgutil

import depthprune

COMMANDS = ("score", "plan", "rank", "prune", "evaluate", "heal", "diagnose", "sweep", "report", "demo",
            "synth_data", "text_data", "lmms_task")


def test_every_command_has_a_public_api_function_even_after_importing_every_module():
    for info in pkgutil.walk_packages(depthprune.__path__, "depthprune."):
        if info.name.endswith(("lmms_tasks.utils", ".toy.train")) or ".lmms" in info.name:
            continue  # optional extras (lmms-eval) and a training script
        importlib.import_module(info.name)
    for name in COMMANDS:
        fn = getattr(depthprune, name)
        assert callable(fn) and fn.__module__ == "depthprune.api", name
        assert fn.__doc__, name


def test_the_cli_has_a_command_for_each_api_function():
    from depthprune.cli import app, data_app
    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    data = {c.name for c in data_app.registered_commands}
    assert {"score", "rank", "prune", "eval", "heal", "diagnose", "sweep", "report", "demo"} <= commands
    assert {"synth", "text", "lmms-task"} <= data
