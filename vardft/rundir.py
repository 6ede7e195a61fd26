"""Run directories: which folders vardft may write into, and one process per run.

A run directory is a folder vardft created for one training run. It holds a
marker, ``vardft-run.json`` (:data:`MARKER_FILE`), with the run's kind
(``"molecule"`` or ``"crystal"``), the vardft version and the marker format, and
only the files vardft writes there (:data:`RUN_FILES`). vardft writes only into
a directory it can recognise as its own:

* a new run (no ``--resume``) goes into a path that does not exist yet, or into
  an empty directory; anything else is refused with the name of one file in the
  way, so a user's folder is never overwritten;
* ``--resume`` needs a vardft run of the same kind;
* runs written before the marker existed (``config.json`` with
  ``"format_version": 1`` next to ``checkpoint.msgpack``; crystal runs with
  ``"kind": "crystal"`` in the config) count as runs of their kind.

While a run is claimed (:func:`claim_run_directory`) the claiming process holds
an exclusive ``flock`` on ``RUN/.lock``; a second process is refused. The kernel
releases the lock when the process ends, however it ends, so a lock file left
behind by a killed process never blocks the next run.

Example:
    >>> import os, tempfile
    >>> from vardft.rundir import claim_run_directory
    >>> with tempfile.TemporaryDirectory() as parent:
    ...     run = os.path.join(parent, "run")
    ...     with claim_run_directory(run, "molecule", resume=False):
    ...         pass  # write config.json, checkpoint.msgpack, log.jsonl
    ...     sorted(os.listdir(run))
    ['.lock', 'vardft-run.json']
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from importlib.metadata import version
from typing import Any, Iterator, Mapping, Sequence

from basis.errors import CheckpointError
from vardft.checkpoint import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    FORMAT_VERSION,
    LOG_FILE,
    VALIDATION_FILE,
    atomic_write_bytes,
)

MARKER_FILE = "vardft-run.json"
"""The file that makes a directory a vardft run."""

LOCK_FILE = ".lock"
"""Locked (``flock``) by the process that holds the run; holds its pid."""

MARKER_VERSION = 1
"""Format of :data:`MARKER_FILE`; a newer one is refused rather than guessed at."""

RUN_KINDS = ("molecule", "crystal")

RUN_FILES = (CONFIG_FILE, CHECKPOINT_FILE, LOG_FILE, VALIDATION_FILE, MARKER_FILE, LOCK_FILE)
"""Every file vardft writes into a run directory: the only ones it ever removes."""

_HELD: dict[str, str] = {}
"""Run directories this process holds (real path → kind), so that a claim nested in
another claim of the same directory (``demo`` around ``train``) does not lock itself out."""


def _version() -> str:
    try:
        return version("vardft")
    except Exception:  # not installed (a source checkout on sys.path)
        return "unknown"


def _check_kind(kind: str) -> str:
    if kind not in RUN_KINDS:
        raise ValueError(f"run kind must be one of {RUN_KINDS}, not {kind!r}")
    return kind


def read_marker(path: str) -> dict | None:
    """The marker of run directory ``path``, or ``None`` when it has none.

    Raises:
        CheckpointError: the marker is unreadable, or written by a newer vardft.
    """
    marker = os.path.join(path, MARKER_FILE)
    if not os.path.isfile(marker):
        return None
    try:
        with open(marker) as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {marker}: {exc}") from None
    if not isinstance(data, dict) or data.get("kind") not in RUN_KINDS:
        raise CheckpointError(f"{marker} is damaged (no run kind)")
    if int(data.get("marker_version", 0)) > MARKER_VERSION:
        raise CheckpointError(f"{marker} was written by a newer vardft ({data.get('vardft_version')}); upgrade vardft")
    return data


def write_marker(path: str, kind: str, *, created_by: str = "train") -> None:
    """Write the marker that makes ``path`` a vardft run of ``kind``."""
    record = {
        "kind": _check_kind(kind),
        "marker_version": MARKER_VERSION,
        "format_version": FORMAT_VERSION,
        "vardft_version": _version(),
        "created_by": created_by,
    }
    atomic_write_bytes(os.path.join(path, MARKER_FILE), (json.dumps(record, indent=2) + "\n").encode())


def _legacy_kind(path: str) -> str | None:
    """Kind of a run written before the marker, or ``None`` when ``path`` is not one."""
    config = os.path.join(path, CONFIG_FILE)
    if not (os.path.isfile(config) and os.path.isfile(os.path.join(path, CHECKPOINT_FILE))):
        return None
    try:
        with open(config) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format_version") != 1:
        return None
    return "crystal" if data.get("kind") == "crystal" else "molecule"


def _kind_or_none(path: str) -> str | None:
    marker = read_marker(path)
    if marker is not None:
        return marker["kind"]
    return _legacy_kind(path)


def run_kind(path: str) -> str:
    """``"molecule"`` or ``"crystal"``: the kind of the vardft run in ``path``.

    Raises:
        CheckpointError: no such directory, or not a vardft run.
    """
    if not os.path.exists(path):
        raise CheckpointError(f"no such run directory: {path}")
    if not os.path.isdir(path):
        raise CheckpointError(f"{path} is a file, not a run directory")
    kind = _kind_or_none(path)
    if kind is None:
        raise CheckpointError(f"{path} is not a vardft run directory (no {MARKER_FILE})")
    return kind


def is_run(path: str) -> bool:
    """True when ``path`` is a directory holding a vardft run (marker or legacy)."""
    try:
        return run_kind(path) in RUN_KINDS
    except CheckpointError:
        return False


def run_containing(path: str) -> str | None:
    """The vardft run directory that ``path`` is (or lies inside), or ``None``."""
    here = os.path.abspath(path)
    while True:
        if os.path.isdir(here) and is_run(here):
            return here
        parent = os.path.dirname(here)
        if parent == here:
            return None
        here = parent


def _foreign_entries(path: str, own: Sequence[str] = (LOCK_FILE,)) -> list[str]:
    """Entries of directory ``path`` other than ``own``, files vardft would touch first."""
    entries = sorted(set(os.listdir(path)) - set(own))
    touched = [e for e in RUN_FILES if e in entries]
    return touched + [e for e in entries if e not in touched]


def _check_new(path: str, kind: str, created_by: str, replace: bool) -> bool:
    """Check that a new run may start in ``path``; True when vardft's own files must be
    removed first (``replace`` of a run by the same creator)."""
    if not os.path.exists(path):
        return False
    if not os.path.isdir(path):
        raise CheckpointError(f"{path} is a file, not a directory; choose another --out")
    existing = _kind_or_none(path)
    if existing is None:
        entries = _foreign_entries(path)
        if entries:
            raise CheckpointError(f"{path} holds {entries[0]} that vardft did not write; choose another --out")
        return False
    marker = read_marker(path)
    if replace and marker is not None and marker.get("created_by") == created_by and existing == kind:
        others = _foreign_entries(path, RUN_FILES)
        if others:
            raise CheckpointError(
                f"{path} holds {others[0]} that vardft did not write; choose another --out"
            )
        return True
    raise CheckpointError(
        f"{path} already holds a vardft {existing} run; pass --resume to continue it or choose another --out"
    )


def _check_resume_target(path: str, kind: str) -> None:
    if not os.path.exists(path):
        raise CheckpointError(f"--resume: no run to resume at {path} (no such directory)")
    existing = run_kind(path)
    if existing != kind:
        raise CheckpointError(f"--resume: {path} holds a vardft {existing} run, not a {kind} run")


def _lock(path: str) -> int:
    """Open and ``flock`` ``path/.lock`` without blocking; the descriptor, which holds the lock.

    Raises:
        CheckpointError: another process holds the lock.
    """
    lock_path = os.path.join(path, LOCK_FILE)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        try:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        finally:
            os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise CheckpointError(f"{path} is in use by another vardft process (pid {pid})") from None
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _remove_run_files(path: str) -> None:
    """Remove exactly vardft's files from run directory ``path`` (the lock file stays)."""
    for name in RUN_FILES:
        target = os.path.join(path, name)
        if name != LOCK_FILE and os.path.isfile(target):
            os.remove(target)


