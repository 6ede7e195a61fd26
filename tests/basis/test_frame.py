"""The molecular frame makes the grid-based minao Fock baseline exactly equivariant.

PySCF's XC grid is fixed in the laboratory axes; in the laboratory frame the minao
Fock of a rotated molecule differs from the rotated Fock by ~1e-5 of max|F|.
Built in the molecule's own frame and rotated back, it is equivariant to round-off
because the grid is exactly covariant under O_h (checked directly below).
"""

import functools
import itertools

import jax
import numpy as np
import pytest
from ase.build import molecule
from ase.collections import s22
from scipy.spatial.transform import Rotation

from basis.frame import (
    MolecularFrame,
    frame_averaged,
    from_frame_matrix,
    molecular_frame,
    molecular_frames,
    to_frame,
    to_frame_matrix,
)
from basis.integrals import build_integrals
from basis.layout import ao_rotation
from basis.system import System
from solvers.energy import energy_and_fock
from vardft.testing import assert_equivariant, equivariance_errors, make_transforms

SVP_RTOL = 1e-10  # relative to max|F|
TZVP_RTOL = 1e-9
OH_RTOL = 1e-13  # the grid under signed permutations of the axes
LAB_FRAME_MIN_ERROR = 1e-7  # the same check without the frame must fail clearly
FRAME_ATOL = 1e-10  # Ångström, frame coordinates of copies

_fock_jit = jax.jit(energy_and_fock)


@functools.lru_cache(maxsize=None)
def _minao_fock(basis, grid_level):
    """system → PBE minao Fock F[P_minao] (nao, nao), PySCF's grid in the system's own axes."""

    def fn(system):
        ints = build_integrals(system, "pbe", basis, grid_level)
        return np.asarray(_fock_jit(ints.dm_guess, ints)[2])

    return fn


def _in_frame(basis, grid_level):
    fock = _minao_fock(basis, grid_level)
    return lambda system: frame_averaged(fock, system, basis)


def _uracil():
    return System.from_atoms(s22["Uracil_dimer_h-bonded"][:12])  # C4H4N2O2, planar, Cs


def _turned(system, seed=7):
    """A copy in general orientation, so that the laboratory axes are not special."""
    r = Rotation.random(random_state=seed).as_matrix()
    return system.replace(positions=system.positions @ r.T)


OH_GROUP = [np.diag(s)[list(p)] for p in itertools.permutations(range(3)) for s in itertools.product((1.0, -1.0), repeat=3)]


def _oh_distance(y0, y1):
    """min over the 48 elements G of O_h of max|y0 G^T - y1| (Ångström)."""
    return min(np.abs(y0 @ g.T - y1).max() for g in OH_GROUP)


def test_grid_is_covariant_under_oh():
    """The premise: PySCF's grid-based Fock commutes with axis sign flips and permutations."""
    fock = _minao_fock("def2-svp", 1)
    mol = _turned(System.from_atoms(molecule("CH3CH2OH")))
    f0 = fock(mol)
    for g in (np.diag([1.0, -1.0, -1.0])[[2, 0, 1]], -np.eye(3)[[1, 0, 2]]):
        d = ao_rotation("def2-svp", mol.symbols, g)
        err = np.abs(fock(mol.replace(positions=mol.positions @ g.T)) - d @ f0 @ d.T).max() / np.abs(f0).max()
        assert err < OH_RTOL, (g, err)


def test_uracil_svp_grid_level_1_all_operations():
    errors = assert_equivariant(_in_frame("def2-svp", 1), _uracil(), basis="def2-svp", rtol=SVP_RTOL, seed=1)
    print("uracil def2-svp level 1", {k: f"{v:.1e}" for k, v in errors.items()})


@pytest.mark.slow
def test_uracil_svp_grid_level_3():
    errors = assert_equivariant(_in_frame("def2-svp", 3), _uracil(), basis="def2-svp", ops=("combined",),
                                rtol=SVP_RTOL, seed=2)
    print("uracil def2-svp level 3", errors)


def test_ethanol_svp_grid_level_3():
    errors = assert_equivariant(_in_frame("def2-svp", 3), System.from_atoms(molecule("CH3CH2OH")), basis="def2-svp",
                                ops=("combined",), rtol=SVP_RTOL, seed=2)
    print("ethanol def2-svp level 3", errors)


