"""Run directories: configuration, parameters and optimizer state on disk.

Layout of ``RUN_DIR``::

    config.json        everything needed to rebuild the model (model, basis, xc, training)
    checkpoint.msgpack parameters, optimizer state, step, counters (flax msgpack)
    log.jsonl          one JSON object per training step
    validation.json    metrics written by ``vardft validate`` / ``demo``

Every file is written to a temporary name in the same directory and renamed,
so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
from typing import Any

from flax import serialization

from basis.errors import CheckpointError

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.msgpack"
LOG_FILE = "log.jsonl"
FORMAT_VERSION = 1


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
    """Serialize a pytree of arrays/scalars (params, optimizer state, step...) atomically."""
    atomic_write_bytes(os.path.join(run_dir, CHECKPOINT_FILE), serialization.to_bytes(state))


def load_checkpoint(run_dir: str, template: Any) -> Any:
    """Restore a checkpoint into the structure of ``template``."""
    path = os.path.join(run_dir, CHECKPOINT_FILE)
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint in {run_dir}")
    try:
        with open(path, "rb") as f:
            return serialization.from_bytes(template, f.read())
    except Exception as exc:  # msgpack / structure mismatch
        raise CheckpointError(f"cannot restore {path}: {type(exc).__name__}: {exc}") from None


def has_checkpoint(run_dir: str) -> bool:
    return os.path.exists(os.path.join(run_dir, CHECKPOINT_FILE))


def append_log(run_dir: str, record: dict) -> None:
    with open(os.path.join(run_dir, LOG_FILE), "a") as f:
        f.write(json.dumps(record) + "\n")


def read_log(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, LOG_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def truncate_log(run_dir: str, step: int) -> None:
    """Drop log records after ``step`` (used on resume, so the log matches the checkpoint)."""
    records = [r for r in read_log(run_dir) if r.get("step", 0) <= step]
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    atomic_write_bytes(os.path.join(run_dir, LOG_FILE), data)


def load_state_dict(run_dir: str) -> dict:
    """The raw nested dict of a checkpoint (no template needed)."""
    path = os.path.join(run_dir, CHECKPOINT_FILE)
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint in {run_dir}")
    try:
        with open(path, "rb") as f:
            return serialization.msgpack_restore(f.read())
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
