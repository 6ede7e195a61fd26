"""The equivariant model on periodic graphs: real-space blocks H(R) of crystals.

Random (untrained) parameters, float64. D(R) comes from basis.layout.ao_rotation
(checked against PySCF AO values in tests/basis/test_layout.py); S(k) from
real-space blocks by the same Bloch sum is checked against PySCF's
``pbc_intor`` in tests/solvers/test_bands.py.
"""

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from basis.units import BOHR_ANGSTROM
from basis.crystal import read_crystal
from basis.layout import ao_offsets, ao_permutation, ao_rotation
from basis.system import System
from solvers.bands import bloch_sum
from vardft.hamiltonian import bloch_sum_batch, prepare_batch, unpad_real_space
from vardft.model import predict_hamiltonian
from vardft.model import ModelConfig, init_params

EQUIVARIANCE_RTOL = 1e-10  # relative to max |H(R)|
RELABEL_RTOL = 1e-10
HERMITIAN_TOL = 1e-12
BLOCH_TOL = 1e-12
BASIS = "gth-szv"
CUTOFF_ANGSTROM = 5.0
DISPLACEMENT_ANGSTROM = 0.1
SI_NEIGHBOURS_WITHIN_5A = 4 + 12 + 12  # shells at 2.35, 3.84 and 4.50 Å


def _displaced(name, seed, substitute=None):
    base = read_crystal(name)
    rng = np.random.default_rng(seed)
    symbols = tuple(base.symbols) if substitute is None else (substitute,) + tuple(base.symbols[1:])
    return System(symbols, base.positions + rng.normal(scale=DISPLACEMENT_ANGSTROM, size=base.positions.shape), cell=base.cell)


def _rotation(seed):
    return np.asarray(e3nn.rand_matrix(jax.random.PRNGKey(seed), (), dtype=jnp.float64))


TRANSFORMS = [
    ("rotation", _rotation(21), np.array([0.3, -1.1, 2.0])),
    ("inversion", -np.eye(3), np.zeros(3)),
    ("rotoinversion", -_rotation(22), np.array([-2.0, 0.5, 0.7])),
    ("translation", np.eye(3), np.array([4.0, -3.0, 1.5])),
]
ATOM_SHIFTS = [np.array([[0, 0, 0], [1, 0, 0]]), np.array([[0, -1, 2], [1, 1, 0]]), np.array([[1, -1, 0], [1, -1, 0]])]


@pytest.fixture(scope="module")
def case():
    """Displaced Si, diamond and Si with one C, each transformed; one batch, one compilation."""
    cfg = ModelConfig.preset("S", basis=BASIS, elements=("C", "Si"), cutoff=CUTOFF_ANGSTROM)
    params = init_params(jax.random.PRNGKey(3), cfg)
    bases = [_displaced("si", 0), _displaced("diamond", 1), _displaced("si", 2, substitute="C")]
    systems, meta = [], []
    for b, s in enumerate(bases):
        systems.append(s)
        meta.append((b, "base", None))
        for name, r, t in TRANSFORMS:
            systems.append(System(s.symbols, s.positions @ r.T + t, cell=s.cell @ r.T))
            meta.append((b, name, r))
        for m in ATOM_SHIFTS:
            systems.append(System(s.symbols, s.positions + m @ s.cell, cell=s.cell))
            meta.append((b, "atom_shift", m))
        systems.append(System(s.symbols[::-1], s.positions[::-1], cell=s.cell))
        meta.append((b, "permutation", [1, 0]))
    systems.append(read_crystal("si"))
    meta.append((None, "perfect", None))
    batch = prepare_batch(systems, cfg)
    H = np.asarray(predict_hamiltonian(params, batch))
    return cfg, batch, H, systems, meta


def _index(meta, b, name):
    return [k for k, m in enumerate(meta) if m[0] == b and m[1] == name]


def test_periodic_graph(case):
    cfg, batch, H, systems, meta = case
    k = _index(meta, None, "perfect")[0]
    assert int(np.asarray(batch.edge_mask)[k].sum()) == 2 * SI_NEIGHBOURS_WITHIN_5A
    HR, shifts = unpad_real_space(H, batch, k)
    assert np.array_equal(shifts[0], [0, 0, 0])
    assert len({tuple(s) for s in shifts}) == len(shifts)
    # every edge vector is within the cutoff and its shift is one of the output shifts
    e = np.asarray(batch.edge_mask)[k]
    pos = np.asarray(batch.positions)[k]
    ij = np.asarray(batch.edge_index)[k][e]
    vec = pos[ij[:, 1]] + np.asarray(batch.edge_shift)[k][e] - pos[ij[:, 0]]
    assert np.linalg.norm(vec, axis=1).max() < cfg.cutoff / BOHR_ANGSTROM
    n = np.rint(np.asarray(batch.edge_shift)[k][e] @ np.linalg.inv(np.asarray(batch.lattice)[k])).astype(int)
    assert {tuple(v) for v in n} <= {tuple(s) for s in shifts}
    # padding slots of H(R) are zero
    assert np.abs(H[k, len(shifts):]).max() == 0.0


