"""The crystal baseline H_base(k) = h(k) + <φ_k|v_guess|φ_k>: equal to F(k)[P_guess] on the
training mesh and to PySCF's get_bands of the guess density at other k-points."""

import dataclasses

import jax
import numpy as np
import pytest

from basis.crystal import absolute_kpts, read_crystal
from basis.pbc_integrals import make_periodic_mean_field, periodic_integrals_from_mean_field
from solvers.periodic import fock, generalized_eigh
from vardft.model import init_params
from vardft.train_crystal import (
    CrystalTrainConfig,
    baseline_hamiltonian,
    crystal_dataset,
    crystal_hamiltonian_at,
)

BASELINE_TOL = 1e-10  # Hartree, same functional evaluated two ways
PYSCF_BAND_TOL = 1e-8  # Hartree, against PySCF's get_bands of the same density
SMALL_MESH = (9, 9, 9)
OFF_MESH_FRAC = np.array([[0.1, 0.2, 0.3], [0.5, 0.0, 0.25]])


@pytest.fixture(scope="module", params=["lda,vwn", "pbe"])
def guess_case(request):
    """A displaced Si cell: PySCF's mean field (not run) and its integrals, small FFT mesh."""
    system = crystal_dataset("si", 1, seed=5)[0]
    mf = make_periodic_mean_field(system, request.param, "gth-szv", None, (2, 2, 2), SMALL_MESH)
    return system, mf, periodic_integrals_from_mean_field(mf)


def test_baseline_equals_fock_of_guess_density(guess_case):
    _, mf, ints = guess_case
    H = np.asarray(baseline_hamiltonian(ints, "minao"))
    F = np.asarray(fock(ints.dm_guess, ints))
    assert np.abs(H - F).max() < BASELINE_TOL
    # and it is not trivially the core Hamiltonian: the guess potential matters
    assert np.abs(H - np.asarray(ints.hcore)).max() > 1e-2
    assert np.abs(np.asarray(baseline_hamiltonian(ints, "none"))).max() == 0.0


def test_baseline_at_new_kpoints_matches_pyscf_get_bands(guess_case):
    system, mf, ints = guess_case
    cfg = CrystalTrainConfig(xc=mf.xc, kmesh=(2, 2, 2), mesh=SMALL_MESH, pseudo=mf.cell.pseudo, output_scale=0.0)
    model_cfg = cfg.model_config(("Si",))
    params = init_params(jax.random.PRNGKey(0), model_cfg)
    # on the training k-points: the same matrices as training uses
    H, S = crystal_hamiltonian_at(params, model_cfg, cfg, system, np.asarray(ints.kpts))
    assert np.abs(H - np.asarray(baseline_hamiltonian(ints, "minao"))).max() < BASELINE_TOL
    assert np.abs(S - np.asarray(ints.overlap)).max() < BASELINE_TOL
    # off the mesh: bands of the guess density as PySCF's get_bands computes them
    kpts = absolute_kpts(mf.cell, OFF_MESH_FRAC)
    H, S = crystal_hamiltonian_at(params, model_cfg, cfg, system, kpts, ints=ints)
    e, _ = generalized_eigh(H, S)
    ref = np.asarray(mf.get_bands(kpts, dm_kpts=np.asarray(ints.dm_guess))[0])
    assert np.abs(np.asarray(e) - ref).max() < PYSCF_BAND_TOL


def test_unknown_baseline_is_an_input_error(guess_case):
    from basis.errors import InputError

    _, _, ints = guess_case
    with pytest.raises(InputError, match="baseline"):
        baseline_hamiltonian(ints, "hcore")
    with pytest.raises(InputError, match="baseline"):
        from vardft.train_crystal import train_crystal

        train_crystal(crystal_dataset("si", 1), dataclasses.replace(CrystalTrainConfig(), baseline="sad"))
