"""Process-wide settings of the global CLI options, shared by every command.

``depthprune [--quiet] [--threads N] [--debug] COMMAND`` (or ``DEPTHPRUNE_QUIET=1``,
``DEPTHPRUNE_THREADS=N``, ``DEPTHPRUNE_DEBUG=1``) set them; library code reads them here.
Kept free of heavy imports: ``depthprune --help`` must not load torch.
"""

from __future__ import annotations

import os
import sys
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
    if quiet:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # the hub's and transformers' own bars
        os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"  # datasets' (save_to_disk in `data lmms-task`)
        if "datasets" in sys.modules:
            sys.modules["datasets"].disable_progress_bars()


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


def progress(iterable: Any = None, **kwargs: Any) -> Any:
    """A tqdm bar (``tqdm.auto``), disabled under ``--quiet`` whatever ``disable`` says."""
    from tqdm.auto import tqdm
    kwargs["disable"] = bool(kwargs.get("disable")) or quiet()
    return tqdm(iterable, **kwargs)


def close_progress_bars() -> None:
    """Close every open tqdm bar so that a following message starts on a fresh line."""
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
