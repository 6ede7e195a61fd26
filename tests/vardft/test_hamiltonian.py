"""Blocks ↔ irreps, canonical block layout, batching and AO-matrix assembly."""

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.linalg import block_diag

from basis.units import BOHR_ANGSTROM
from basis.errors import BasisError
from basis.layout import element_layout, sph_rotation
from basis.system import System
from vardft.hamiltonian import (
    assemble,
    block_layout,
    block_to_irreps,
    bucket_size,
    irreps_to_block,
    prepare_batch,
)
from vardft.model import ModelConfig

ROUND_TRIP_TOL = 1e-12
EQUIVARIANCE_TOL = 1e-12
ELEMENTS = ("H", "C", "N", "O", "F")

WATER = System(("O", "H", "H"), np.array([[0.0, 0.0, 0.12], [0.0, 0.76, -0.47], [0.0, -0.76, -0.47]]))


def _rotation(seed, improper=False):
    r = np.asarray(e3nn.rand_matrix(jax.random.PRNGKey(seed), (), dtype=jnp.float64))
    return -r if improper else r


@pytest.mark.parametrize("basis", ["def2-svp", "def2-tzvp"])
def test_round_trip(basis):
    lay = block_layout(basis, ELEMENTS)
    rng = np.random.default_rng(0)
    blocks = rng.normal(size=(4, lay.nc, lay.nc))
    x = block_to_irreps(blocks, lay)
    assert x.shape == (4, lay.nc**2) and e3nn.Irreps(lay.irreps).dim == lay.nc**2
    np.testing.assert_allclose(irreps_to_block(x, lay), blocks, atol=ROUND_TRIP_TOL)
    v = rng.normal(size=(3, lay.nc**2))
    np.testing.assert_allclose(block_to_irreps(irreps_to_block(v, lay), lay), v, atol=ROUND_TRIP_TOL)
    # orthogonal map: norms are preserved
    np.testing.assert_allclose(np.linalg.norm(x, axis=-1), np.linalg.norm(blocks, axis=(-2, -1)), rtol=1e-12)


@pytest.mark.parametrize("basis,improper", [("def2-svp", False), ("def2-svp", True), ("def2-tzvp", True)])
def test_irreps_to_block_is_equivariant(basis, improper):
    """Rotating the irreps (e3nn's D) rotates the block by PySCF-order D built without e3nn."""
    lay = block_layout(basis, ELEMENTS)
    rot = _rotation(7, improper)
    d_irreps = block_diag(*[
        np.kron(np.eye(mul), np.asarray(ir.D_from_matrix(jnp.asarray(rot)))) for mul, ir in e3nn.Irreps(lay.irreps)
    ])
    d_slots = block_diag(*[sph_rotation(l, rot) for l, c in enumerate(lay.counts) for _ in range(c)])
    x = np.random.default_rng(1).normal(size=lay.nc**2)
    np.testing.assert_allclose(
        irreps_to_block(d_irreps @ x, lay), d_slots @ irreps_to_block(x, lay) @ d_slots.T, atol=EQUIVARIANCE_TOL
    )


def test_layout_slots_match_elements():
    lay = block_layout("def2-tzvp", ELEMENTS)
    assert lay.counts == (5, 3, 2, 1) and lay.nc == 31 and lay.lmax == 3
    for symbol, slots in zip(ELEMENTS, lay.element_slots):
        el = element_layout("def2-tzvp", symbol)
        assert len(slots) == el.nao and len(set(slots.tolist())) == el.nao
        assert slots.max() < lay.nc
    assert lay.species_index(["o", "H"]).tolist() == [3, 0]
    with pytest.raises(BasisError):
        lay.species_index(["Cl"])
    with pytest.raises(BasisError):
        block_layout("def2-svp", ("H", "H"))


def test_bucket_size():
    assert [bucket_size(n) for n in (1, 3, 8, 9, 24, 33, 72, 380)] == [1, 3, 8, 10, 24, 40, 80, 384]
    for n in range(1, 2000, 7):
        assert n <= bucket_size(n) <= max(1.25 * n + 1, 8)


