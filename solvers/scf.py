"""Self-consistent field in JAX with DIIS, built from the energy functional.

Each cycle: E, F = E[P], ∂E/∂P (one jitted forward+backward pass), DIIS
extrapolation of F on the commutator error X^T (F P S − S P F) X, then the
generalized eigenproblem of :mod:`solvers.eigen` gives the next P.

The solver takes integrals and never calls PySCF: the caller builds them with
:func:`basis.integrals.build_integrals` (PySCF's default grid, auxiliary basis
and minao guess), and the result then reproduces
``pyscf.dft.RKS(mol, xc).density_fit().run()``.

Example:
    >>> from basis import System
    >>> from basis.integrals import build_integrals
    >>> water = System(("O", "H", "H"), [[0, 0, 0], [0, 0, 0.96], [0.93, 0, -0.24]])
    >>> ints = build_integrals(water, xc="pbe", basis="sto-3g")
    >>> round(scf_from_integrals(ints).energy, 4)
    -75.2267
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from basis.errors import InputError
from basis.integrals import Integrals
from solvers.diis import DIIS_SPACE, diis_init, diis_update
from solvers.eigen import canonical_orthogonalizer, density_factor, solve_hamiltonian
from solvers.energy import EnergyComponents, energy_and_fock

CONV_TOL_ENERGY = 1e-10
"""Default convergence threshold on the energy change between cycles, Hartree."""

CONV_TOL_GRADIENT = 1e-6
"""Default threshold on the largest element of the orthonormal-basis commutator X^T(FPS − SPF)X."""


@dataclasses.dataclass(frozen=True)
class SCFResult:
    """Outcome of an SCF run (atomic units).

    Attributes:
        energy: total energy, Hartree.
        components: energy terms, Hartree (floats).
        converged: both thresholds met within ``max_cycle``.
        iterations: number of Fock builds.
        mo_energy: (nmo,) orbital energies, Hartree, ascending.
        mo_coeff: (nao, nmo) orbital coefficients in PySCF's AO order.
        mo_occ: (nmo,) occupations (2 or 0).
        density: (nao, nao) converged density matrix.
        fock: (nao, nao) Fock matrix of ``density``.
        n_electrons: electron count.
        wall_time: seconds, including compilation.
    """

    energy: float
    components: dict
    converged: bool
    iterations: int
    mo_energy: np.ndarray
    mo_coeff: np.ndarray
    mo_occ: np.ndarray
    density: np.ndarray
    fock: np.ndarray
    n_electrons: int
    wall_time: float

    @property
    def homo(self) -> float:
        return float(self.mo_energy[self.n_electrons // 2 - 1])

    @property
    def lumo(self) -> float:
        nocc = self.n_electrons // 2
        return float(self.mo_energy[nocc]) if nocc < len(self.mo_energy) else float("nan")


def _components_to_floats(c: EnergyComponents) -> dict:
    d = {k: float(v) for k, v in c._asdict().items()}
    d["total"] = float(c.total)
    return d


@jax.jit
def _fock_step(P, ints: Integrals, orbitals=None):
    return energy_and_fock(P, ints, orbitals)


_diis_step = jax.jit(diis_update)


def scf_from_integrals(
    ints: Integrals,
    dm0: np.ndarray | None = None,
    *,
    conv_tol: float = CONV_TOL_ENERGY,
    conv_tol_grad: float = CONV_TOL_GRADIENT,
    max_cycle: int = 100,
    diis_space: int = DIIS_SPACE,
    callback: Callable[[int, float, float], None] | None = None,
) -> SCFResult:
    """Closed-shell SCF on precomputed integrals.

    Args:
        ints: integrals of one molecule.
        dm0: (nao, nao) initial density; default PySCF's minao guess.
        conv_tol: energy change threshold, Hartree.
        conv_tol_grad: commutator threshold (orthonormal basis), Hartree.
        max_cycle: largest number of Fock builds.
        diis_space: number of (Fock, error) pairs DIIS extrapolates from.
        callback: called as ``callback(cycle, energy, gradient_norm)``.

    Raises:
        InputError: ``max_cycle`` < 1.
    """
    if max_cycle < 1:
        raise InputError(f"max_cycle must be at least 1, got {max_cycle}")
    start = time.perf_counter()
    S = np.asarray(ints.overlap)
    X = canonical_orthogonalizer(S)
    P = jnp.asarray(ints.dm_guess if dm0 is None else dm0, dtype=jnp.float64)
    diis = diis_init(S.shape, diis_space, jnp.float64)
    solve = jax.jit(solve_hamiltonian, static_argnums=(2,))
    e_old, converged, cycle = None, False, 0
    Y = None  # P = Y Yᵀ after the first diagonalisation: cheaper exact exchange (hybrids)
    for cycle in range(1, max_cycle + 1):
        e, comps, F = _fock_step(P, ints, Y)
        e, F_np, P_np = float(e), np.asarray(F), np.asarray(P)
        fps = F_np @ P_np @ S
        err = X.T @ (fps - fps.T) @ X
        gnorm = float(np.abs(err).max())
        if callback is not None:
            callback(cycle, e, gnorm)
        if e_old is not None and abs(e - e_old) < conv_tol and gnorm < conv_tol_grad:
            converged = True
            break
        e_old = e
        diis, F_next = _diis_step(diis, F, jnp.asarray(err))
        res = solve(F_next, jnp.asarray(X), ints.n_electrons)
        P = res.density
        if ints.functional.exact_exchange != 0.0:
            Y = density_factor(res, ints.n_occupied)
    eig = solve(jnp.asarray(F_np), jnp.asarray(X), ints.n_electrons)
    return SCFResult(
        energy=e,
        components=_components_to_floats(comps),
        converged=converged,
        iterations=cycle,
        mo_energy=np.asarray(eig.mo_energy),
        mo_coeff=np.asarray(eig.mo_coeff),
        mo_occ=np.asarray(eig.mo_occ),
        density=P_np,
        fock=F_np,
        n_electrons=ints.n_electrons,
        wall_time=time.perf_counter() - start,
    )
