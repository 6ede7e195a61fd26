"""On-device AO values and gradients (solvers.ao) against PySCF's numint.eval_ao."""

import jax
import numpy as np
import pytest
from pyscf import dft, gto
from pyscf.dft import numint

from basis.errors import BasisError
from basis.shells import ao_shells, common_shapes, pad_ao_shells, stack_ao_shells
from solvers.ao import eval_ao

AO_RTOL = 1e-12  # max |JAX - PySCF| per component, relative to that component's max |value|
PAD_RTOL = 1e-14  # padded / stacked vs unpadded evaluation, relative per component
FD_RTOL = 1e-10  # analytic gradient vs 4th-order central differences, relative per component
FD_STEP = 3e-5  # Bohr; truncation ~(α h²)² for the tightest O exponent, rounding ~1e-12
GRID_LEVEL = 1

WATER = "O 0 0 0.1173; H 0 0.7572 -0.4692; H 0 -0.7572 -0.4692"
AMMONIA = "N 0 0 0.1; H 0 0.94 -0.28; H 0.81 -0.47 -0.28; H -0.81 -0.47 -0.28"
FLUORAMINE = "N 0 0 0; F 1.43 0.02 -0.03; H -0.33 0.94 0.05; H -0.31 -0.47 0.83"  # NH2F, no symmetry
HYDROGEN_FLUORIDE = "F 0 0 0; H 0.05 -0.03 0.92"

# name: (atoms, basis, angular momenta that occur, general contractions expected)
CASES = {
    "water-sto-3g": (WATER, "sto-3g", {0, 1}, False),
    "water-def2-svp": (WATER, "def2-svp", {0, 1, 2}, False),
    "nh2f-def2-tzvp": (FLUORAMINE, "def2-tzvp", {0, 1, 2, 3}, False),
    "water-cc-pvdz": (WATER, "cc-pvdz", {0, 1, 2}, True),  # PySCF: O 1s/2s as one shell, nctr = 2
    "hf-def2-qzvp": (HYDROGEN_FLUORIDE, "def2-qzvp", {0, 1, 2, 3, 4}, False),  # g on F
}

# One jitted function for the module: tests below evaluate water def2-SVP on the
# same grid, so they share compilations (compiling dominates this file's time).
eval_ao_jit = jax.jit(eval_ao, static_argnums=2)


def _grid(mol, level=GRID_LEVEL):
    grids = dft.gen_grid.Grids(mol)
    grids.level = level
    grids.build(with_non0tab=False)
    return grids.coords


def _relative_error(ao, ref):
    """max over components of max |ao - ref| / max |ref|."""
    ao, ref = np.asarray(ao), np.asarray(ref).reshape(np.shape(ao))
    return float(np.max(np.abs(ao - ref).max(axis=(1, 2)) / np.abs(ref).max(axis=(1, 2))))


@pytest.fixture(scope="module")
def water():
    """(mol, shells, level-1 grid) of water in def2-SVP."""
    mol = gto.M(atom=WATER, basis="def2-svp")
    return mol, ao_shells(mol), _grid(mol)


@pytest.mark.parametrize("name", list(CASES))
def test_values_and_gradients_match_pyscf(name):
    atoms, basis, ls, general = CASES[name]
    mol = gto.M(atom=atoms, basis=basis)
    shells = ao_shells(mol)
    assert set(shells.ls) == ls
    assert shells.nao == mol.nao_nr()
    assert any(c.shape[-1] > 1 for c in shells.coefficients) == general
    coords = _grid(mol)
    ao = eval_ao_jit(shells, coords, 1)
    assert ao.shape == (4, len(coords), mol.nao_nr()) and ao.dtype == np.float64
    assert _relative_error(ao, numint.eval_ao(mol, coords, deriv=1)) < AO_RTOL


def test_values_only_match_pyscf(water):
    mol, shells, coords = water
    ao = eval_ao_jit(shells, coords, 0)
    assert ao.shape == (1, len(coords), mol.nao_nr())
    assert _relative_error(ao, numint.eval_ao(mol, coords, deriv=0)) < AO_RTOL


