"""Systems, input checking, AO layout and the boundary to PySCF integrals.

This is the root package of the project (``solvers`` and ``vardft`` import it), so
the one switch to float64 JAX lives here: every energy and everything compared with
PySCF is float64, and importing any part of the project turns it on.
"""

import jax

jax.config.update("jax_enable_x64", True)

from basis.errors import (  # noqa: E402
    BasisError,
    CheckpointError,
    ElectronCountError,
    FunctionalError,
    GeometryError,
    InputError,
    MalformedFileError,
    UnknownElementError,
)
from basis.system import System, read_systems  # noqa: E402

__all__ = [
    "BasisError",
    "CheckpointError",
    "ElectronCountError",
    "FunctionalError",
    "GeometryError",
    "InputError",
    "MalformedFileError",
    "System",
    "UnknownElementError",
    "read_systems",
]
