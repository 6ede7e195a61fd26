"""Shared pieces of the sub-commands: reading inputs, printing JSON."""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np

from basis.errors import MalformedFileError
from basis.system import System, read_systems
from vardft import builtin


def read_input(path: str, charge: int | None = None) -> list[System]:
    """Systems from a structure file, or from a built-in name when no such file exists."""
    if not os.path.exists(path):
        if builtin.is_builtin(path):
            systems = builtin.load(path)
            if charge is not None:
                systems = [s.replace(charge=charge) for s in systems]
            return systems
        raise MalformedFileError(f"no such file or built-in structure: {path}")
    return read_systems(path, charge=charge)


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def print_json(obj) -> None:
    """One JSON object on stdout (NaN/inf become null)."""
    json.dump(_jsonable(obj), sys.stdout, indent=None)
    sys.stdout.write("\n")
