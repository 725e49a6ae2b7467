"""Shared checks of the hardening tests: a bad input must end in one line ``error: ...``
naming it, exit status 2, no traceback, no temporary left behind, inputs byte-identical."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from depthprune.cli import app

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]


def run(*args: object):
    """Invoke the CLI in-process."""
    return runner.invoke(app, [str(a) for a in args])


def tree_hash(path: Path) -> str:
    """sha256 over every file's relative path and bytes under ``path`` (or of one file)."""
    h = hashlib.sha256()
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path.parent if path.is_file() else path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def leftovers(*roots: Path) -> list[Path]:
    """Temporaries of depthprune's writers anywhere under ``roots``."""
    found = []
    for root in roots:
        for p in Path(root).rglob("*"):
            if ".tmp-" in p.name or ".old-" in p.name or p.name.endswith((".tmp", ".probe")):
                found.append(p)
    return found


def assert_user_error(res, *needles: object, roots: tuple[Path, ...] = ()) -> str:
    """Exit status 2, exactly one line ``error: ...`` holding every needle, no traceback, and
    no temporaries under ``roots``. Returns the error line."""
    output = res.output if hasattr(res, "output") else res.stdout + res.stderr
    code = res.exit_code if hasattr(res, "exit_code") else res.returncode
    assert code == 2, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output
    for needle in needles:
        assert str(needle) in errors[0], output
    assert not leftovers(*roots), leftovers(*roots)
    return errors[0]


def cli_subprocess(*args: object, timeout: float = 300, env: dict | None = None,
                   preexec=None, **popen) -> subprocess.CompletedProcess:
    """Run ``python -m depthprune.cli ARGS`` in a fresh process (real stdout/stderr)."""
    full_env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
                    TRANSFORMERS_VERBOSITY="error", **(env or {}))
    return subprocess.run([sys.executable, "-m", "depthprune.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=full_env, preexec_fn=preexec, **popen)


def spawn(*args: object, env: dict | None = None) -> subprocess.Popen:
    """Start ``python -m depthprune.cli ARGS`` without waiting."""
    full_env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
                    TRANSFORMERS_VERBOSITY="error", **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "depthprune.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=full_env)


@contextlib.contextmanager
def file_size_limit(max_bytes: int):
    """Writes past ``max_bytes`` fail with EFBIG (as a full disk fails with ENOSPC), in this process."""
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, old_limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)


def edit_json(path: Path, fn) -> None:
    """Rewrite the JSON file ``path`` after ``fn(obj)`` mutated it (or returned a list to write instead)."""
    obj = json.loads(path.read_text())
    new = fn(obj)
    path.write_text(json.dumps(new if isinstance(new, list) else obj))


def dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid
