"""The equivariant model on periodic graphs: real-space blocks H(R) of crystals.

Random (untrained) parameters, float64. D(R) comes from basis.layout.ao_rotation
(checked against PySCF AO values in tests/basis/test_layout.py); S(k) from
real-space blocks by the same Bloch sum is checked against PySCF's
``pbc_intor`` in tests/solvers/test_bands.py.
"""

import jax
import numpy as np
import pytest

from basis.units import BOHR_ANGSTROM
from basis.crystal import read_crystal
from basis.system import System
from solvers.bands import bloch_sum
from vardft.hamiltonian import bloch_sum_batch, prepare_batch, unpad_real_space
from vardft.model import ModelConfig, init_params, predict_hamiltonian
from vardft.testing import CRYSTAL_OPERATIONS, assert_equivariant

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


@pytest.fixture(scope="module")
def case():
    """Displaced Si, diamond and Si with one C, and perfect Si; one batch, one compilation."""
    cfg = ModelConfig.preset("S", basis=BASIS, elements=("C", "Si"), cutoff=CUTOFF_ANGSTROM)
    params = init_params(jax.random.PRNGKey(3), cfg)
    bases = [_displaced("si", 0), _displaced("diamond", 1), _displaced("si", 2, substitute="C")]
    systems, meta = [], []
    for b, s in enumerate(bases):
        systems.append(s)
        meta.append((b, "base", None))
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


@pytest.fixture(scope="module")
def model():
    cfg = ModelConfig.preset("S", basis=BASIS, elements=("C", "Si"), cutoff=CUTOFF_ANGSTROM)
    return cfg, init_params(jax.random.PRNGKey(3), cfg)


@pytest.mark.parametrize("base", [("si", 0, None), ("diamond", 1, None), ("si", 2, "C")], ids=["si", "diamond", "si-c"])
def test_equivariance(model, base):
    """Rotation, inversion, rotoinversion, translation, permutation, lattice shifts of single
    atoms (H'(R)_ij = H(R + m_j − m_i)_ij) and all at once, through vardft.testing."""
    cfg, params = model

    def real_space(systems):
        batch = prepare_batch(systems, cfg)
        H = np.asarray(predict_hamiltonian(params, batch))
        return [unpad_real_space(H, batch, k) for k in range(len(systems))]

    assert_equivariant(real_space, _displaced(*base), basis=BASIS, ops=CRYSTAL_OPERATIONS + ("combined",),
                       rtol=EQUIVARIANCE_RTOL, batched=True)


def test_molecules_and_crystals_do_not_mix():
    cfg = ModelConfig.preset("S", basis=BASIS, elements=("Si",), cutoff=CUTOFF_ANGSTROM)
    molecule = System(("Si", "Si"), np.array([[0.0, 0, 0], [0, 0, 2.3]]))
    with pytest.raises(ValueError, match="molecules or crystals"):
        prepare_batch([molecule, read_crystal("si")], cfg)
