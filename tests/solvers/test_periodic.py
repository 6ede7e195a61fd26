"""Periodic energy, Fock and k-point SCF against PySCF's KRKS (FFT density fitting).

Si in gth-szv on a 2x2x2 k-mesh. The FFT mesh is coarser than PySCF's default
to keep the tests fast; PySCF runs on the same mesh, so the comparisons are
exact up to round-off and SCF convergence.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pyscf.pbc.scf.addons import smearing_

from basis.crystal import read_crystal, time_reversal_invariant
from basis.errors import FunctionalError
from basis.pbc_integrals import (
    check_periodic_functional,
    make_periodic_mean_field,
    periodic_integrals_from_mean_field,
)
from solvers import periodic as pe

TEST_MESH = (13, 13, 13)
KMESH = (2, 2, 2)
ENERGY_TOL = 1e-8  # Eh per cell, same P(k)
FOCK_TOL = 1e-8  # Eh, same P(k)
FD_TOL = 1e-7  # directional derivative vs central finite difference
SCF_ENERGY_TOL = 1e-6  # Eh per cell, both SCFs converged
SCF_EIG_TOL = 1e-5  # Eh, band energies at the SCF k-points
BAND_CONSISTENCY_TOL = 1e-10  # Eh, F at the SCF k-points two ways
OCC_TOL = 1e-8  # smeared occupations
SCF_CONV_TOL = 1e-10


def _mean_field(xc):
    return make_periodic_mean_field(read_crystal("si"), xc=xc, basis="gth-szv", kmesh=KMESH, mesh=TEST_MESH)


@pytest.fixture(scope="module")
def si_lda():
    mf = _mean_field("lda,vwn")
    return mf, periodic_integrals_from_mean_field(mf)


@pytest.fixture(scope="module")
def si_pbe():
    mf = _mean_field("pbe")
    return mf, periodic_integrals_from_mean_field(mf)


@pytest.fixture(params=["si_lda", "si_pbe"])
def si(request):
    return request.getfixturevalue(request.param)


def _perturbed_guess(mf, seed=0, scale=0.01):
    dm = np.asarray(mf.get_init_guess())
    rng = np.random.default_rng(seed)
    d = rng.normal(size=dm.shape) + 1j * rng.normal(size=dm.shape)
    return dm + scale * (d + np.conj(np.swapaxes(d, -1, -2)))


def test_integrals_shapes(si):
    mf, ints = si
    nk, nao, ngrid = 8, 8, int(np.prod(TEST_MESH))
    nderiv = 4 if ints.functional.family == "gga" else 1
    assert ints.ao.shape == (nk, nderiv, ngrid, nao)
    assert ints.ao.dtype == np.float64  # every k of a 2x2x2 mesh is time-reversal invariant: real Bloch AOs
    assert ints.overlap.shape == ints.hcore.shape == (nk, nao, nao)
    assert ints.n_electrons == 8 and ints.kmesh == KMESH and ints.mesh == TEST_MESH
    assert ints.pseudo == ("gth-pade" if ints.functional.family == "lda" else "gth-pbe")
    electrons = np.sum(np.asarray(ints.kweights) * np.einsum("kij,kji->k", ints.dm_guess, ints.overlap).real)
    assert abs(electrons - 8.0) < 1e-8


def test_energy_and_fock_match_pyscf(si):
    mf, ints = si
    dm = _perturbed_guess(mf)
    e, comps, F = jax.jit(pe.energy_and_fock)(jnp.asarray(dm), ints)
    h1e = mf.get_hcore()
    vhf = mf.get_veff(dm=dm)
    assert abs(float(e) - mf.energy_tot(dm=dm, h1e=h1e, vhf=vhf)) < ENERGY_TOL
    assert abs(float(comps.hartree) - float(np.real(vhf.ecoul))) < ENERGY_TOL
    assert abs(float(comps.xc) - float(np.real(vhf.exc))) < ENERGY_TOL
    assert abs(float(comps.nuclear) - mf.cell.energy_nuc()) < 1e-12
    assert np.abs(np.asarray(F) - np.asarray(mf.get_fock(h1e=h1e, dm=dm, vhf=vhf))).max() < FOCK_TOL
    assert np.abs(np.asarray(pe.fock(jnp.asarray(dm), ints)) - np.asarray(F)).max() < 1e-12


def test_fock_is_gradient(si):
    """Σ_k w_k Re tr(D(k) F(k)) equals the finite-difference slope of E along Hermitian D."""
    mf, ints = si
    dm = jnp.asarray(_perturbed_guess(mf))
    rng = np.random.default_rng(1)
    D = rng.normal(size=dm.shape) + 1j * rng.normal(size=dm.shape)
    D = jnp.asarray(D + np.conj(np.swapaxes(D, -1, -2)))
    F = pe.fock(dm, ints)
    slope = float(jnp.sum(ints.kweights * jnp.einsum("kij,kji->k", D, F).real))
    energy = jax.jit(pe.total_energy)
    h = 1e-4
    fd = (float(energy(dm + h * D, ints)) - float(energy(dm - h * D, ints))) / (2 * h)
    assert abs(slope - fd) < FD_TOL * max(1.0, abs(fd))


def test_fock_at_scf_kpoints_equals_fock(si):
    mf, ints = si
    dm = jnp.asarray(_perturbed_guess(mf))
    F = pe.fock(dm, ints)
    Fb = jax.jit(pe.fock_at_kpoints)(dm, ints, ints.hcore, ints.ao)
    assert np.abs(np.asarray(Fb) - np.asarray(F)).max() < BAND_CONSISTENCY_TOL


def test_scf_matches_pyscf(si_pbe):
    mf, ints = si_pbe
    result = pe.run_periodic_scf(ints, conv_tol=SCF_CONV_TOL)
    assert result.converged
    mf.conv_tol = SCF_CONV_TOL
    mf.kernel()
    assert mf.converged
    assert abs(float(result.energy) - mf.e_tot) < SCF_ENERGY_TOL
    assert np.abs(np.asarray(result.mo_energy) - np.asarray(mf.mo_energy)).max() < SCF_EIG_TOL
    assert abs(float(result.fermi) - mf.get_fermi()) < SCF_EIG_TOL
    assert np.array_equal(np.asarray(result.mo_occ), np.asarray(mf.mo_occ))
    # the converged density is self-consistent and normalised
    err = pe.commutator_error(result.fock, result.dm, ints.overlap)
    assert float(jnp.max(jnp.abs(err))) < 1e-4
    n = jnp.sum(ints.kweights * jnp.einsum("kij,kji->k", result.dm, ints.overlap).real)
    assert abs(float(n) - ints.n_electrons) < 1e-10


def test_smearing_matches_pyscf(si_lda):
    sigma = 0.05
    mf, ints = si_lda
    mf = mf.copy()
    result = pe.run_periodic_scf(ints, smearing=pe.Smearing("fermi", sigma), conv_tol=SCF_CONV_TOL)
    assert result.converged
    mf = smearing_(mf, sigma=sigma, method="fermi")
    mf.conv_tol = SCF_CONV_TOL
    mf.kernel()
    assert abs(float(result.energy) - mf.e_tot) < SCF_ENERGY_TOL
    assert abs(float(result.free_energy) - mf.e_free) < SCF_ENERGY_TOL
    assert abs(float(result.entropy) - mf.entropy) < 1e-6
    assert np.abs(np.asarray(result.mo_occ) - np.asarray(mf.mo_occ)).max() < OCC_TOL
    assert float(result.entropy) > 0.1  # σ large enough that occupations are fractional


def test_complex_bloch_aos_off_the_time_reversal_invariant_points():
    """Real Bloch AOs only where every k is ±k (2x2x2 above); a 3x1x1 mesh (k = ±1/3) keeps
    them complex, and its energy and Fock still equal PySCF's."""
    assert list(time_reversal_invariant([[0, 0.5, 0.5], [0.5, 0, 0], [1 / 3, 0, 0], [0.25, 0.5, 0]])) == [
        True, True, False, False]
    mf = make_periodic_mean_field(read_crystal("si"), xc="lda,vwn", basis="gth-szv", kmesh=(3, 1, 1), mesh=TEST_MESH)
    ints = periodic_integrals_from_mean_field(mf)
    assert ints.ao.dtype == np.complex128
    dm = _perturbed_guess(mf)
    e, _, F = pe.energy_and_fock(jnp.asarray(dm), ints)
    assert abs(float(e) - mf.energy_tot(dm=dm)) < ENERGY_TOL
    assert np.abs(np.asarray(F) - np.asarray(mf.get_fock(dm=dm))).max() < FOCK_TOL