def test_h_minus_r_is_transpose_and_hk_hermitian(case):
    _, batch, H, _, _ = case
    for k in range(H.shape[0]):
        HR, shifts = unpad_real_space(H, batch, k)
        lookup = {tuple(s): q for q, s in enumerate(shifts)}
        neg = [lookup[tuple(-s)] for s in shifts]
        assert np.array_equal(HR[neg], np.swapaxes(HR, 1, 2))
    kpts = np.random.default_rng(5).normal(scale=0.5, size=(4, 3))
    Hk = np.asarray(bloch_sum_batch(H, batch, kpts))
    assert np.abs(Hk - np.conj(np.swapaxes(Hk, -1, -2))).max() < HERMITIAN_TOL * np.abs(Hk).max()
    # the batched Bloch sum is solvers.bands.bloch_sum of each crystal's blocks
    HR, shifts = unpad_real_space(H, batch, 0)
    ref = np.asarray(bloch_sum(HR, shifts @ np.asarray(batch.lattice)[0], kpts))
    assert np.abs(Hk[0, :, : HR.shape[1], : HR.shape[1]] - ref).max() < BLOCH_TOL


@pytest.mark.parametrize("name", [t[0] for t in TRANSFORMS])
def test_equivariance_rotation_inversion_translation(case, name):
    _, batch, H, systems, meta = case
    for b in range(3):
        H0, s0 = unpad_real_space(H, batch, _index(meta, b, "base")[0])
        k = _index(meta, b, name)[0]
        H1, s1 = unpad_real_space(H, batch, k)
        assert np.array_equal(s0, s1)  # same integer shifts, rotated Cartesian translations
        d = ao_rotation(BASIS, systems[k].symbols, meta[k][2])
        err = np.abs(H1 - d @ H0 @ d.T).max() / np.abs(H0).max()
        assert err < EQUIVARIANCE_RTOL, (name, b, err)


def test_lattice_translation_of_atoms_relabels_shifts(case):
    """Atom a moved by m_a · lattice: H'(R)_ij = H(R + m_j − m_i)_ij, H'(k) = U H(k) U†."""
    _, batch, H, systems, meta = case
    kpts = np.random.default_rng(6).normal(scale=0.5, size=(3, 3))
    for b in range(3):
        k0 = _index(meta, b, "base")[0]
        H0, s0 = unpad_real_space(H, batch, k0)
        old = {tuple(s): q for q, s in enumerate(s0)}
        offsets = ao_offsets(BASIS, systems[k0].symbols)
        scale = np.abs(H0).max()
        Hk0 = np.asarray(bloch_sum_batch(H, batch, kpts))[k0]
        for k in _index(meta, b, "atom_shift"):
            m = meta[k][2]
            H1, s1 = unpad_real_space(H, batch, k)
            for q, n in enumerate(s1):
                for i in range(2):
                    for j in range(2):
                        bi, bj = slice(offsets[i], offsets[i + 1]), slice(offsets[j], offsets[j + 1])
                        src = old.get(tuple(n + m[j] - m[i]))
                        want = 0.0 if src is None else H0[src, bi, bj]
                        assert np.abs(H1[q, bi, bj] - want).max() < RELABEL_RTOL * scale
            lattice = np.asarray(batch.lattice)[k]
            phase = np.exp(1j * kpts @ (m @ lattice).T)  # (nk, natom)
            u = np.repeat(phase, np.diff(offsets), axis=1)  # (nk, nao)
            Hk1 = np.asarray(bloch_sum_batch(H, batch, kpts))[k]
            n = H0.shape[1]
            want = u[:, :, None] * Hk0[:, :n, :n] * np.conj(u[:, None, :])
            assert np.abs(Hk1[:, :n, :n] - want).max() < RELABEL_RTOL * scale


def test_permutation_of_atoms(case):
    _, batch, H, systems, meta = case
    for b in range(3):
        k0 = _index(meta, b, "base")[0]
        H0, s0 = unpad_real_space(H, batch, k0)
        k = _index(meta, b, "permutation")[0]
        H1, s1 = unpad_real_space(H, batch, k)
        assert np.array_equal(s0, s1)
        idx = ao_permutation(BASIS, systems[k0].symbols, [1, 0])
        assert np.abs(H1 - H0[:, idx][:, :, idx]).max() < RELABEL_RTOL * np.abs(H0).max()


def test_molecules_and_crystals_do_not_mix():
    cfg = ModelConfig.preset("S", basis=BASIS, elements=("Si",), cutoff=CUTOFF_ANGSTROM)
    molecule = System(("Si", "Si"), np.array([[0.0, 0, 0], [0, 0, 2.3]]))
    with pytest.raises(ValueError, match="molecules or crystals"):
        prepare_batch([molecule, read_crystal("si")], cfg)