def test_gradients_match_finite_differences(water):
    _, shells, coords = water
    stencil = [(-2, 1 / 12), (-1, -8 / 12), (1, 8 / 12), (2, -1 / 12)]
    fd = np.stack(
        [
            sum(w * np.asarray(eval_ao_jit(shells, coords + s * FD_STEP * np.eye(3)[i], 0))[0] for s, w in stencil)
            / FD_STEP
            for i in range(3)
        ]
    )
    grad = np.asarray(eval_ao_jit(shells, coords, 1))[1:]
    assert _relative_error(grad, fd) < FD_RTOL


def test_padded_and_stacked_bucket(water):
    """vmap over a padded, stacked bucket equals each molecule; padded AOs are exact zeros."""
    mol_w, shells_w, coords = water
    mol_n = gto.M(atom=AMMONIA, basis="def2-svp")
    shells_n = ao_shells(mol_n)
    nshell, nctr, nao = common_shapes([shells_w, shells_n])
    assert nao == mol_n.nao_nr() == 29
    # a larger bucket: more shells, an extra group, a padded general contraction, more AOs
    nshell = {k: n + 1 for k, n in nshell.items()} | {(1, 2): 1}
    nctr = nctr | {(0, 1): 2}
    nao += 5
    padded = [pad_ao_shells(s, nshell, nao, nctr) for s in (shells_w, shells_n)]
    assert padded[0].nshell((1, 2)) == 1 and padded[0].nctr((0, 1)) == 2 and padded[0].nao == 34
    assert jax.tree_util.tree_structure(padded[0]) == jax.tree_util.tree_structure(padded[1])

    batched = jax.jit(jax.vmap(eval_ao, in_axes=(0, 0, None)), static_argnums=2)
    grids = np.stack([coords, coords[::-1]])
    ao = np.asarray(batched(stack_ao_shells(padded), grids, 1))
    assert ao.shape == (2, 4, len(coords), nao)
    assert _relative_error(ao[0, ..., : mol_w.nao_nr()], eval_ao_jit(shells_w, coords, 1)) < PAD_RTOL
    assert _relative_error(ao[1, ..., : mol_n.nao_nr()], numint.eval_ao(mol_n, coords[::-1], deriv=1)) < AO_RTOL
    assert np.all(ao[0, ..., mol_w.nao_nr() :] == 0.0) and np.all(ao[1, ..., mol_n.nao_nr() :] == 0.0)

    # the same compiled function serves the bucket in another order
    compiled = batched._cache_size()
    swapped = np.asarray(batched(stack_ao_shells(padded[::-1]), grids[::-1], 1))
    assert batched._cache_size() == compiled
    np.testing.assert_array_equal(swapped[::-1], ao)


def test_h_functions_with_general_contraction():
    """A made-up basis: an h shell (l = 5) and a generally contracted d shell."""
    basis = gto.basis.parse(
        """
        Ne D
            2.2  0.7  0.1
            0.8  0.4  1.0
        Ne H
            1.2  1.0
        """
    )
    mol = gto.M(atom="Ne 0.1 -0.2 0.3", basis={"Ne": basis}, charge=10)
    shells = ao_shells(mol)
    assert shells.keys == ((2, 2), (5, 1)) and shells.coefficients[0].shape == (1, 2, 2)
    coords = np.random.default_rng(3).normal(scale=1.2, size=(500, 3))
    assert _relative_error(eval_ao_jit(shells, coords, 1), numint.eval_ao(mol, coords, deriv=1)) < AO_RTOL


def test_cartesian_basis_is_rejected_in_one_line():
    with pytest.raises(BasisError) as info:
        ao_shells(gto.M(atom=WATER, basis="def2-svp", cart=True))
    assert "cart" in str(info.value) and "\n" not in str(info.value)


def test_bad_arguments_raise():
    shells = ao_shells(gto.M(atom=WATER, basis="sto-3g"))
    with pytest.raises(ValueError, match="deriv"):
        eval_ao(shells, np.zeros((4, 3)), deriv=2)
    with pytest.raises(ValueError, match="coords"):
        eval_ao(shells, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="down"):
        pad_ao_shells(shells, {(0, 3): 1}, nao=7)
    with pytest.raises(ValueError, match="down"):
        pad_ao_shells(shells, {}, nao=3)
    with pytest.raises(ValueError, match="stacked"):
        pad_ao_shells(stack_ao_shells([shells]), {}, nao=7)
