"""The one DIIS (solvers.diis) against a direct solution of Pulay's constrained least squares."""

import jax.numpy as jnp
import numpy as np
import pytest

from solvers.diis import diis_init, diis_update

COEF_ATOL = 1e-10  # DIIS-extrapolated matrix vs the direct NumPy solution
SPACE = 4


def _pulay_reference(focks, errors):
    """Σ c_i F_i, c = argmin |Σ c_i e_i|² with Σ c_i = 1, from the unscaled KKT system."""
    e = np.array([x.ravel() for x in errors])
    n = len(e)
    A = np.zeros((n + 1, n + 1))
    A[:n, :n] = (e.conj() @ e.T).real
    A[:n, n] = A[n, :n] = -1.0
    rhs = np.zeros(n + 1)
    rhs[n] = -1.0
    c = np.linalg.solve(A, rhs)[:n]
    assert abs(c.sum() - 1.0) < 1e-12
    return np.einsum("i,i...->...", c, np.array(focks))


@pytest.mark.parametrize("shape, dtype", [((5, 5), np.float64), ((2, 3, 3), np.complex128)], ids=["molecule", "kpoints"])
def test_diis_matches_direct_solution_and_keeps_last_space(shape, dtype):
    rng = np.random.default_rng(0)

    def draw():
        x = rng.standard_normal(shape)
        return (x + 1j * rng.standard_normal(shape)).astype(dtype) if dtype == np.complex128 else x

    state = diis_init(shape, SPACE, dtype)
    focks, errors = [], []
    for _ in range(SPACE + 3):  # more pushes than slots: the oldest pairs are forgotten
        F, e = draw(), draw()
        focks.append(F), errors.append(e)
        state, F_new = diis_update(state, jnp.asarray(F), jnp.asarray(e))
        ref = _pulay_reference(focks[-SPACE:], errors[-SPACE:])
        assert F_new.dtype == dtype and F_new.shape == shape
        np.testing.assert_allclose(np.asarray(F_new), ref, atol=COEF_ATOL)