def test_ethanol_tzvp_and_lab_frame_contrast():
    """def2-TZVP (f functions on C, O) in the frame; the laboratory-frame baseline fails the same check."""
    mol = System.from_atoms(molecule("CH3CH2OH"))
    errors = assert_equivariant(_in_frame("def2-tzvp", 1), mol, basis="def2-tzvp", ops=("combined",),
                                rtol=TZVP_RTOL, seed=3)
    lab = equivariance_errors(_minao_fock("def2-tzvp", 1), mol, basis="def2-tzvp", ops=("combined",), seed=3)
    print("ethanol def2-tzvp level 1: frame", errors, "laboratory", lab)
    assert lab["combined"] > LAB_FRAME_MIN_ERROR


def test_frame_depends_on_geometry_only():
    """Rotated, inverted, translated and permuted copies: the same frame coordinates up to O_h."""
    for mol in (_uracil(), System.from_atoms(molecule("CH3CH2OH"))):
        y0 = to_frame(mol, molecular_frame(mol)).positions
        for tr in make_transforms(mol, ("rotation", "inversion", "rotoinversion", "translation", "permutation",
                                        "combined"), seed=4):
            moved = tr.apply(mol)
            frame = molecular_frame(moved)
            assert frame.kind == "asymmetric" and not frame.degenerate
            assert abs(abs(np.linalg.det(frame.rotation)) - 1) < 1e-12
            y1 = to_frame(moved, frame).positions
            y0p = y0[tr.perm]
            assert _oh_distance(y0p, y1) < FRAME_ATOL, tr.name
            # the charge centroid is the origin
            assert np.abs(moved.atomic_numbers @ y1).max() < FRAME_ATOL


def test_frame_matrix_round_trip():
    mol = _turned(System.from_atoms(molecule("CH3CH2OH")))
    frame = molecular_frame(mol)
    m = np.random.default_rng(0).normal(size=(2, 72, 72))
    m_frame = to_frame_matrix(m, frame, "def2-svp", mol.symbols)
    assert m_frame.shape == m.shape
    np.testing.assert_allclose(from_frame_matrix(m_frame, frame, "def2-svp", mol.symbols), m, atol=1e-12)
    d = ao_rotation("def2-svp", mol.symbols, frame.rotation)
    np.testing.assert_allclose(m_frame[1], d @ m[1] @ d.T, atol=1e-12)
    with pytest.raises(ValueError):
        MolecularFrame(np.ones((3, 3)), np.zeros(3))


# ------------------------------------------------------------------ degenerate
def _nh3_exact():
    """NH3 with exact C3v symmetry (to round-off): the in-plane moments are degenerate."""
    ang = np.deg2rad([90.0, 210.0, 330.0])
    h = np.stack([0.9397 * np.cos(ang), 0.9397 * np.sin(ang), np.full(3, -0.2718)], axis=1)
    return _turned(System(("N", "H", "H", "H"), np.vstack([[0.0, 0.0, 0.1165], h])))


def _ch4_exact():
    h = 1.09 / np.sqrt(3) * np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1.0]])
    return _turned(System(("C", "H", "H", "H", "H"), np.vstack([[0.0, 0.0, 0.0], h])))


DEGENERATE = {  # name: (system, kind, number of candidate frames)
    "NH3 exact C3v": (_nh3_exact, "symmetric_top", 3),
    "NH3 ase (C3v to 1e-6 Å)": (lambda: _turned(System.from_atoms(molecule("NH3"))), "symmetric_top", 1),
    "CH4 exact Td": pytest.param((_ch4_exact, "spherical_top", 12), marks=pytest.mark.slow),
    "HCN linear": (lambda: _turned(System.from_atoms(molecule("HCN"))), "linear", 1),
    "CO2 linear": (lambda: _turned(System.from_atoms(molecule("CO2"))), "linear", 1),
    "Ne atom": (lambda: System(("Ne",), np.array([[0.3, -0.2, 1.0]])), "atom", 1),
}


@pytest.mark.parametrize("case", list(DEGENERATE.values()), ids=list(DEGENERATE))
def test_degenerate_molecules(case):
    make, kind, count = case
    mol = make()
    frames = molecular_frames(mol)
    assert [f.kind for f in frames] == [kind] * count and frames[0].degenerate
    ops = ("combined",) if count > 1 else ("rotation", "inversion", "translation", "combined")
    errors = assert_equivariant(_in_frame("def2-svp", 1), mol, basis="def2-svp", ops=ops, rtol=SVP_RTOL, seed=5)
    print(kind, len(frames), "frames", errors)
