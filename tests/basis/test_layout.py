"""AO layout, PySCF ↔ e3nn change of basis and AO-space rotations."""

import itertools

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pyscf import gto
from pyscf.dft import numint

from basis.units import BOHR_ANGSTROM
from basis.errors import BasisError, UnknownElementError
from basis.layout import (
    ao_offsets,
    ao_permutation,
    ao_rotation,
    e3nn_to_pyscf,
    element_layout,
    real_sph_pyscf,
    sph_rotation,
)

ORTHOGONALITY_TOL = 1e-12
ROTATION_TOL = 1e-11
AO_VALUE_TOL = 1e-10  # relative to the largest AO value on the points
OVERLAP_TOL = 1e-10
ELEMENTS_H_TO_AR = "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar".split()
LMAX_TESTED = 6

# A small non-symmetric molecule made of H, C, N, O and F (Ångström).
MOLECULE = (
    ("C", (0.00, 0.00, 0.00)),
    ("O", (1.21, 0.05, -0.02)),
    ("N", (-0.70, 1.18, 0.10)),
    ("F", (-0.75, -1.10, 0.15)),
    ("H", (-0.20, 2.00, -0.45)),
    ("H", (-1.65, 1.10, 0.35)),
)


def _random_rotation(seed, improper=False):
    rot = np.asarray(e3nn.rand_matrix(jax.random.PRNGKey(seed), (), dtype=jnp.float64))
    return -rot if improper else rot


def _mole(atoms, basis, rot=np.eye(3), shift=np.zeros(3)):
    atom = [(s, tuple(rot @ np.asarray(p) + shift)) for s, p in atoms]
    return gto.M(atom=atom, basis=basis, unit="Angstrom", verbose=0)


@pytest.mark.parametrize("l", range(LMAX_TESTED + 1))
def test_change_of_basis_is_orthogonal(l):
    q = e3nn_to_pyscf(l)
    assert q.shape == (2 * l + 1, 2 * l + 1)
    np.testing.assert_allclose(q @ q.T, np.eye(2 * l + 1), atol=ORTHOGONALITY_TOL)
    if l <= 1:
        np.testing.assert_allclose(q, np.eye(2 * l + 1), atol=ORTHOGONALITY_TOL)
    else:  # not a signed permutation: some row has two non-zero entries
        assert np.any(np.sum(np.abs(q) > 1e-6, axis=1) > 1)


