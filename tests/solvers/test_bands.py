"""H(R) → H(k) against PySCF's k-space matrices, and bands against ``mf.get_bands``."""

import jax.numpy as jnp
import numpy as np
import pytest

from basis.crystal import read_crystal, to_cell
from basis.pbc_integrals import (
    band_integral_chunks,
    build_band_integrals,
    lattice_shifts,
    make_periodic_mean_field,
    periodic_integrals_from_mean_field,
    real_space_integrals,
)
from solvers.bands import (
    band_energies_at,
    band_structure,
    bloch_sum,
    cell_translations,
    inverse_bloch_sum,
    supercell_shifts,
)
from solvers.periodic import run_periodic_scf

BLOCH_TOL = 1e-10  # S(k), T(k) from real-space blocks vs PySCF's pbc_intor
ROUND_TRIP_TOL = 1e-12
BAND_TOL = 1e-8  # Eh, vs PySCF get_bands on the same mesh (0.1 meV = 3.7e-6 Eh)
TEST_MESH = (13, 13, 13)


@pytest.fixture(scope="module")
def si_cell():
    return to_cell(read_crystal("si"), "gth-szv", "gth-pade")


@pytest.mark.parametrize("intor", ["int1e_ovlp", "int1e_kin"])
def test_bloch_sum_matches_pyscf_kspace(si_cell, intor):
    cell = si_cell
    shifts = lattice_shifts(cell)
    assert np.array_equal(shifts[0], [0, 0, 0])
    blocks = real_space_integrals(cell, shifts, intor)
    T = cell_translations(shifts, cell.lattice_vectors())
    rng = np.random.default_rng(0)
    kpts = np.concatenate([cell.make_kpts([2, 2, 2]), cell.get_abs_kpts(rng.uniform(-0.5, 0.5, size=(3, 3)))])
    ours = np.asarray(bloch_sum(blocks, T, kpts))
    ref = np.asarray(cell.pbc_intor(intor, hermi=1, kpts=kpts))
    assert np.abs(ours - ref).max() < BLOCH_TOL
    # home-cell block of the overlap is the molecular overlap of the cell's atoms
    if intor == "int1e_ovlp":
        assert np.abs(blocks[0] - cell.to_mol().intor("int1e_ovlp")).max() < 1e-14


def test_inverse_bloch_sum_round_trip(si_cell):
    cell = si_cell
    kmesh = (2, 2, 2)
    kpts = cell.make_kpts(kmesh)
    Sk = np.asarray(cell.pbc_intor("int1e_ovlp", hermi=1, kpts=kpts))
    T = cell_translations(supercell_shifts(kmesh), cell.lattice_vectors())
    SR = inverse_bloch_sum(Sk, kpts, jnp.full((len(kpts),), 1.0 / len(kpts)), T)
    assert np.abs(np.asarray(SR).imag).max() < ROUND_TRIP_TOL  # real Hamiltonian → real blocks
    assert np.abs(np.asarray(bloch_sum(SR, T, kpts)) - Sk).max() < ROUND_TRIP_TOL
    assert supercell_shifts((3, 1, 2)).shape == (6, 3)


def test_bands_match_pyscf_get_bands():
    system = read_crystal("si")
    mf = make_periodic_mean_field(system, xc="pbe", basis="gth-szv", kmesh=(2, 2, 2), mesh=TEST_MESH)
    ints = periodic_integrals_from_mean_field(mf)
    result = run_periodic_scf(ints, conv_tol=1e-11)
    # at the SCF k-points the bands are the SCF's eigenvalues
    at_mesh = build_band_integrals(mf.cell, np.asarray(ints.kpts), ints.functional)
    assert np.abs(np.asarray(band_energies_at(result.dm, ints, at_mesh)) - np.asarray(result.mo_energy)).max() < 1e-9
    # off the mesh, in two chunks, against PySCF's get_bands with its own converged density
    kpath = mf.cell.get_abs_kpts(np.array([[0.0, 0.0, 0.0], [0.1, 0.0, 0.1], [0.25, 0.0, 0.25], [0.5, 0.0, 0.5], [0.5, 0.25, 0.75]]))
    chunks = list(band_integral_chunks(mf.cell, kpath, ints.functional, chunk_size=3))
    assert [n for n, _ in chunks] == [3, 2] and chunks[1][1].ao.shape[0] == 3  # last chunk padded
    assert np.allclose(np.asarray(chunks[1][1].kpts[2]), kpath[4])
    ours = band_structure(result.dm, ints, chunks)
    assert ours.shape == (5, ints.nao)
    mf.conv_tol = 1e-11
    mf.kernel()
    ref = np.asarray(mf.get_bands(kpath)[0])
    assert np.abs(ours - ref).max() < BAND_TOL
