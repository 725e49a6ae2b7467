"""The SQLite results store: atomic per-cell writes, no duplicates, round trip."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3

import pytest

from depthprune.study.store import (
    ResultRow,
    cell_key,
    completed_cells,
    get_meta,
    open_store,
    read_results,
    set_meta,
    write_cell,
)


def _rows(cell: str, domains=("math", "general")) -> list[ResultRow]:
    return [ResultRow(cell=cell, method="domain", label="domain:math", options={"domain": "math"},
                      budget=4, budget_fraction=0.25, removed=[5, 7, 9, 11], heal=None, eval_set="eval",
                      domain=d, n=2, accuracy=0.5, ci_low=0.1, ci_high=0.9, nll=1.25,
                      samples=[("a", 1, 0.5), ("b", 0, 2.0)], seconds=1.5) for d in domains]


def test_round_trip_and_meta(tmp_path):
    conn = open_store(tmp_path / "r.sqlite")
    key = cell_key("domain", {"domain": "math"}, 4, None)
    assert write_cell(conn, _rows(key))
    set_meta(conn, {"model": "toy", "num_layers": 16})
    back = read_results(tmp_path / "r.sqlite")
    assert [r.domain for r in back] == ["general", "math"]
    assert back[0].samples == [("a", 1, 0.5), ("b", 0, 2.0)] and back[0].removed == [5, 7, 9, 11]
    assert back[0].heal is None and back[0].options == {"domain": "math"}
    assert get_meta(conn) == {"model": "toy", "num_layers": 16}
    assert completed_cells(conn) == {key}


def test_second_write_of_a_cell_is_a_no_op(tmp_path):
    conn = open_store(tmp_path / "r.sqlite")
    assert write_cell(conn, _rows("c1"))
    assert not write_cell(conn, _rows("c1", domains=("other",)))
    assert len(read_results(conn)) == 2


def test_a_failing_cell_write_leaves_nothing(tmp_path):
    conn = open_store(tmp_path / "r.sqlite")
    rows = _rows("c1", domains=("math", "math"))  # duplicate primary key inside one cell
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        write_cell(conn, rows)
    assert read_results(conn) == []


def _writer(path: str, cell: str) -> None:
    write_cell(open_store(path), _rows(cell))


def test_concurrent_writers_lose_no_row(tmp_path):
    path = str(tmp_path / "r.sqlite")
    open_store(path)
    ctx = mp.get_context("fork")  # the store needs no torch; fork keeps the test light
    procs = [ctx.Process(target=_writer, args=(path, f"c{i % 3}")) for i in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
        assert p.exitcode == 0
    assert completed_cells(open_store(path)) == {"c0", "c1", "c2"}
    assert len(read_results(path)) == 6
