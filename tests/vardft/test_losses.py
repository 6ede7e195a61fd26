"""The label-free loss: its energy gradient against finite differences of E[P(H)]."""

import jax
import jax.numpy as jnp
import numpy as np

from basis.integrals import build_integrals
from basis.system import System
from solvers.eigen import canonical_orthogonalizer, solve_hamiltonian
from solvers.energy import energy_and_fock, total_energy
from vardft.losses import LossWeights, molecule_loss

FD_STEP = 1e-5
FD_TOL = 1e-6

WATER = System(("O", "H", "H"), [[0.0, 0.0, 0.0], [0.0, 0.0, 0.96], [0.93, 0.0, -0.24]])


def _setup():
    ints = build_integrals(WATER, xc="pbe", basis="sto-3g")
    X = jnp.asarray(canonical_orthogonalizer(np.asarray(ints.overlap)))
    _, _, F0 = energy_and_fock(ints.dm_guess, ints)
    rng = np.random.default_rng(0)
    a = rng.standard_normal(F0.shape)
    H = F0 + 0.05 * jnp.asarray(a + a.T)
    masks = jnp.ones(X.shape[1], bool), jnp.ones(ints.nao, bool)
    return ints, X, H, masks


def test_energy_term_gradient_matches_finite_differences():
    ints, X, H, (mo_mask, ao_mask) = _setup()
    w = LossWeights(energy=1.0, self_consistency=0.0)
    grad = jax.grad(lambda h: molecule_loss(h, ints, X, mo_mask, ao_mask, w).loss)(H)

    def e_of_h(h):
        return total_energy(solve_hamiltonian(h, X, ints.n_electrons).density, ints)

    rng = np.random.default_rng(1)
    for _ in range(3):
        a = rng.standard_normal(H.shape)
        D = jnp.asarray(a + a.T)
        fd = (e_of_h(H + FD_STEP * D) - e_of_h(H - FD_STEP * D)) / (2 * FD_STEP)
        assert abs(float(fd - jnp.sum(grad * D))) < FD_TOL * max(1.0, abs(float(fd)))


def test_loss_value_and_self_consistency_gradient():
    ints, X, H, (mo_mask, ao_mask) = _setup()
    w = LossWeights(energy=0.0, self_consistency=2.0)
    loss_fn = lambda h: molecule_loss(h, ints, X, mo_mask, ao_mask, w).loss  # noqa: E731
    grad = jax.grad(loss_fn)(H)
    P = solve_hamiltonian(H, X, ints.n_electrons).density
    E, _, F = energy_and_fock(P, ints)
    n = H.size
    # F is a fixed target: the gradient is 2 w (H − F) / n2
    np.testing.assert_allclose(np.asarray(grad), np.asarray(2 * 2.0 * (H - F) / n), atol=1e-12)
    terms = molecule_loss(H, ints, X, mo_mask, ao_mask, LossWeights())
    assert abs(float(terms.energy) - float(E)) < 1e-12
    assert abs(float(terms.self_consistency_rmse) - float(jnp.sqrt(jnp.mean((H - F) ** 2)))) < 1e-12