@contextlib.contextmanager
def claim_run_directory(
    path: str,
    kind: str,
    *,
    resume: bool,
    created_by: str = "train",
    replace: bool = False,
) -> Iterator[str]:
    """Hold ``path`` as the run directory of one ``kind`` run for the duration of the block.

    Checks, before anything is written:

    * new run (``resume=False``): ``path`` does not exist (it is created) or is an
      empty directory. A directory with any other file, or holding a vardft run, is
      refused; with ``replace=True`` a run whose marker says it was made by
      ``created_by`` (of the same kind, with no other files) is emptied of vardft's
      own files (:data:`RUN_FILES`) and reused, which is what ``vardft demo`` does.
    * ``resume=True``: ``path`` holds a vardft run of the same ``kind`` (a run written
      before markers gets one).

    Then takes an exclusive, non-blocking ``flock`` on ``path/.lock`` (released when
    the block ends or the process dies) and writes the marker of a new run. A claim
    nested inside another claim of the same directory by this process only checks
    the kind.

    Args:
        path: the run directory (``--out``).
        kind: ``"molecule"`` or ``"crystal"``.
        resume: continue the run in ``path`` instead of starting one.
        created_by: recorded in the marker of a new run (``"train"``, ``"demo"``).
        replace: see above.

    Yields:
        ``path``.

    Raises:
        CheckpointError: the directory is not one vardft may use this way (the message
            names the path and a file in the way), is a run of the other kind, or is
            in use by another vardft process.
    """
    _check_kind(kind)
    key = os.path.realpath(path)
    if key in _HELD:
        if _HELD[key] != kind:
            raise CheckpointError(f"{path} is held as a {_HELD[key]} run, not a {kind} run")
        yield path
        return
    if resume:
        _check_resume_target(path, kind)
    else:
        _check_new(path, kind, created_by, replace)
    os.makedirs(path, exist_ok=True)
    fd = _lock(path)
    try:
        # checked again under the lock: another process may have claimed it meanwhile
        if resume:
            _check_resume_target(path, kind)
            if read_marker(path) is None:
                write_marker(path, kind, created_by="legacy")
        else:
            if _check_new(path, kind, created_by, replace):
                _remove_run_files(path)
            write_marker(path, kind, created_by=created_by)
        _HELD[key] = kind
        try:
            yield path
        finally:
            del _HELD[key]
    finally:
        os.close(fd)  # releases the flock; the file stays (removing it would race)


