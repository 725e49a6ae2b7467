"""The option objects (depthprune/options.py and friends) are the one definition of each concern:
every field is an option of the commands that take the object, and no public function takes
a long list of loose options instead of them."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil

import typer
from typer.testing import CliRunner

import depthprune
from depthprune.cli import app
from depthprune.cli_options import Uses, cli_fields, takes
from depthprune.compensation import Compensation
from depthprune.healing.recipe import HealConfig
from depthprune.options import CalibrationRun, ModelSpec, PlanSource, RankRequest, ScoreSettings, option

MAX_PARAMETERS = 8


def _public_functions():
    for info in pkgutil.walk_packages(depthprune.__path__, "depthprune."):
        if "lmms_tasks" in info.name:
            continue  # lmms-eval's task functions, loaded by lmms-eval
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isfunction(obj):
                # a command's own parameters (typer sees the generated options)
                yield f"{info.name}.{name}", list(inspect.signature(inspect.unwrap(obj)).parameters)
            elif inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    generated = attr == "__init__" and dataclasses.is_dataclass(obj)  # the option objects
                    if inspect.isfunction(member) and (not attr.startswith("_") or attr == "__init__") \
                            and not generated:
                        yield f"{info.name}.{name}.{attr}", list(inspect.signature(member).parameters)[1:]


def test_no_public_function_takes_more_than_eight_parameters():
    lengths = dict(_public_functions())
    too_long = {name: len(params) for name, params in lengths.items() if len(params) > MAX_PARAMETERS}
    assert not too_long, f"use an option object (depthprune/options.py) instead of loose options: {too_long}"
    assert lengths["depthprune.api.prune"] and len(lengths["depthprune.cli.heal"]) <= MAX_PARAMETERS


def _options_of(command: str) -> set[str]:
    click_command = typer.main.get_command(app).commands[command]
    return {p.name for p in click_command.params}


def _names(cls: type, exclude: tuple[str, ...] = ()) -> set[str]:
    return {(f.metadata.get("flag") or f.name).replace("-", "_") for f in cli_fields(cls, exclude)}


def test_every_field_of_an_option_object_is_an_option_of_the_commands_that_take_it():
    assert _names(ModelSpec) | _names(ScoreSettings) <= _options_of("score")
    assert _names(ModelSpec) <= _options_of("eval")
    assert _names(ModelSpec, ("prompt_format",)) | _names(RankRequest) | _names(PlanSource) \
        | _names(CalibrationRun) | _names(Compensation) <= _options_of("prune")
    assert _names(RankRequest) <= _options_of("rank")
    assert _names(ModelSpec, ("device_map",)) | _names(HealConfig) <= _options_of("heal")
    assert {"compensate", "compensate_ridge", "compensate_tokens", "ablation_cache_mb"} <= _options_of("prune")


def test_the_model_spec_and_the_study_file_share_their_keys():
    from depthprune.study.schema import StudyFile
    assert {f.name for f in dataclasses.fields(ModelSpec)} - {"id"} <= set(StudyFile.model_fields)


def test_a_field_added_to_an_option_object_becomes_an_option_and_reaches_the_command():
    @dataclasses.dataclass(frozen=True)
    class Extended(ModelSpec):
        temperature_scale: float = option(1.0, "A new knob.", min=0.0)

    seen = {}
    extra_app = typer.Typer()

    @extra_app.command()
    @takes(model=Uses(Extended, argument=("id", "Checkpoint."), flags={"id": "model"}))
    def run(model: ModelSpec) -> None:  # (a module-level name: annotations are strings here)
        seen["spec"] = model

    params = {p.name: p for p in typer.main.get_command(extra_app).params}
    assert params["temperature_scale"].opts == ["--temperature-scale"] and params["temperature_scale"].help == \
        "A new knob." and {"model", "dtype", "device", "device_map", "prompt_format"} <= set(params)
    res = CliRunner().invoke(extra_app, ["toy", "--temperature-scale", "2.5", "--dtype", "float32"])
    assert res.exit_code == 0, res.output
    assert seen["spec"] == Extended(id="toy", dtype="float32", temperature_scale=2.5)
    assert CliRunner().invoke(extra_app, ["toy", "--temperature-scale", "-1"]).exit_code == 2  # min=0.0


def test_the_commands_hand_the_api_the_objects_they_parse():
    req = RankRequest.from_cli({f.name: f.default for f in dataclasses.fields(RankRequest)} | {"weights": "a=1,b=3"})
    assert req.weights == {"a": 1.0, "b": 3.0} and req.protection_only() == {
        "allow_deepstack": False, "protect_first": 0, "protect_last": 0}
    assert PlanSource(layers="5,9").resolve() == [5, 9]
    assert CalibrationRun(data=[]).data is None
