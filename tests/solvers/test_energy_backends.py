"""The JAX backend (XC and AO values in JAX, packed density fitting) against the host path
and against PySCF's own SCF."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pyscf import dft, scf

from basis.integrals import build_compact_integrals, build_integrals
from basis.system import System
from solvers.energy import energy_and_fock
from solvers.scf import scf_from_integrals
from solvers.xc import xc_energy_and_potential_from_shells

BACKEND_ENERGY_TOL = 1e-10  # Eh: the same P on both backends (issue 11)
BACKEND_FOCK_TOL = 1e-10  # Eh, elementwise
SCF_ENERGY_TOL = 1e-6  # Eh against PySCF's SCF
ORBITAL_TOL = 1e-5  # Eh, occupied orbital energies against PySCF

SCF_GRID_LEVEL = 1  # the same grid in both codes; level 1 keeps the six SCFs short

FUNCTIONALS = ["hf", "lda,vwn", "pbe", "blyp", "b3lyp", "pbe0"]

# carbamoyl fluoride, H2N-C(=O)-F: every element vardft's built-in data uses
CARBAMOYL_FLUORIDE = System(
    ("C", "O", "F", "N", "H", "H"),
    [[0.0, 0.0, 0.0], [0.0, 1.19, 0.0], [1.15, -0.69, 0.0], [-1.15, -0.72, 0.02], [-1.18, -1.73, 0.0], [-2.03, -0.22, 0.0]],
)


def _perturbed_guess(ints, seed=0, scale=0.02):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((ints.nao, ints.nao))
    return jnp.asarray(np.asarray(ints.dm_guess) + scale * (a + a.T))


# HF, an LDA, a GGA and a hybrid by default; blyp and pbe0 (same components) with -m slow
BACKEND_FUNCTIONALS = [
    pytest.param(xc, marks=pytest.mark.slow if xc in ("blyp", "pbe0") else ()) for xc in FUNCTIONALS
]


@pytest.mark.parametrize("xc", BACKEND_FUNCTIONALS)
def test_jax_backends_equal_host_energy_and_fock(xc):
    """Dense integrals with XC in JAX, and compact integrals (AO values from the basis set,
    packed DF factor), give the host path's E and F for the same P."""
    dense = build_integrals(CARBAMOYL_FLUORIDE, xc, "cc-pvdz", grid_level=1)
    compact = build_compact_integrals(CARBAMOYL_FLUORIDE, xc, "cc-pvdz", grid_level=1)
    P = _perturbed_guess(dense)
    e_host, c_host, F_host = energy_and_fock(P, dense)
    for ints in (dense.replace(backend="jax"), compact):
        e, c, F = jax.jit(energy_and_fock)(P, ints)
        assert abs(float(e - e_host)) < BACKEND_ENERGY_TOL
        for a, b in zip(c, c_host):
            assert abs(float(a - b)) < BACKEND_ENERGY_TOL
        assert float(jnp.abs(F - F_host).max()) < BACKEND_FOCK_TOL


def test_grid_blocks_do_not_change_xc():
    """Block size and padding of the grid change E_xc and V_xc only at round-off."""
    water = System(("O", "H", "H"), [[0.0, 0.0, 0.0], [0.0, 0.0, 0.96], [0.93, 0.0, -0.24]])
    ints = build_compact_integrals(water, "pbe", "sto-3g", grid_level=0)
    P = ints.dm_guess
    ngrid = ints.weights.shape[0]
    ref = xc_energy_and_potential_from_shells(ints.functional, P, ints.shells, ints.coords, ints.weights, block=ngrid)
    for block in (700,):
        e, V = xc_energy_and_potential_from_shells(ints.functional, P, ints.shells, ints.coords, ints.weights, block)
        assert abs(float(e - ref[0])) < BACKEND_ENERGY_TOL
        assert float(jnp.abs(V - ref[1]).max()) < BACKEND_FOCK_TOL


# a GGA and a hybrid by default; the other four with pytest -m slow (every functional's E and
# F already equal the host path's above, and the host path's equal PySCF's in test_energy.py)
SCF_FUNCTIONALS = [
    pytest.param(xc, marks=() if xc in ("pbe", "b3lyp") else pytest.mark.slow) for xc in FUNCTIONALS
]


@pytest.mark.parametrize("xc", SCF_FUNCTIONALS)
def test_jax_backend_scf_reproduces_pyscf(xc):
    ints = build_compact_integrals(CARBAMOYL_FLUORIDE, xc, "sto-3g", grid_level=SCF_GRID_LEVEL)
    res = scf_from_integrals(ints)
    mol = CARBAMOYL_FLUORIDE.to_mole("sto-3g")
    mf = (scf.RHF(mol) if xc == "hf" else dft.RKS(mol, xc=xc)).density_fit()
    if xc != "hf":
        mf.grids.level = SCF_GRID_LEVEL
    mf.verbose = 0
    mf.run()
    nocc = mol.nelectron // 2
    assert res.converged and mf.converged
    assert abs(res.energy - mf.e_tot) < SCF_ENERGY_TOL
    assert np.abs(res.mo_energy[:nocc] - mf.mo_energy[:nocc]).max() < ORBITAL_TOL


def test_exchange_from_occupied_orbitals_equals_the_density_path():
    """P = Y Yᵀ from an aufbau solution: E, its exchange term and F are the same whether the
    energy gets P alone or also Y (dense and packed factors), and F is PySCF's."""
    from solvers.eigen import canonical_orthogonalizer, density_factor, solve_hamiltonian

    dense = build_integrals(CARBAMOYL_FLUORIDE, "b3lyp", "cc-pvdz", grid_level=1)
    compact = build_compact_integrals(CARBAMOYL_FLUORIDE, "b3lyp", "cc-pvdz", grid_level=1)
    X = jnp.asarray(canonical_orthogonalizer(np.asarray(dense.overlap)))
    _, _, F0 = energy_and_fock(dense.dm_guess, dense)
    res = solve_hamiltonian(F0, X, dense.n_electrons)
    Y = density_factor(res, dense.n_occupied + 3)  # extra columns: unoccupied, zero weight
    assert float(jnp.abs(Y @ Y.T - res.density).max()) < 1e-13
    for ints in (dense, compact):
        e, c, F = jax.jit(energy_and_fock)(res.density, ints)
        e_y, c_y, F_y = jax.jit(energy_and_fock)(res.density, ints, Y)
        assert abs(float(e - e_y)) < BACKEND_ENERGY_TOL and abs(float(c.exchange - c_y.exchange)) < BACKEND_ENERGY_TOL
        assert abs(float(c.exchange)) > 1.0  # the term is there
        assert float(jnp.abs(F - F_y).max()) < BACKEND_FOCK_TOL
    mf = dft.RKS(CARBAMOYL_FLUORIDE.to_mole("cc-pvdz"), xc="b3lyp").density_fit()
    mf.grids.level = 1
    P = np.asarray(res.density)
    F_pyscf = mf.get_fock(dm=P)
    assert np.abs(np.asarray(F_y) - F_pyscf).max() < 1e-6  # PySCF's own grid build and DF (same level)
