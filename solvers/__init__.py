"""Pure JAX electronic-structure physics: eigensolver, energy, Fock, SCF, bands."""

import basis  # noqa: F401  (float64 JAX: see basis/__init__.py)
from solvers.eigen import (
    DEGENERACY_TOL,
    LINDEP_THRESHOLD,
    EigenResult,
    canonical_orthogonalizer,
    canonical_orthogonalizer_fixed,
    pad_orthogonalizer,
    solve_hamiltonian,
)
from solvers.energy import EnergyComponents, energy, energy_and_fock, fock, total_energy

__all__ = [
    "DEGENERACY_TOL",
    "EigenResult",
    "EnergyComponents",
    "LINDEP_THRESHOLD",
    "canonical_orthogonalizer",
    "canonical_orthogonalizer_fixed",
    "energy",
    "energy_and_fock",
    "fock",
    "pad_orthogonalizer",
    "solve_hamiltonian",
    "total_energy",
]
