"""Pure JAX electronic-structure physics: eigensolver, energy, Fock, SCF, bands."""

import jax

jax.config.update("jax_enable_x64", True)

from solvers.eigen import (  # noqa: E402
    DEGENERACY_TOL,
    EigenResult,
    canonical_orthogonalizer,
    pad_orthogonalizer,
    solve_hamiltonian,
)
from solvers.energy import EnergyComponents, energy, energy_and_fock, fock, total_energy  # noqa: E402

__all__ = [
    "DEGENERACY_TOL",
    "EigenResult",
    "EnergyComponents",
    "canonical_orthogonalizer",
    "energy",
    "energy_and_fock",
    "fock",
    "pad_orthogonalizer",
    "solve_hamiltonian",
    "total_energy",
]
