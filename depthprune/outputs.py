"""Write outputs completely or not at all, and never replace what the user did not ask to.

Every output (a checkpoint directory, a scores pair, a plan, metrics + predictions) is built
under a hidden temporary sibling ``.NAME.tmp-PID`` and renamed into place on success:

- without ``overwrite`` the final step is a rename-if-absent (``rename(2)`` of a directory
  onto a non-empty one fails; a file is published with ``link(2)``, which fails if the name
  exists), so an output that appeared while the run was working is never replaced;
- with ``overwrite`` the previous output is moved aside and deleted only after the new one
  is in place; of concurrent runs, the last to finish wins and its output is whole;
- on any error the temporaries are removed; those of a killed process (PID no longer
  alive) are reclaimed by the next run that writes the same output.

Write errors (disk full, read-only, permission denied) become :class:`OutputError` naming the
output. Kept free of heavy imports so the data tools can use it without loading torch.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_TMP, _OLD = ".tmp-", ".old-"
_EXISTS = (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR)


class OutputError(ValueError):
    """An output cannot be written (exists, overlaps an input, disk full, not writable)."""


class OutputExistsError(OutputError, FileExistsError):
    """The output exists (or appeared during the run) and ``overwrite`` was not given."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def reclaim_stale(out: Path) -> list[Path]:
    """Remove temporaries of ``out`` (``.NAME.tmp-PID``, ``.NAME.old-PID``) left by processes
    that are no longer alive; returns what was removed."""
    removed = []
    with contextlib.suppress(OSError):
        for p in out.parent.glob(f".{out.name}.*"):
            rest = p.name[len(out.name) + 1:]
            for tag in (_TMP, _OLD):
                if rest.startswith(tag) and rest[len(tag):].isdigit() and not _pid_alive(int(rest[len(tag):])):
                    _remove(p)
                    removed.append(p)
    return removed


def temp_path(out: Path) -> Path:
    """This process's temporary sibling of ``out``."""
    return out.parent / f".{out.name}{_TMP}{os.getpid()}"


#: errno values of a failed write (not of a missing input)
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


def describe_oserror(err: OSError) -> str:
    """``strerror`` plus a hint for the usual write failures."""
    hint = {errno.ENOSPC: "free some space or write elsewhere",
            errno.EDQUOT: "free some space or write elsewhere",
            errno.EROFS: "the file system is read-only; write elsewhere",
            errno.EACCES: "check the permissions or write elsewhere",
            errno.EPERM: "check the permissions or write elsewhere",
            errno.EFBIG: "the file is larger than this system allows; write elsewhere"}.get(err.errno, "")
    return f"{err.strerror or err}" + (f"; {hint}" if hint else "")


def write_error(out: Path, err: OSError) -> OutputError:
    """An OutputError naming ``out`` for an OSError raised while writing it."""
    return OutputError(f"{out}: cannot write the output ({describe_oserror(err)}); nothing was written")


def io_failure(err: BaseException) -> str | None:
    """The OS error text inside a library's wrapper (safetensors reports ENOSPC/EFBIG as a
    SafetensorError "I/O error: ..."), or None if ``err`` is not a write failure."""
    text = str(err)
    if type(err).__name__ == "SafetensorError" and "I/O error" in text:
        return text.split("I/O error:", 1)[1].strip()
    return None


@dataclass(frozen=True)
class Inputs:
    """What a run reads, for the one rule every output follows (:func:`check_output`).

    An output may not be, be inside, or contain any of ``paths``: the files and folders the run
    reads (the model directory or file, each data file and every image its records name, a
    folder read as a whole, a scores pair, a plan, a study file, a teacher), --overwrite or not.
    Anything else is allowed: a new run directory beside the study file or inside the project
    folder that holds the data destroys nothing. ``owned``: folders that belong to the output
    itself (the demo's data inside its run directory); inputs inside them are not counted."""

    paths: tuple[Path, ...] = ()
    owned: tuple[Path, ...] = ()

    def __add__(self, other: "Inputs") -> "Inputs":
        return Inputs(self.paths + other.paths, self.owned + other.owned)


