"""Real-space ↔ k-space matrices and band structures.

Conventions (PySCF's): Bloch AOs φ^k_μ(r) = Σ_T e^{ik·T} φ_μ(r − T), so a
matrix between the home cell and the cell translated by T,

    O(T)_μν = ⟨φ_μ(r) | O | φ_ν(r − T)⟩,

gives the k-space matrix O(k) = Σ_T e^{ik·T} O(T) (S(k), h(k), H(k), ...). On a
Γ-centred k-mesh the inverse, O(T) = Σ_k w_k e^{−ik·T} O(k), returns the
matrices of the Born–von Kármán supercell (images beyond it folded in).

Band structures from a converged SCF take the Kohn–Sham potential of its
density to any k (:func:`solvers.periodic.fock_at_kpoints`, as PySCF's
``mf.get_bands``) and solve F(k) C = S(k) C ε there.

Example:
    >>> import numpy as np
    >>> from solvers.bands import bloch_sum
    >>> H_R = np.zeros((2, 1, 1)); H_R[0] = -1.0; H_R[1] = 0.5   # on-site, one neighbour
    >>> T = np.array([[0.0, 0, 0], [1.0, 0, 0]])
    >>> np.round(np.asarray(bloch_sum(H_R, T, np.array([[0.0, 0, 0]]))).real, 3)
    array([[[-0.5]]])
"""

from __future__ import annotations

from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from basis.pbc_integrals import BandIntegrals, PeriodicIntegrals
from solvers.periodic import effective_potential, fock_at_kpoints, generalized_eigh, potential_matrices


def cell_translations(shifts: jax.Array, lattice: jax.Array) -> jax.Array:
    """Translations T = n · lattice (nR, 3), Bohr, from integer shifts n (nR, 3) and lattice rows."""
    return jnp.asarray(shifts, dtype=jnp.float64) @ jnp.asarray(lattice, dtype=jnp.float64)


def bloch_sum(matrices: jax.Array, translations: jax.Array, kpts: jax.Array) -> jax.Array:
    """O(k) = Σ_T e^{ik·T} O(T).

    Args:
        matrices: (nR, nao, nao) real-space blocks O(T) (home cell, cell T).
        translations: (nR, 3) Cartesian translations T, Bohr.
        kpts: (nk, 3) Cartesian k-points, 1/Bohr.

    Returns:
        (nk, nao, nao) complex128.
    """
    phase = jnp.exp(1j * (jnp.asarray(kpts) @ jnp.asarray(translations).T))
    return jnp.einsum("kr,rij->kij", phase, jnp.asarray(matrices, dtype=jnp.complex128))


def inverse_bloch_sum(matrices_k: jax.Array, kpts: jax.Array, kweights: jax.Array, translations: jax.Array) -> jax.Array:
    """O(T) = Σ_k w_k e^{−ik·T} O(k): real-space blocks from matrices on a k-mesh.

    On a Γ-centred n1×n2×n3 mesh with the translations of one supercell
    (:func:`supercell_shifts`), ``bloch_sum`` of the result returns ``matrices_k``
    at the mesh points. The result is real for matrices of a real Hamiltonian.

    Returns:
        (nR, nao, nao) complex128.
    """
    phase = jnp.exp(-1j * (jnp.asarray(translations) @ jnp.asarray(kpts).T)) * jnp.asarray(kweights)[None, :]
    return jnp.einsum("rk,kij->rij", phase, jnp.asarray(matrices_k, dtype=jnp.complex128))