def test_prepare_batch_shapes_and_masks():
    cfg = ModelConfig.preset("S", elements=ELEMENTS)
    methane = System(("C", "H", "H", "H", "H"), np.array(
        [[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63], [-0.63, 0.63, -0.63], [0.63, -0.63, -0.63]]
    ))
    batch = prepare_batch([WATER, methane], cfg, batch_size=3)
    b, a, e, n = batch.shape
    assert (b, a) == (3, 5) and e == 20 and n == 40  # methane: 20 edges, 14 + 4*5 = 34 AOs -> 40
    np.testing.assert_array_equal(batch.nao, [24, 34, 0])
    np.testing.assert_array_equal(batch.atom_mask.sum(1), [3, 5, 0])
    np.testing.assert_array_equal(batch.edge_mask.sum(1), [6, 20, 0])
    np.testing.assert_array_equal(batch.ao_mask.sum(1), [24, 34, 0])
    np.testing.assert_allclose(batch.positions[0, :3], WATER.positions / BOHR_ANGSTROM)
    np.testing.assert_array_equal(batch.edge_shift, 0.0)
    # both directions of every edge are present
    ei = batch.edge_index[1, :20]
    assert {tuple(p) for p in ei.tolist()} == {(j, i) for i, j in ei.tolist()}
    with pytest.raises(ValueError):
        prepare_batch([methane], cfg, pad_to=(4, 20, 40))
    with pytest.raises(ValueError):
        prepare_batch([WATER, methane], cfg, batch_size=1)
    with pytest.raises(BasisError):
        prepare_batch([System(("Cl", "Cl"), np.array([[0, 0, 0], [0, 0, 2.0]]))], cfg)


def test_assemble_places_blocks():
    """Each AO pair of the assembled H is the right entry of the right block; beyond the cutoff it is 0."""
    cfg = ModelConfig.preset("S", elements=("H", "O"), cutoff=2.0)
    far = System(("O", "H", "H", "H", "H"), np.array(
        [[0, 0, 0.12], [0, 0.76, -0.47], [0, -0.76, -0.47], [5.0, 0.0, 0.0], [5.74, 0.0, 0.0]]
    ))  # water and a distant H2 molecule
    batch = prepare_batch([far], cfg)
    lay = cfg.layout
    _, a, e, n = batch.shape
    rng = np.random.default_rng(2)
    diag = rng.normal(size=(1, a, lay.nc, lay.nc))
    off = rng.normal(size=(1, e, lay.nc, lay.nc))
    h = np.asarray(assemble(jnp.asarray(diag), jnp.asarray(off), jnp.asarray(batch.ao_gather)))[0]
    np.testing.assert_allclose(h, h.T, atol=0)
    species = batch.species[0, :5]
    offsets = np.concatenate([[0], np.cumsum(lay.element_nao[species])])
    slots = [lay.element_slots[s] for s in species]
    edges = {tuple(p): k for k, p in enumerate(batch.edge_index[0, : batch.edge_mask[0].sum()].tolist())}
    assert (0, 3) not in edges and (3, 4) in edges and (0, 1) in edges
    for i in range(5):
        for j in range(5):
            sub = h[offsets[i] : offsets[i + 1], offsets[j] : offsets[j + 1]]
            if i == j:
                m = diag[0, i]
                expect = 0.5 * (m + m.T)[np.ix_(slots[i], slots[j])]
            elif (i, j) in edges:
                expect = 0.5 * (off[0, edges[(i, j)]] + off[0, edges[(j, i)]].T)[np.ix_(slots[i], slots[j])]
            else:
                expect = np.zeros_like(sub)
            np.testing.assert_allclose(sub, expect, atol=0)
    assert np.all(h[offsets[-1] :, :] == 0) and np.all(h[:, offsets[-1] :] == 0)