def _lookup(config: Mapping[str, Any], key: str) -> Any:
    """``config[key]``, where a dotted key (``"train.steps"``) walks into nested dicts."""
    value: Any = config
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


class _Missing:
    def __repr__(self) -> str:
        return "(not recorded)"


_MISSING = _Missing()


def _normalise(value: Any) -> Any:
    """Tuples as lists, as a JSON round trip leaves them."""
    if value is _MISSING:
        return value
    return json.loads(json.dumps(value, default=str))


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is _MISSING:
        return repr(value)
    return json.dumps(value, default=str)


def check_resume(saved: Mapping[str, Any], requested: Mapping[str, Any], keys: Sequence[str], *, run_dir: str | None = None) -> None:
    """Check that resuming with ``requested`` continues the run that ``saved`` describes.

    Args:
        saved: the run's recorded settings (its ``config.json``).
        requested: the settings of this invocation, same layout.
        keys: the settings that must agree; a dotted key (``"train.steps"``) looks
            into nested dicts. A key absent from both is equal.
        run_dir: named in the message when given.

    Raises:
        CheckpointError: one line listing every key that differs, e.g.
            ``--resume: the run was trained with basis def2-svp, not def2-tzvp; xc pbe, not b3lyp``.
    """
    diffs = []
    for key in keys:
        old, new = _normalise(_lookup(saved, key)), _normalise(_lookup(requested, key))
        if old is _MISSING and new is _MISSING:
            continue
        if old is _MISSING or new is _MISSING or old != new:
            diffs.append(f"{key} {_show(old)}, not {_show(new)}")
    if diffs:
        where = f" {run_dir}" if run_dir else ""
        raise CheckpointError(f"--resume: the run{where} was trained with " + "; ".join(diffs))


__all__ = [
    "LOCK_FILE",
    "MARKER_FILE",
    "RUN_FILES",
    "RUN_KINDS",
    "check_resume",
    "claim_run_directory",
    "is_run",
    "read_marker",
    "run_containing",
    "run_kind",
    "write_marker",
]
