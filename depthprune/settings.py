"""Process-wide settings of the global CLI options, shared by every command.

``depthprune [--quiet] [--threads N] [--debug] COMMAND`` (or ``DEPTHPRUNE_QUIET=1``,
``DEPTHPRUNE_THREADS=N``, ``DEPTHPRUNE_DEBUG=1``) set them; library code reads them here.
This is also the one place that decides how long work shows its progress
(:func:`progress_mode`, :func:`progress`): tqdm bars on a terminal, a few plain lines in a
log (stderr sent to a file or a pipe), nothing under ``--quiet``.
Kept free of heavy imports: ``depthprune --help`` must not load torch.
"""

from __future__ import annotations

import os
import sys
import time
import weakref
from typing import Any

ENV_QUIET, ENV_THREADS, ENV_DEBUG = "DEPTHPRUNE_QUIET", "DEPTHPRUNE_THREADS", "DEPTHPRUNE_DEBUG"
_TRUE = ("1", "true", "yes", "on")
#: values set by the CLI callback for this process; None = read the environment
_settings: dict[str, Any] = {"quiet": None, "threads": None, "debug": None}


def configure(quiet: bool | None = None, threads: int | None = None, debug: bool | None = None) -> None:
    """Set the global options for this process (the CLI callback calls it before every command)."""
    _settings.update(quiet=quiet, threads=threads, debug=debug)
    if threads is not None:
        if "torch" in sys.modules:
            apply_threads()
        else:  # torch reads these when it is first imported (by us or by any library)
            os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    if progress_mode() != "bars":
        quiet_libraries()