def test_occupations_insulator_and_smearing():
    e = jnp.array([[-1.0, 0.0, 1.0], [-0.9, 0.1, 1.1]])
    w = jnp.array([0.5, 0.5])
    occ, fermi, entropy = pe.occupations(e, 4, w)
    assert np.array_equal(np.asarray(occ), [[2, 2, 0], [2, 2, 0]])
    assert float(fermi) == 0.1 and float(entropy) == 0.0
    occ, mu, entropy = pe.occupations(e, 4, w, pe.Smearing("gaussian", 0.1))
    assert abs(float(jnp.sum(w[:, None] * occ)) - 4.0) < 1e-12
    assert 0.1 < float(mu) < 1.0


def test_rejects_hybrids_and_hf():
    for xc in ("b3lyp", "hf"):
        with pytest.raises(FunctionalError):
            check_periodic_functional(xc)


def test_generalized_eigh_removes_linear_dependence():
    """Directions with overlap eigenvalue ≤ 1e-6 are removed as in PySCF (ε = 1e30, C = 0)."""
    rng = np.random.default_rng(2)
    n = 6
    A = rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n))
    U, _ = np.linalg.qr(A)
    s = np.array([1e-8, 1e-3, 0.5, 1.0, 1.5, 2.0])
    S = (U * s) @ U.conj().T
    F = rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n))
    F = F + F.conj().T
    e, C = pe.generalized_eigh(jnp.asarray(F)[None], jnp.asarray(S)[None])
    e, C = np.asarray(e[0]), np.asarray(C[0])
    X = U[:, 1:] / np.sqrt(s[1:])
    ref = np.linalg.eigvalsh(X.conj().T @ F @ X)
    assert np.abs(e[:-1] - ref).max() < 1e-12 * np.abs(ref).max()
    assert e[-1] == pe.INVALID_ORBITAL_ENERGY and np.abs(C[:, -1]).max() == 0.0
    assert np.abs(C[:, :-1].conj().T @ S @ C[:, :-1] - np.eye(n - 1)).max() < 1e-10
