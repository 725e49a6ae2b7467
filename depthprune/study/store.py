"""The results store of a study: one SQLite file in the run directory, one row per
(cell, eval set, domain).

A *cell* is one point of a sweep grid: a ranking method with its options, a budget, and a
healing recipe (or none). Every row carries what a paired test needs (per-sample correctness
and NLL, keyed by sample id), so the report never goes back to the model.

Writes are crash-safe and multi-process-safe: SQLite in WAL mode with a busy timeout, and all
rows of one cell go in ONE transaction, so a killed sweep leaves each cell either complete or
absent (``kill -9`` included) and a resumed sweep recomputes only absent cells. The primary key
forbids duplicates; writing a cell that is already stored is a no-op (first writer wins).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
  key   TEXT PRIMARY KEY,
  value TEXT NOT NULL                -- JSON
);
CREATE TABLE IF NOT EXISTS results (
  cell            TEXT NOT NULL,     -- stable key of the cell (see cell_key)
  method          TEXT NOT NULL,     -- ranking method registry name, e.g. 'domain'
  label           TEXT NOT NULL,     -- display name, e.g. 'domain:math', 'mixed:math=0.7'
  options         TEXT NOT NULL,     -- JSON: the method's options (domain, weights, token_group, seed, base)
  budget          INTEGER NOT NULL,  -- layers removed
  budget_fraction REAL NOT NULL,     -- budget / decoder layers of the unpruned model
  removed         TEXT NOT NULL,     -- JSON list of removed layers, 0-based, original numbering
  heal            TEXT NOT NULL,     -- JSON of what was done after pruning: the healing recipe and/or
                                     -- {"compensate": {...}} (a training-free repair); 'null' for none
  eval_set        TEXT NOT NULL,     -- eval file stem or lmms-eval task name
  domain          TEXT NOT NULL,
  n               INTEGER NOT NULL,  -- samples of this domain in this eval set
  accuracy        REAL,              -- 0-1; NULL when generation accuracy was not asked
  ci_low          REAL,              -- 95% Wilson interval of accuracy
  ci_high         REAL,
  nll             REAL,              -- mean teacher-forced answer NLL, nats per answer token
  samples         TEXT NOT NULL,     -- JSON list of [sample_id, correct (1/0/null), nll (float/null)]
  seconds         REAL NOT NULL,     -- wall seconds spent on this cell (prune+heal+eval)
  created         REAL NOT NULL,     -- unix time written
  PRIMARY KEY (cell, eval_set, domain)
);
"""


@dataclass
class ResultRow:
    """One stored result; ``samples`` is ``[(sample_id, correct, nll), ...]``."""

    cell: str
    method: str
    label: str
    options: dict[str, Any]
    budget: int
    budget_fraction: float
    removed: list[int]
    heal: dict[str, Any] | None
    eval_set: str
    domain: str
    n: int
    accuracy: float | None
    ci_low: float | None
    ci_high: float | None
    nll: float | None
    samples: list[tuple[str, int | None, float | None]]
    seconds: float
    created: float = field(default_factory=time.time)

    _JSON = ("options", "removed", "heal", "samples")

    def to_sql(self) -> dict[str, Any]:
        row = asdict(self)
        for key in self._JSON:
            row[key] = json.dumps(row[key], sort_keys=True)
        return row

    @classmethod
    def from_sql(cls, row: sqlite3.Row) -> "ResultRow":
        data = dict(row)
        for key in cls._JSON:
            data[key] = json.loads(data[key])
        data["samples"] = [tuple(s) for s in data["samples"]]
        return cls(**data)


def treatment(heal: dict | str | None) -> str:
    """What was done after pruning, from a row's ``heal`` (a dict or its JSON): ``none``, the
    healing mode (``lora``), the repair (``refit``), or both (``refit + lora``)."""
    if isinstance(heal, str):
        heal = json.loads(heal)
    if not heal:
        return "none"
    parts = [heal["compensate"]["method"]] if "compensate" in heal else []
    if set(heal) - {"compensate"}:
        parts.append(str(heal.get("mode", "lora")))
    return " + ".join(parts)


def cell_key(method: str, options: dict[str, Any], budget: int, heal: dict[str, Any] | None) -> str:
    """Stable key of a cell: the same method, options, budget and recipe give the same key."""
    return json.dumps({"method": method, "options": options, "budget": budget, "heal": heal},
                      sort_keys=True, separators=(",", ":"))


def open_store(path: str | Path) -> sqlite3.Connection:
    """Open (creating if needed) the store at ``path``; safe to open from several processes."""
    conn = sqlite3.connect(str(path), timeout=60.0, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")  # a committed cell survives power loss / kill -9
    conn.executescript(SCHEMA)
    return conn


def open_store_readonly(path: str | Path) -> sqlite3.Connection:
    """Open an existing store for reading only (a report never writes it): read-only, or, where
    even SQLite's shared-memory file cannot be created (a read-only file system), immutable.
    Raises sqlite3.DatabaseError if it is not a store."""
    uri = Path(path).resolve().as_uri()
    for mode in ("mode=ro", "immutable=1"):
        try:
            conn = sqlite3.connect(f"{uri}?{mode}", uri=True)
            conn.row_factory = sqlite3.Row
            conn.execute("SELECT 1 FROM results LIMIT 1")
            conn.execute("SELECT 1 FROM meta LIMIT 1")
            return conn
        except sqlite3.OperationalError as exc:
            if "unable to open" not in str(exc) and "readonly" not in str(exc):
                raise
    raise sqlite3.OperationalError(f"unable to open {path} even read-only")


def write_cell(conn: sqlite3.Connection, rows: Sequence[ResultRow]) -> bool:
    """Store all rows of one cell atomically. Returns False (and writes nothing) if the cell
    was already stored, e.g. by another process."""
    if not rows:
        raise ValueError("write_cell needs at least one row")
    cells = {r.cell for r in rows}
    if len(cells) != 1:
        raise ValueError(f"write_cell got rows of {len(cells)} cells; write one cell at a time")
    conn.execute("BEGIN IMMEDIATE")  # take the write lock before checking, so check+insert is atomic
    try:
        if conn.execute("SELECT 1 FROM results WHERE cell = ? LIMIT 1", (rows[0].cell,)).fetchone():
            conn.execute("ROLLBACK")
            return False
        cols = list(rows[0].to_sql())
        conn.executemany(f"INSERT INTO results ({', '.join(cols)}) VALUES "
                         f"({', '.join(':' + c for c in cols)})", [r.to_sql() for r in rows])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return True


def completed_cells(conn: sqlite3.Connection) -> set[str]:
    """Keys of the cells already stored."""
    return {r[0] for r in conn.execute("SELECT DISTINCT cell FROM results")}


def read_results(conn_or_path: sqlite3.Connection | str | Path) -> list[ResultRow]:
    """Every stored row, ordered by budget, label, eval set, domain."""
    conn = conn_or_path if isinstance(conn_or_path, sqlite3.Connection) else open_store(conn_or_path)
    query = "SELECT * FROM results ORDER BY budget, label, heal, eval_set, domain"
    return [ResultRow.from_sql(r) for r in conn.execute(query)]


def set_meta(conn: sqlite3.Connection, items: dict[str, Any]) -> None:
    """Store run-level facts (model id, layer count, domains, study settings) as JSON values."""
    conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                     [(k, json.dumps(v, sort_keys=True)) for k, v in items.items()])


def get_meta(conn: sqlite3.Connection) -> dict[str, Any]:
    """All run-level facts."""
    return {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}



