"""Sparse band solver (solvers/sparse_bands.py) against dense LAPACK on random Hermitian pencils."""

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from solvers.sparse_bands import count_below, gap_shift, window_eigenvalues_sparse


def _pencil(n=120, seed=0):
    """A sparse complex Hermitian H and a positive definite S, both banded with a few far entries."""
    rng = np.random.default_rng(seed)
    A = sp.random(n, n, density=0.03, random_state=seed) + 1j * sp.random(n, n, density=0.03, random_state=seed + 1)
    H = (A + A.conj().T + sp.diags(rng.normal(size=n))).tocsr()
    B = sp.random(n, n, density=0.02, random_state=seed + 2)
    S = (0.05 * (B @ B.T) + sp.eye(n)).tocsr().astype(np.complex128)
    return H, S, scipy.linalg.eigh(H.toarray(), S.toarray(), eigvals_only=True)


def test_inertia_counts_the_eigenvalues_below_the_shift():
    H, S, e = _pencil()
    for sigma in (-1.0, 0.0, 0.37, 2.0):
        assert count_below(H, S, sigma) == np.count_nonzero(e < sigma)


def test_windows_on_either_side_of_the_shift_equal_lapack():
    H, S, e = _pencil(seed=3)
    sigma = gap_shift(H, S, 60)
    assert e[59] < sigma < e[60]
    for window in ((55, 64), (40, 45), (61, 70), (0, 3)):
        np.testing.assert_allclose(window_eigenvalues_sparse(H, S, window, sigma), e[window[0]: window[1] + 1],
                                   atol=1e-10, rtol=0)
