"""Systems, input checking, AO layout and the boundary to PySCF integrals."""

from basis.errors import (
    BasisError,
    CheckpointError,
    ElectronCountError,
    FunctionalError,
    GeometryError,
    InputError,
    MalformedFileError,
    UnknownElementError,
)
from basis.system import System, read_systems

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
