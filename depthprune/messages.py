"""Error messages bounded in time, memory and length, whatever the input.

Every message that echoes a value the user gave (a study option, a JSONL field) shows it with
:func:`show`, a bounded ``repr``: a few levels, a few items and a few dozen characters, however
large or deeply shared the value is (a YAML alias bomb expands to a billion items; ``repr`` of it
would run out of memory). :func:`one_line` puts any message on one line of bounded length. Kept
free of heavy imports.
"""

from __future__ import annotations

import reprlib
from typing import Any

#: the longest echo of a value in a message
SHOW_LIMIT = 80
#: the longest error line; a longer message keeps its start (what, naming the input) and its end (the fix)
LINE_LIMIT = 2000

_repr = reprlib.Repr()
_repr.maxlevel = 3
_repr.maxlist = _repr.maxtuple = _repr.maxset = _repr.maxfrozenset = _repr.maxdeque = _repr.maxarray = 6
_repr.maxdict = 6
_repr.maxstring = 60
_repr.maxlong = 40
_repr.maxother = 60


def show(value: Any, limit: int = SHOW_LIMIT) -> str:
    """``repr(value)`` for a message, at most ``limit`` characters, in time and memory bounded
    by the limits of the bounded repr (not by the size of ``value``)."""
    try:
        text = _repr.repr(value)
    except Exception:  # noqa: BLE001 - e.g. an int too long to convert: name the type instead
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def one_line(text: str, limit: int = LINE_LIMIT) -> str:
    """``text`` on one line (each run of white space becomes one space), at most about ``limit``
    characters: a longer text keeps its start and its end around `` ... ``."""
    if len(text) > 4 * limit:  # bound the work before splitting
        text = text[:2 * limit] + " " + text[-2 * limit:]
    text = " ".join(text.split())
    if len(text) > limit:
        head = limit * 2 // 3
        text = text[:head] + " ... " + text[len(text) - (limit - head):]
    return text