def inputs_of(*, model: str | os.PathLike | None = None, data: Sequence[str | os.PathLike] = (),
              files: Sequence[str | os.PathLike | None] = (), folders: Sequence[str | os.PathLike | None] = (),
              study: str | os.PathLike | None = None, owned: Sequence[str | os.PathLike] = ()) -> Inputs:
    """The :class:`Inputs` of a run: a local ``model`` (a directory or file that exists; pass
    the resolved name: a hub id reads nothing local), ``data`` files (each brings the images its
    records name), other ``files`` read (None skipped; a scores ``.json`` brings its
    ``.safetensors``), ``folders`` read as a whole (None skipped: an lmms-eval task folder), a
    ``study`` file."""
    paths: list[Path] = []
    if model is not None and Path(model).expanduser().exists():
        paths.append(Path(model).expanduser())
    if study is not None:
        paths.append(Path(study).expanduser())
    for f in files:
        if f is not None:
            paths.append(Path(f).expanduser())
            if str(f).endswith(".json") and Path(f).with_suffix(".safetensors").exists():
                paths.append(Path(f).expanduser().with_suffix(".safetensors"))
    paths += [Path(f).expanduser() for f in folders if f is not None]
    for path in dict.fromkeys(Path(f).expanduser() for f in data):  # a file given twice is read once
        if path.is_dir():
            continue  # not a data file: the loader refuses it, naming it
        paths.append(path)
        if path.is_file():
            from depthprune.data.records import referenced_images
            paths += referenced_images(path)
    return Inputs(tuple(dict.fromkeys(paths)), tuple(Path(o).expanduser() for o in owned))


def _absolute(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(Path(path).expanduser())).resolve()


def _resolver() -> Any:
    """``_absolute`` as a string, for many paths, most of them files in a few folders (a data
    set's images): each folder is resolved once; a file that is itself a link in full."""
    folders: dict[str, str] = {}

    def resolve(path: Path) -> str:
        text = os.path.abspath(os.path.expanduser(path))
        folder, name = os.path.split(text)
        if not name or os.path.islink(text):
            return os.path.realpath(text)
        if folder not in folders:
            folders[folder] = os.path.realpath(folder)
        return os.path.join(folders[folder], name)
    return resolve


def refuse_overlap(out: Path, inputs: Inputs | Sequence[str | os.PathLike], option: str = "--out") -> None:
    """Refuse ``out`` if it is, is inside, or contains an input (:class:`Inputs`), even with
    --overwrite: replacing it would destroy the input."""
    if not isinstance(inputs, Inputs):
        inputs = Inputs(tuple(Path(p) for p in inputs))
    target = _absolute(out)
    around = {str(p) for p in target.parents}  # an input there holds the output
    within = str(target).rstrip(os.sep) + os.sep  # an input under this prefix is held by the output
    owned = [str(_absolute(o)).rstrip(os.sep) + os.sep for o in inputs.owned]
    resolve = _resolver()
    for src in inputs.paths:
        source = resolve(src)
        if any((source + os.sep).startswith(o) for o in owned):
            continue
        if source == str(target) or source in around or source.startswith(within):
            how = "is" if source == str(target) else "is inside" if source in around else "contains"
            raise OutputError(f"{option} {out}: {how} the input {src}; writing there could destroy it "
                              f"(--overwrite does not change this). Choose a {option} outside it")


def _writable_ancestor(out: Path, option: str) -> None:
    """Refuse an output whose nearest existing ancestor is not a writable directory (probed by
    creating and removing one file there; nothing else is created before the run works)."""
    parent = _absolute(out).parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{option} {out}: cannot write in {parent} (a file, not a directory). "
                          f"Choose another {option}")
    probe = parent / f".{out.name}{_TMP}{os.getpid()}.probe"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
        probe.unlink()
    except OSError as err:
        raise OutputError(f"{option} {out}: cannot write in {parent} ({describe_oserror(err)})") from None


def check_output(out: str | os.PathLike, overwrite: bool, kind: str = "dir",
                 inputs: Inputs | Sequence[str | os.PathLike] = (), option: str = "--out") -> Path:
    """The one guard every command runs on every output, before any work: no overlap with what
    the run reads (:class:`Inputs`; a plain list counts as ``paths``), the right kind, the
    overwrite rule, and a writable place.

    ``kind`` is "dir" (a non-empty directory counts as existing) or "file". Returns the path.
    Raises OutputError naming ``option`` and the path, with the fix.
    """
    out = Path(out).expanduser()
    refuse_overlap(out, inputs, option)  # first: --overwrite must not even be suggested for an input
    if kind == "dir":
        if out.exists() and not out.is_dir():
            raise OutputError(f"{option} {out}: exists and is not a directory. Choose another {option}")
        if out.is_dir() and any(out.iterdir()) and not overwrite:
            raise OutputExistsError(f"{option} {out}: directory exists and is not empty. "
                                    f"Choose another {option} or pass --overwrite")
    else:
        if out.is_dir():
            raise OutputError(f"{option} {out}: is a directory; give a file name")
        if out.exists() and not overwrite:
            raise OutputExistsError(f"{option} {out}: file exists. Choose another {option} or pass --overwrite")
    _writable_ancestor(out, option)
    return out


