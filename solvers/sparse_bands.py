"""The bands nearest the Fermi level of a large cell from sparse H(k), S(k).

A supercell's H(k) and S(k) are sparse (an atom reaches a fixed number of neighbours), but
their eigenvectors are not, so a dense solver costs O(nao³) per k-point however few bands
are asked for. Here the bands of a window of indices come from shift-invert Lanczos
(ARPACK through :func:`scipy.sparse.linalg.eigsh`) around an energy σ, with one sparse LU
factor of H − σS per k-point. The same factor gives, by Sylvester's law of inertia, how many
eigenvalues lie below σ (its negative pivots), so every eigenvalue found has its absolute
band index: no band is skipped or counted twice, wherever σ falls.

The factor is taken in SuperLU's symmetric mode (pivots on the diagonal only, one
permutation for rows and columns), where U = D L^H and the signs of D are the inertia; the
shift σ is put in the gap (:func:`gap_shift`), where H − σS is far from singular.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import scipy.sparse.linalg as sla

__all__ = ["ShiftedFactor", "count_below", "gap_shift", "window_eigenvalues_sparse"]

SHIFT_TOLERANCE = 1e-7
"""Bisection for a shift in the gap stops when its interval is narrower than this, Hartree."""

LANCZOS_TOLERANCE = 1e-12
"""Relative accuracy asked of ARPACK's eigenvalues."""


class ShiftedFactor:
    """Sparse LU of H − σS (symmetric mode) and the number of eigenvalues of H c = ε S c below σ.

    Args:
        H, S: (n, n) sparse Hermitian matrices, S positive definite.
        sigma: the shift, Hartree.
    """

    def __init__(self, H, S, sigma: float):
        self.sigma = float(sigma)
        A = sp.csc_matrix(H - self.sigma * S)
        self.lu = sla.splu(A, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True})
        if not np.array_equal(self.lu.perm_r, self.lu.perm_c):  # pragma: no cover - SuperLU kept the diagonal
            raise np.linalg.LinAlgError("the LU of H - σS left the diagonal: no inertia count")
        self.below = int(np.count_nonzero(self.lu.U.diagonal().real < 0))
        self.shape, self.dtype = A.shape, A.dtype

    def operator(self) -> sla.LinearOperator:
        """(H − σS)⁻¹ as a linear operator (ARPACK's shift-invert OPinv)."""
        return sla.LinearOperator(self.shape, matvec=self.lu.solve, dtype=self.dtype)


def count_below(H, S, sigma: float) -> int:
    """How many eigenvalues of H c = ε S c are below ``sigma`` (Sylvester inertia of H − σS)."""
    return ShiftedFactor(H, S, sigma).below


def gap_shift(H, S, n_below: int, low: float = -10.0, high: float = 10.0) -> float:
    """An energy with exactly ``n_below`` eigenvalues below it (for an insulator with
    ``n_below`` occupied bands: a point in its gap at this k), by bisection on inertia
    counts between ``low`` and ``high`` (Hartree). When ``ε_{n_below−1} = ε_{n_below}`` there
    is none; the point where the count jumps is returned."""
    while count_below(H, S, low) > n_below:
        low -= high - low
    while count_below(H, S, high) < n_below:
        high += high - low
    while high - low > SHIFT_TOLERANCE:
        mid = 0.5 * (low + high)
        found = count_below(H, S, mid)
        if found == n_below:
            return mid
        low, high = (mid, high) if found < n_below else (low, mid)
    return 0.5 * (low + high)


def window_eigenvalues_sparse(H, S, window: tuple[int, int], sigma: float) -> np.ndarray:
    """Eigenvalues ``window[0] … window[1]`` (indices from 0, ascending, inclusive) of
    H c = ε S c for sparse Hermitian H, S, by shift-invert Lanczos around ``sigma``.

    Asks ARPACK for the eigenvalues nearest σ, more of them until those found cover the
    window on both sides of σ (their indices from the inertia count).

    Returns:
        (window[1] − window[0] + 1,) float64, Hartree.
    """
    first, last = int(window[0]), int(window[1])
    n = H.shape[0]
    factor = ShiftedFactor(H, S, sigma)
    need_below = max(factor.below - first, 0)  # indices first … below − 1
    need_above = max(last - factor.below + 1, 0)  # indices below … last
    k = 2 * max(need_below, need_above) + 4
    H, S = sp.csc_matrix(H), sp.csc_matrix(S)
    while True:
        if k >= n - 1:  # ARPACK needs k < n - 1: a matrix this small is solved densely
            return scipy.linalg.eigh(H.toarray(), S.toarray(), eigvals_only=True, subset_by_index=(first, last))
        values = sla.eigsh(H, k=k, M=S, sigma=factor.sigma, which="LM",
                           OPinv=factor.operator(), tol=LANCZOS_TOLERANCE, return_eigenvectors=False)
        values = np.sort(values.real)
        found_below = int(np.count_nonzero(values < factor.sigma))
        if found_below >= need_below and len(values) - found_below >= need_above:
            lowest = factor.below - found_below  # the index of values[0]
            return values[first - lowest: last - lowest + 1]
        k = min(2 * k, n - 1)