def supercell_shifts(kmesh: Sequence[int]) -> np.ndarray:
    """(n1·n2·n3, 3) integer shifts of the Born–von Kármán supercell, centred on 0.

    Along a direction with n k-points the shifts run over −⌊(n−1)/2⌋ … ⌊n/2⌋.
    """
    axes = [np.arange(-((n - 1) // 2), n // 2 + 1) for n in kmesh]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    return grid.astype(np.int64)


@jax.jit
def band_energies_at(P: jax.Array, ints: PeriodicIntegrals, band: BandIntegrals) -> jax.Array:
    """Band energies (nb, nmo), Hartree, at the k-points of ``band`` for the SCF density of ``P``."""
    F = fock_at_kpoints(P, ints, band.hcore, band.ao)
    e, _ = generalized_eigh(F, band.overlap)
    return e


@jax.jit
def _bands_in_potential(v: jax.Array, band: BandIntegrals) -> jax.Array:
    F = band.hcore + potential_matrices(v, band.ao)
    e, _ = generalized_eigh(F, band.overlap)
    return e


def band_structure(P: jax.Array, ints: PeriodicIntegrals, chunks: Iterable[tuple[int, BandIntegrals]]) -> np.ndarray:
    """Band energies along a path, one chunk of k-points at a time.

    The Kohn–Sham potential of the SCF density is computed once
    (:func:`solvers.periodic.effective_potential`); each chunk then needs only
    its own h(k), S(k) and Bloch AOs.

    Args:
        P: (nk, nao, nao) converged density matrices at the SCF k-points.
        ints: the SCF's integrals.
        chunks: (n_valid, :class:`~basis.pbc_integrals.BandIntegrals`) for
            consecutive pieces of the path, e.g. from
            :func:`basis.pbc_integrals.band_integral_chunks` (built lazily to
            bound memory; equal sizes reuse one compiled function).

    Returns:
        (npath, nmo) float64 band energies, Hartree, PySCF's absolute scale
        (1e30 for directions removed as linearly dependent).
    """
    v = jax.jit(effective_potential)(P, ints)
    out = [np.asarray(_bands_in_potential(v, chunk))[:n] for n, chunk in chunks]
    return np.concatenate(out, axis=0)


__all__ = [
    "band_energies_at",
    "band_structure",
    "bloch_sum",
    "cell_translations",
    "inverse_bloch_sum",
    "supercell_shifts",
]


DEGENERATE_BAND_TOLERANCE = 1e-6
"""Hartree: supercell states closer than this in energy are one degenerate level when their
unfolding weights are taken (:func:`unfolding_weights`)."""


def unfolding_weights(C: np.ndarray, SC: np.ndarray, orbital: np.ndarray, translation: np.ndarray,
                      k: np.ndarray, n_primitive_orbitals: int, energies: np.ndarray | None = None) -> np.ndarray:
    """Spectral weight of supercell states at the primitive-cell wavevector ``k`` (band unfolding).

    A supercell of N primitive cells has, at each k, the primitive bands of N wavevectors
    k + G (G of the supercell's reciprocal lattice). For a state ψ = Σ_μ C_μ φ^k_μ of the
    supercell H(k), S(k) (PySCF's Bloch AOs, each centred on its atom), the weight of
    wavevector k is the Mulliken-type projection onto primitive Bloch functions
    χ_m = Σ_l e^{ik·t_l} φ^k_(m,l):

        W(k) = (1/N) Re Σ_m conj(A_m) B_m,   A_m = Σ_l e^{−ik·t_l} C_(m,l),
                                             B_m = Σ_l e^{−ik·t_l} (S C)_(m,l),

    where supercell AO μ = (m, l) is primitive orbital m translated by t_l. Over the N
    wavevectors k + G a state's weights sum to C†SC = 1; over all states at k they sum to
    the number of primitive orbitals. A perfect supercell gives weights 0 and 1, once the
    states of each degenerate level (folded bands meet at high-symmetry k) are rotated to
    the eigenvectors of the level's weight matrix W_ab (1/N) Σ_m conj(A_ma) B_mb: with
    ``energies`` given, each level's weights are that matrix's eigenvalues (its trace, the
    level's total weight, is the same in any basis of the level).

    Args:
        C: (nao_s, nb) eigenvectors of the supercell at ``k``, normalised C†SC = 1.
        SC: (nao_s, nb) S(k) @ C.
        orbital: (nao_s,) int, the primitive orbital m of each supercell AO.
        translation: (nao_s, 3) Cartesian t_l of each supercell AO, Bohr.
        k: (3,) Cartesian wavevector, 1/Bohr (the supercell matrices taken at this k).
        n_primitive_orbitals: number of primitive-cell AOs.
        energies: (nb,) ascending energies of the states, Hartree (levels closer than
            :data:`DEGENERATE_BAND_TOLERANCE` are resolved as above).

    Returns:
        (nb,) weights, float64 (ascending within each degenerate level).
    """
    C, SC = np.asarray(C), np.asarray(SC)
    phase = np.exp(-1j * (np.asarray(translation, dtype=np.float64) @ np.asarray(k, dtype=np.float64)))[:, None]
    A = np.zeros((n_primitive_orbitals, C.shape[1]), dtype=np.complex128)
    B = np.zeros_like(A)
    np.add.at(A, orbital, phase * C)
    np.add.at(B, orbital, phase * SC)
    n_cells = len(orbital) // n_primitive_orbitals
    weights = np.real(np.sum(A.conj() * B, axis=0)) / n_cells
    if energies is None:
        return weights
    starts = np.flatnonzero(np.concatenate([[True], np.diff(np.asarray(energies)) > DEGENERATE_BAND_TOLERANCE]))
    for a, b in zip(starts, np.append(starts[1:], len(weights))):
        if b - a > 1:
            W = A[:, a:b].conj().T @ B[:, a:b] / n_cells
            weights[a:b] = np.linalg.eigvalsh(0.5 * (W + W.conj().T))
    return weights
