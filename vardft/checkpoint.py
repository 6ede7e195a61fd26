"""Run directories: configuration, parameters and optimizer state on disk.

Layout of ``RUN_DIR``::

    config.json        everything needed to rebuild the model (model, basis, xc, training)
    checkpoint.msgpack parameters, optimizer state, step, counters (flax msgpack)
    log.jsonl          one JSON object per training step
    validation.json    metrics written by ``vardft validate`` / ``demo``

Every file is written to a temporary name in the same directory and renamed,
so a crash never leaves a half-written checkpoint. A checkpoint carries the
SHA-256 of its payload in a small header (:data:`CHECKPOINT_MAGIC`), checked on
every read: a file damaged on disk is an error naming it, never a model of
garbage parameters. ``log.jsonl`` is appended line by line; a kill during the
append leaves a torn last line, which :func:`read_log` drops with a warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import tempfile
import warnings
from typing import Any

from flax import serialization

from basis.errors import CheckpointError

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.msgpack"
LOG_FILE = "log.jsonl"
VALIDATION_FILE = "validation.json"
FORMAT_VERSION = 1

CHECKPOINT_MAGIC = b"vardft-ckpt-v2\n\x00"
"""First 16 bytes of a checkpoint with a checksum; the 32-byte SHA-256 of the
payload follows, then the flax msgpack payload. Files written before the
checksum start with a msgpack map (byte 0x80-0x8f or 0xde/0xdf), never with
these bytes, so they still load (unchecked)."""

_DIGEST_BYTES = 32


@contextlib.contextmanager
def atomic_output(path: str):
    """Yield a temporary file name next to ``path``; rename it onto ``path`` when the block succeeds.

    A crash or exception leaves ``path`` as it was and removes the temporary file.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def save_config(run_dir: str, config: dict) -> None:
    payload = dict(config, format_version=FORMAT_VERSION)
    atomic_write_bytes(os.path.join(run_dir, CONFIG_FILE), json.dumps(payload, indent=2).encode())


def load_config(run_dir: str) -> dict:
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.isdir(run_dir):
        raise CheckpointError(f"no such run directory: {run_dir}")
    if not os.path.exists(path):
        raise CheckpointError(f"{run_dir} is not a vardft run directory (no {CONFIG_FILE})")
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    if config.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by an incompatible vardft version")
    return config


def save_checkpoint(run_dir: str, state: Any) -> None:
    """Serialize a pytree of arrays/scalars (params, optimizer state, step...) atomically,
    behind a header holding the SHA-256 of the payload (one file)."""
    payload = serialization.to_bytes(state)
    data = CHECKPOINT_MAGIC + hashlib.sha256(payload).digest() + payload
    atomic_write_bytes(os.path.join(run_dir, CHECKPOINT_FILE), data)


def _checkpoint_payload(run_dir: str) -> tuple[str, bytes]:
    """``(path, msgpack payload)`` of the run's checkpoint, its checksum verified.

    Raises:
        CheckpointError: no checkpoint, unreadable, or the checksum does not match.
    """
    path = os.path.join(run_dir, CHECKPOINT_FILE)
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint in {run_dir}")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not data.startswith(CHECKPOINT_MAGIC):
        return path, data  # written before checksums: loads unchecked
    start = len(CHECKPOINT_MAGIC)
    digest, payload = data[start : start + _DIGEST_BYTES], data[start + _DIGEST_BYTES :]
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(
            f"{path} is damaged (its SHA-256 checksum does not match its contents); "
            "restore it from a copy or train again"
        )
    return path, payload


def load_checkpoint(run_dir: str, template: Any) -> Any:
    """Restore a checkpoint into the structure of ``template``.

    Raises:
        CheckpointError: missing, damaged (checksum) or not matching ``template``.
    """
    path, payload = _checkpoint_payload(run_dir)
    try:
        return serialization.from_bytes(template, payload)
    except Exception as exc:  # msgpack / structure mismatch
        raise CheckpointError(f"cannot restore {path}: {type(exc).__name__}: {exc}") from None


def has_checkpoint(run_dir: str) -> bool:
    return os.path.exists(os.path.join(run_dir, CHECKPOINT_FILE))


def append_log(run_dir: str, record: dict) -> None:
    with open(os.path.join(run_dir, LOG_FILE), "a") as f:
        f.write(json.dumps(record) + "\n")


def read_log(run_dir: str) -> list[dict]:
    """The records of ``log.jsonl``, in order.

    A last line that is not valid JSON is what a kill during :func:`append_log`
    leaves: it is dropped with a warning naming the file.

    Raises:
        CheckpointError: a line other than the last is not a JSON object.
    """
    path = os.path.join(run_dir, LOG_FILE)
    if not os.path.exists(path):
        return []
    try:
        with open(path, "rb") as f:
            lines = [(n, line) for n, line in enumerate(f.read().split(b"\n"), start=1) if line.strip()]
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    records = []
    for k, (n, line) in enumerate(lines):
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError:
            if k == len(lines) - 1:
                warnings.warn(f"{path}: dropping a torn last line {n} (an interrupted write)", stacklevel=2)
                break
            raise CheckpointError(f"{path} line {n} is not a JSON record; the log is damaged") from None
        records.append(record)
    return records


def truncate_log(run_dir: str, step: int) -> None:
    """Drop log records after ``step`` (used on resume, so the log matches the checkpoint),
    and a torn last line with them."""
    records = [r for r in read_log(run_dir) if r.get("step", 0) <= step]
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    atomic_write_bytes(os.path.join(run_dir, LOG_FILE), data)


def load_state_dict(run_dir: str) -> dict:
    """The raw nested dict of a checkpoint (no template needed).

    Raises:
        CheckpointError: missing, damaged (checksum) or not msgpack.
    """
    path, payload = _checkpoint_payload(run_dir)
    try:
        return serialization.msgpack_restore(payload)
    except Exception as exc:
        raise CheckpointError(f"cannot read {path}: {type(exc).__name__}") from None


class StopRequested:
    """Turns SIGINT/SIGTERM into a flag that a training loop checks between steps
    (it then writes a checkpoint and returns). Handlers are restored on exit."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False