@contextlib.contextmanager
def atomic_dir(out_dir: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling of ``out_dir``; on success it is renamed to ``out_dir``.

    ``overwrite=False``: an ``out_dir`` that is not empty when the run finishes (e.g. written by
    a concurrent run) is not replaced: OutputError, and this run's output is discarded.
    ``overwrite=True``: an existing ``out_dir`` is replaced. On any error the temporary
    directory is removed and ``out_dir`` is untouched; OSErrors raised while writing become
    OutputError naming ``out_dir``.
    """
    out = Path(out_dir)
    tmp = temp_path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        reclaim_stale(out)
        if tmp.exists():
            _remove(tmp)
        tmp.mkdir()
    except OSError as err:
        raise write_error(out, err) from None
    try:
        yield tmp
        _publish_dir(tmp, out, overwrite)
    except OSError as err:
        _remove(tmp)
        if err.filename and not str(err.filename).startswith((str(tmp), str(out))):
            raise  # reading an input failed, not writing the output: the CLI names that file
        raise write_error(out, err) from None
    except BaseException as err:
        _remove(tmp)
        if (why := io_failure(err)) is not None:
            raise OutputError(f"{out}: cannot write the output ({why}); nothing was written") from None
        raise


def _publish_dir(tmp: Path, out: Path, overwrite: bool) -> None:
    if not overwrite:
        try:
            os.rename(tmp, out)  # replaces only an empty directory
        except OSError as err:
            if err.errno in _EXISTS:
                raise OutputExistsError(f"{out}: appeared while this run was writing (another run?); it "
                                        "was not replaced and this run's output was discarded. Choose "
                                        "another --out or pass --overwrite") from None
            raise
        return
    for _ in range(100):  # another --overwrite run may publish between our two renames
        old = out.parent / f".{out.name}{_OLD}{os.getpid()}"
        moved = False
        if out.exists() or out.is_symlink():
            try:
                os.rename(out, old)
                moved = True
            except FileNotFoundError:
                pass
        try:
            os.rename(tmp, out)
        except OSError as err:
            if moved and err.errno not in _EXISTS:
                with contextlib.suppress(OSError):  # put the previous output back
                    os.rename(old, out)
                    moved = False
            if err.errno not in _EXISTS:
                raise
            continue
        finally:
            if moved:
                _remove(old)
        return
    raise OutputError(f"{out}: other runs keep replacing it; try again")


@contextlib.contextmanager
def atomic_files(outs: Sequence[str | os.PathLike], overwrite: bool) -> Iterator[list[Path]]:
    """Yield one temporary path per output file; on success publish them in order (put the
    file that marks completion last).

    ``overwrite=False``: each file is published with ``link(2)``, which fails if the name
    exists, so a file that appeared meanwhile is never replaced (the files already published
    by this call are removed again and OutputError is raised). On any error the temporaries
    are removed; OSErrors while writing become OutputError naming the output.
    """
    paths = [Path(p) for p in outs]
    tmps = [temp_path(p) for p in paths]
    try:
        for p in paths:
            p.parent.mkdir(parents=True, exist_ok=True)
            reclaim_stale(p)
    except OSError as err:
        raise write_error(paths[0], err) from None
    published: list[Path] = []
    try:
        yield tmps
        for tmp, path in zip(tmps, paths):
            if overwrite:
                os.replace(tmp, path)
            else:
                _link_if_absent(tmp, path)
            published.append(path)
    except OSError as err:
        if not overwrite:
            for path in published:
                _remove(path)
        target = next((p for p, t in zip(paths, tmps) if err.filename in (str(p), str(t))), paths[0])
        raise write_error(target, err) from None
    except BaseException as err:
        if not overwrite:
            for path in published:
                _remove(path)
        if (why := io_failure(err)) is not None:
            raise OutputError(f"{paths[0]}: cannot write the output ({why}); nothing was written") from None
        raise
    finally:
        for tmp in tmps:
            if tmp.exists() or tmp.is_symlink():
                _remove(tmp)


def _link_if_absent(tmp: Path, path: Path) -> None:
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise OutputExistsError(f"{path}: appeared while this run was writing (another run?); it was not "
                                "replaced. Choose another output or pass --overwrite") from None
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if path.exists():  # no hard links on this file system: check, then rename
            raise OutputExistsError(f"{path}: appeared while this run was writing (another run?); it "
                                    "was not replaced. Choose another output or pass --overwrite") from None
        os.replace(tmp, path)
        return
    tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str, overwrite: bool) -> Path:
    """Write one text file (UTF-8) atomically under the overwrite rule; returns the path."""
    path = Path(path)
    with atomic_files([path], overwrite) as (tmp,):
        tmp.write_text(text, encoding="utf-8")
    return path


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, 64 hex characters (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