@pytest.mark.parametrize("l", range(LMAX_TESTED + 1))
def test_change_of_basis_maps_harmonics(l):
    rng = np.random.default_rng(l)
    u = rng.normal(size=(20, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    y_e3nn = np.asarray(e3nn.spherical_harmonics(f"{l}{'eo'[l % 2]}", jnp.asarray(u), True).array)
    y_pyscf = real_sph_pyscf(l, u)
    # Y_pyscf = c * Q Y_e3nn with one constant c per l
    c = np.linalg.norm(y_pyscf) / np.linalg.norm(y_e3nn)
    np.testing.assert_allclose(y_pyscf, c * y_e3nn @ e3nn_to_pyscf(l).T, atol=ROTATION_TOL)


@pytest.mark.parametrize("l", range(LMAX_TESTED + 1))
@pytest.mark.parametrize("improper", [False, True])
def test_rotation_matches_e3nn_wigner_d(l, improper):
    rot = _random_rotation(10 + l, improper)
    q = e3nn_to_pyscf(l)
    d_e3nn = np.asarray(e3nn.Irrep(l, (-1) ** l).D_from_matrix(jnp.asarray(rot)))
    np.testing.assert_allclose(sph_rotation(l, rot), q @ d_e3nn @ q.T, atol=ROTATION_TOL)


@pytest.mark.parametrize("basis", ["def2-svp", "def2-tzvp"])
def test_all_elements_h_to_ar(basis):
    for symbol in ELEMENTS_H_TO_AR:
        lay = element_layout(basis, symbol)
        mol = gto.M(atom=[(symbol, (0, 0, 0))], basis=basis, spin=gto.charge(symbol) % 2, verbose=0)
        assert lay.nao == mol.nao_nr()
        assert e3nn.Irreps(lay.irreps).dim == lay.nao
        assert lay.lmax <= 3
    assert element_layout(basis, "c").symbol == "C"


def test_known_layouts():
    assert element_layout("def2-svp", "O").irreps == "3x0e+2x1o+1x2e"
    assert element_layout("def2-svp", "H").irreps == "2x0e+1x1o"
    assert element_layout("def2-tzvp", "C").shells == ((0, 5), (1, 3), (2, 2), (3, 1))
    assert element_layout("pc-1", "O").count(1) == 2  # general contraction, nctr = 2


def test_offsets_match_pyscf():
    mol = _mole(MOLECULE, "def2-tzvp")
    symbols = [s for s, _ in MOLECULE]
    np.testing.assert_array_equal(ao_offsets("def2-tzvp", symbols)[:-1], mol.aoslice_by_atom()[:, 2])
    assert ao_offsets("def2-tzvp", symbols)[-1] == mol.nao_nr()


@pytest.mark.parametrize(
    "basis,improper", [("def2-svp", False), ("def2-svp", True), ("def2-tzvp", False), ("def2-tzvp", True), ("pc-1", False)]
)
def test_ao_rotation_against_pyscf_ao_values(basis, improper):
    """ao_{Rx+t}(R r + t) = ao_x(r) @ D^T, with AO values from PySCF."""
    rot = _random_rotation(3, improper)
    shift = np.array([0.3, -1.2, 0.7])
    symbols = [s for s, _ in MOLECULE]
    mol0 = _mole(MOLECULE, basis)
    mol1 = _mole(MOLECULE, basis, rot, shift)
    rng = np.random.default_rng(0)
    pts = rng.normal(scale=1.5, size=(300, 3))  # Bohr, around the molecule
    shift_bohr = shift / BOHR_ANGSTROM
    ao0 = numint.eval_ao(mol0, pts)
    ao1 = numint.eval_ao(mol1, pts @ rot.T + shift_bohr)
    d = ao_rotation(basis, symbols, rot)
    scale = np.abs(ao0).max()
    np.testing.assert_allclose(ao1, ao0 @ d.T, atol=AO_VALUE_TOL * scale)


@pytest.mark.parametrize("basis", ["def2-svp", "def2-tzvp"])
def test_overlap_transforms(basis):
    """S(Rx + t) = D S(x) D^T for a rotation and for inversion (independent check of D)."""
    symbols = [s for s, _ in MOLECULE]
    s0 = _mole(MOLECULE, basis).intor("int1e_ovlp")
    for rot in (_random_rotation(5), -np.eye(3), _random_rotation(6, improper=True)):
        s1 = _mole(MOLECULE, basis, rot, np.array([1.0, 2.0, -0.5])).intor("int1e_ovlp")
        d = ao_rotation(basis, symbols, rot)
        np.testing.assert_allclose(s1, d @ s0 @ d.T, atol=OVERLAP_TOL)


def test_ao_permutation():
    perm = [3, 0, 5, 1, 4, 2]
    symbols = [s for s, _ in MOLECULE]
    s0 = _mole(MOLECULE, "def2-svp").intor("int1e_ovlp")
    s1 = _mole([MOLECULE[p] for p in perm], "def2-svp").intor("int1e_ovlp")
    idx = ao_permutation("def2-svp", symbols, perm)
    np.testing.assert_allclose(s1, s0[np.ix_(idx, idx)], atol=OVERLAP_TOL)


def test_rotation_composes():
    r1, r2 = _random_rotation(1), _random_rotation(2, improper=True)
    for l in range(4):
        np.testing.assert_allclose(
            sph_rotation(l, r1 @ r2), sph_rotation(l, r1) @ sph_rotation(l, r2), atol=ROTATION_TOL
        )
    with pytest.raises(ValueError):
        sph_rotation(1, np.ones((3, 3)))


def test_bad_input():
    with pytest.raises(BasisError):
        element_layout("no-such-basis", "H")
    with pytest.raises(UnknownElementError):
        element_layout("def2-svp", "Xx")
    with pytest.raises(ValueError):
        e3nn_to_pyscf(-1)


def test_layout_dims_consistent():
    for basis, symbol in itertools.product(["def2-svp", "def2-tzvp"], ["H", "C", "Cl"]):
        lay = element_layout(basis, symbol)
        assert sum(c * (2 * l + 1) for l, c in lay.shells) == lay.nao