def quiet_libraries() -> None:
    """Turn off other libraries' progress bars (under --quiet, and in a log, where each of
    their updates would be one more carriage-return segment of one endless line)."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # the hub's and transformers' own bars
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"  # datasets' (save_to_disk in `data lmms-task`)
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
    if "transformers" in sys.modules:  # weight loading ("Loading weights") reads its own switch
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()


def _flag(name: str, env: str) -> bool:
    value = _settings[name]
    return bool(value) if value is not None else os.environ.get(env, "").strip().lower() in _TRUE


def quiet() -> bool:
    """True when progress bars are off (``--quiet`` / ``DEPTHPRUNE_QUIET=1``)."""
    return _flag("quiet", ENV_QUIET)


def debug() -> bool:
    """True when unexpected errors keep their traceback (``--debug`` / ``DEPTHPRUNE_DEBUG=1``)."""
    return _flag("debug", ENV_DEBUG)


def threads() -> int | None:
    """The ``--threads`` / ``DEPTHPRUNE_THREADS`` value, or None (torch's default)."""
    if _settings["threads"] is not None:
        return int(_settings["threads"])
    raw = os.environ.get(ENV_THREADS, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{ENV_THREADS}={raw!r}: give a positive whole number of threads, e.g. 1")
    return int(raw)


def apply_threads() -> None:
    """``torch.set_num_threads`` with the requested count (a no-op when none was requested)."""
    n = threads()
    if n is not None:
        import torch
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


def _notebook() -> bool:
    """True inside a Jupyter kernel (tqdm.auto draws widgets there: keep them)."""
    ipython = sys.modules.get("IPython")
    try:
        return ipython is not None and type(ipython.get_ipython()).__name__ == "ZMQInteractiveShell"
    except Exception:  # noqa: BLE001 - any doubt: not a notebook
        return False


def progress_mode(file: Any = None) -> str:
    """How long work shows its progress, decided here for every command and library call:
    ``"off"`` under ``--quiet``; ``"bars"`` (tqdm) when ``file`` (default: stderr) is a
    terminal, or in a notebook; else ``"lines"``: a log file or a pipe gets a few plain lines
    per step (:class:`LogProgress`)."""
    if quiet():
        return "off"
    stream = file if file is not None else sys.stderr
    try:
        terminal = bool(stream.isatty())
    except Exception:  # noqa: BLE001 - a closed or odd stream: not a terminal
        terminal = False
    return "bars" if terminal or _notebook() else "lines"


def progress(iterable: Any = None, **kwargs: Any) -> Any:
    """A progress bar with tqdm's interface, for the destination (:func:`progress_mode`): a
    tqdm bar (``tqdm.auto``) on a terminal, a :class:`LogProgress` in a log, nothing under
    ``--quiet`` (whatever ``disable`` says)."""
    mode = progress_mode(kwargs.get("file"))
    if mode == "lines" and not kwargs.get("disable"):
        return LogProgress(iterable, **kwargs)
    from tqdm.auto import tqdm
    kwargs["disable"] = bool(kwargs.get("disable")) or mode == "off"
    return tqdm(iterable, **kwargs)


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{max(0.0, seconds):.1f} s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class LogProgress:
    """Progress as plain lines, for a log: a start line, a line each time another tenth of the
    work is done (at most one every :attr:`GAP` seconds, so at most nine), and an end line with
    the count and the time. A step that starts while another is open (a cell's eval inside a
    sweep) writes only its end line, and only if it took :attr:`NESTED` seconds or more. The
    part of tqdm's interface depthprune uses: iterate, ``update``, ``set_postfix(_str)``,
    ``set_description``, ``close``, ``n``, ``total``, a context manager."""

    GAP = 5.0
    NESTED = 30.0
    #: the steps open now (weakly held: a step abandoned by an exception does not stay "open")
    _open: "weakref.WeakSet[LogProgress]" = weakref.WeakSet()

    def __init__(self, iterable: Any = None, desc: str | None = None, total: float | None = None,
                 unit: str = "it", initial: float = 0, unit_scale: bool = False, file: Any = None,
                 **_tqdm_only: Any) -> None:
        if total is None and iterable is not None:
            try:
                total = len(iterable)
            except TypeError:
                total = None
        self.iterable, self.desc, self.total = iterable, desc or "progress", total
        self.unit, self.unit_scale = unit, unit_scale
        self.n = self.initial = initial
        self.file, self.postfix, self.disable, self.closed = file, "", False, False
        self.nested = bool(LogProgress._open)
        self.started = self.last = time.monotonic()
        self.tenths = self._tenths()
        LogProgress._open.add(self)
        if not self.nested:
            done = f", {self._number(initial)} already done" if initial else ""
            self._write(f"{self.desc}: started, {self._amount(total) if total is not None else 'total unknown'}"
                        f"{done}")

    # ------------------------------------------------------------------ tqdm's interface
    def __iter__(self) -> Any:
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.close(silent=exc_type is not None)

    def update(self, n: float = 1) -> None:
        self.n += n
        if self.closed or self.nested or not self.total:
            return
        now = time.monotonic()
        tenths = self._tenths()
        if self.tenths < tenths < 10 and now - self.last >= self.GAP:
            self.tenths, self.last = tenths, now
            rate = (self.n - self.initial) / max(now - self.started, 1e-9)
            left = f", about {_duration((self.total - self.n) / rate)} left" if rate > 0 else ""
            self._write(f"{self.desc}: {self._amount(self.n, self.total)} ({self.n / self.total:.0%}), "
                        f"{_duration(now - self.started)}{left}{self._postfix()}")

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        items = dict(ordered_dict or {}, **kwargs)
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or self.desc

    def refresh(self, *_: Any, **__: Any) -> None:
        pass

    def clear(self, *_: Any, **__: Any) -> None:
        pass

    def close(self, silent: bool = False) -> None:
        """Write the end line (unless ``silent``, or a short nested step) once."""
        if self.closed:
            return
        self.closed = True
        LogProgress._open.discard(self)
        elapsed = time.monotonic() - self.started
        if silent or (self.nested and elapsed < self.NESTED):
            return
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0
        speed = ""
        if rate > 0 and not self.unit_scale and self.unit != "s":
            speed = f" ({rate:.1f} {self.unit}/s)" if rate >= 1 else f" ({1 / rate:.1f} s/{self.unit})"
        self._write(f"{self.desc}: finished, {self._amount(self.n, self.total)} in {_duration(elapsed)}"
                    f"{speed}{self._postfix()}")

    # ------------------------------------------------------------------ formatting
    def _tenths(self) -> int:
        return int(10 * self.n / self.total) if self.total else 0

    def _number(self, x: float) -> str:
        if self.unit_scale:
            from tqdm import tqdm
            return tqdm.format_sizeof(x)
        return f"{x:g}" if isinstance(x, float) else str(x)

    def _amount(self, n: float, total: float | None = None) -> str:
        unit = self.unit + ("s" if self.unit.isalpha() and len(self.unit) > 2 and not self.unit.endswith("s") else "")
        count = self._number(n) + (f"/{self._number(total)}" if total is not None else "")
        return f"{count}{'' if self.unit_scale else ' '}{unit}"

    def _postfix(self) -> str:
        return f", {self.postfix}" if self.postfix else ""

    def _write(self, line: str) -> None:
        stream = self.file if self.file is not None else sys.stderr
        try:
            print(line, file=stream, flush=True)
        except (OSError, ValueError):  # a closed pipe must not stop the work
            pass


def close_progress_bars() -> None:
    """Close every open bar so that a following message starts on a fresh line (the lines of a
    log's steps are closed without their end line: the message says what happened)."""
    for bar in list(LogProgress._open):
        bar.close(silent=True)
    if "tqdm" not in sys.modules:
        return
    import tqdm.auto
    import tqdm.std
    for cls in {tqdm.std.tqdm, tqdm.auto.tqdm}:
        for bar in list(getattr(cls, "_instances", ())):
            try:
                bar.close()
            except Exception:  # noqa: BLE001 - a broken bar must not hide the real error
                pass
