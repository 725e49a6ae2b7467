"""The metric spec (depthprune/study/metrics.py) is the one definition of each metric: the regime
rule, the tables and the plots read it instead of switching on a metric's name."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from types import SimpleNamespace

from depthprune.study.metrics import ACCURACY, METRICS, NLL, compared_on
from depthprune.study.store import ResultRow

REPORTING = Path(__file__).resolve().parents[2] / "depthprune" / "reporting"


def test_the_rule_compares_accuracy_when_every_row_has_it_else_the_answer_nll():
    rows = [SimpleNamespace(accuracy=0.5, nll=1.0), SimpleNamespace(accuracy=0.25, nll=1.5)]
    assert compared_on(rows) is ACCURACY
    assert compared_on(rows + [SimpleNamespace(accuracy=None, nll=2.0)]) is NLL


def test_each_metric_writes_and_orders_its_values():
    assert (ACCURACY.text(0.5), ACCURACY.text(0.5, named=False), ACCURACY.in_words(0.04)) == ("50.0%", "50.0%", "4.0 points")
    assert (NLL.text(1.5), NLL.text(1.5, named=False), NLL.in_words(0.12), NLL.in_words(None)) == (
        "NLL 1.500", "1.500", "0.120 nats", "–")
    assert sorted([0.2, 0.9, 0.5], key=ACCURACY.sort_key) == [0.9, 0.5, 0.2] and ACCURACY.best([0.2, 0.9]) == 0.9
    assert sorted([0.2, 0.9, 0.5], key=NLL.sort_key) == [0.2, 0.5, 0.9] and NLL.best([0.2, 0.9]) == 0.2
    assert ACCURACY.gain(0.1) == 0.1 and NLL.gain(0.1) == -0.1


def test_every_metric_is_a_stored_column_and_no_report_module_switches_on_a_metric_name():
    stored = {f.name for f in dataclasses.fields(ResultRow)}
    assert set(METRICS) <= stored and [m.sample_index for m in METRICS.values()] == [1, 2]  # (id, correct, nll)
    for path in REPORTING.glob("*.py"):
        if path.name == "simulate.py":
            continue  # the simulation plants effects per metric: it is about the metrics themselves
        switches = re.findall(r"""(?:metric|\.metric)\s*==\s*["'](?:accuracy|nll)["']""", path.read_text())
        assert not switches, f"{path.name}: read the metric's spec (depthprune.study.metrics) instead: {switches}"
