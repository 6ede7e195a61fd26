"""The crystal baseline H_base(k) = h(k) + <φ_k|v_guess|φ_k>: equal to F(k)[P_guess] on the
training mesh and to PySCF's get_bands of the guess density at other k-points."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from basis.crystal import absolute_kpts
from basis.errors import InputError
from basis.pbc_integrals import make_periodic_mean_field, periodic_integrals_from_mean_field
from solvers.eigen import batched_eigh_calls
from solvers.periodic import fock, generalized_eigh
from vardft.config import make_config
from vardft.data import crystal_structures
from vardft.model import init_params
from vardft.tasks import CrystalTask, model_config_for

BASELINE_TOL = 1e-10  # Hartree, same functional evaluated two ways
PYSCF_BAND_TOL = 1e-8  # Hartree, against PySCF's get_bands of the same density
SMALL_MESH = (9, 9, 9)
OFF_MESH_FRAC = np.array([[0.1, 0.2, 0.3], [0.5, 0.0, 0.25]])


@pytest.fixture(scope="module", params=["lda,vwn", "pbe"])
def guess_case(request):
    """A displaced Si cell: PySCF's mean field (not run) and its integrals, small FFT mesh."""
    system = crystal_structures("si", 1, seed=5)[0]
    mf = make_periodic_mean_field(system, request.param, "gth-szv", None, (2, 2, 2), SMALL_MESH)
    return system, mf, periodic_integrals_from_mean_field(mf)


def test_baseline_equals_fock_of_guess_density(guess_case):
    _, mf, ints = guess_case
    task = CrystalTask(make_config("crystal", baseline="minao"))
    H = np.asarray(task.baseline(ints, task.baseline_potential(ints)))
    F = np.asarray(fock(ints.dm_guess, ints))
    assert np.abs(H - F).max() < BASELINE_TOL
    # and it is not trivially the core Hamiltonian: the guess potential matters
    assert np.abs(H - np.asarray(ints.hcore)).max() > 1e-2
    none = CrystalTask(make_config("crystal", baseline="none"))
    assert np.abs(np.asarray(none.baseline(ints, none.baseline_potential(ints)))).max() == 0.0


def test_baseline_at_new_kpoints_matches_pyscf_get_bands(guess_case):
    system, mf, ints = guess_case
    cfg = make_config("crystal", xc=mf.xc, kmesh=(2, 2, 2), mesh=SMALL_MESH, pseudo=mf.cell.pseudo, output_scale=0.0,
                      baseline="minao")
    task = CrystalTask(cfg)
    model_cfg = model_config_for(cfg, ("Si",))
    params = init_params(jax.random.PRNGKey(0), model_cfg)
    # on the training k-points: the same matrices as training uses
    H, S = task.hamiltonian(params, model_cfg, system, np.asarray(ints.kpts))
    assert np.abs(H - np.asarray(task.baseline(ints, task.baseline_potential(ints)))).max() < BASELINE_TOL
    assert np.abs(S - np.asarray(ints.overlap)).max() < BASELINE_TOL
    # off the mesh: bands of the guess density as PySCF's get_bands computes them
    kpts = absolute_kpts(mf.cell, OFF_MESH_FRAC)
    H, S = task.hamiltonian(params, model_cfg, system, kpts, ints=ints)
    e, _ = generalized_eigh(H, S)
    ref = np.asarray(mf.get_bands(kpts, dm_kpts=np.asarray(ints.dm_guess))[0])
    assert np.abs(np.asarray(e) - ref).max() < PYSCF_BAND_TOL


def test_unknown_baseline_is_an_input_error():
    from basis.errors import InputError

    with pytest.raises(InputError, match="baseline"):
        make_config("crystal", baseline="hcore")
    with pytest.raises(InputError, match="baseline"):
        make_config("molecule", baseline="sad")


def _supercell_along_c(system, copies: int):
    from basis.system import System

    lattice = np.asarray(system.cell)
    positions = np.concatenate([system.positions + n * lattice[2] for n in range(copies)])
    return System(symbols=system.symbols * copies, positions=positions, cell=lattice * np.array([[1], [1], [copies]]))


def test_sap_supercell_bands_are_the_primitive_bands_folded():
    """Issue 13's folding check, end to end through the network: the predicted H(k), S(k) of
    a 1×1×2 supercell of a displaced Si cell at Γ have the eigenvalues of the primitive
    cell's at k = 0 and k = b₃/2 (an untrained network: its blocks are as large as a trained
    one's, and consistency does not depend on the weights)."""
    import scipy.linalg

    from basis.units import BOHR_ANGSTROM

    cfg = make_config("crystal", baseline="sap", xc="pbe", pseudo="gth-pbe", kmesh=(2, 2, 2))
    task = CrystalTask(cfg)
    model_cfg = model_config_for(cfg, ("Si",))
    params = init_params(jax.random.PRNGKey(3), model_cfg)
    primitive = crystal_structures("si", 1, seed=5)[0]
    supercell = _supercell_along_c(primitive, 2)
    recip = 2 * np.pi * np.linalg.inv(np.asarray(primitive.cell) / BOHR_ANGSTROM).T
    kpts = np.stack([np.zeros(3), 0.5 * recip[2]])

    def bands(system, k):
        H, S = task.hamiltonian(params, model_cfg, system, k)
        return np.concatenate([scipy.linalg.eigh(h, s, eigvals_only=True) for h, s in zip(H, S)])

    folded = np.sort(bands(primitive, kpts))
    direct = np.sort(bands(supercell, np.zeros((1, 3))))
    assert np.abs(direct - folded).max() < 3.7e-8  # 1e-6 eV
    # the network is part of it: without it the bands move
    bare = CrystalTask(make_config("crystal", baseline="sap", xc="pbe", pseudo="gth-pbe", kmesh=(2, 2, 2), output_scale=0.0))
    H0, S0 = bare.hamiltonian(params, model_cfg, primitive, kpts[:1])
    assert np.abs(np.sort(scipy.linalg.eigh(H0[0], S0[0], eigvals_only=True)) - np.sort(bands(primitive, kpts[:1]))).max() > 1e-4


def test_sap_real_space_blocks_equal_the_dense_prediction():
    """The block path (no N × N matrix per shift) Bloch-sums to what the dense path
    (predict_hamiltonian + bloch_sum_batch, used in training) gives."""
    from basis.pbc_sap import lattice_blocks
    from vardft.hamiltonian import bloch_sum_batch, prepare_batch
    from vardft.model import predict_hamiltonian

    cfg = make_config("crystal", baseline="sap", xc="pbe", pseudo="gth-pbe", kmesh=(2, 2, 2))
    task = CrystalTask(cfg)
    model_cfg = model_config_for(cfg, ("Si",))
    params = init_params(jax.random.PRNGKey(4), model_cfg)
    system = crystal_structures("si", 1, seed=7)[0]
    kpts = np.array([[0.0, 0.0, 0.0], [0.1, -0.2, 0.3]])
    H, S = task.hamiltonian(params, model_cfg, system, kpts)
    batch = prepare_batch([system], model_cfg)
    dense = np.asarray(bloch_sum_batch(cfg.delta_scale * predict_hamiltonian(params, batch), batch, kpts))[0]
    base = lattice_blocks(system, cfg.basis, cfg.pseudo, cfg.xc)
    np.testing.assert_allclose(H, base.bloch(kpts) + dense[:, : base.nao, : base.nao], atol=1e-12)
    np.testing.assert_allclose(S, base.bloch(kpts, "overlap"), atol=1e-14)
    assert np.abs(dense).max() > 1e-4  # the network part is really there
    H1, S1 = base.bloch_pair(kpts[1])  # one k-point, both matrices (the band solver's path)
    np.testing.assert_allclose(H1, base.bloch(kpts)[1], atol=1e-14, rtol=0)
    np.testing.assert_allclose(S1, base.bloch(kpts, "overlap")[1], atol=1e-14, rtol=0)


def test_network_blocks_by_chunks_of_edges_equal_all_at_once():
    """Large cells run the network's per-edge work in chunks, one after the other (memory of
    one chunk): the blocks equal those of all edges at once, for chunks that do not divide
    the edge count, with parameters far from their initial values."""
    from vardft.hamiltonian import prepare_batch
    from vardft.model import predict_blocks

    cfg = make_config("crystal", baseline="sap", xc="pbe", pseudo="gth-pbe", kmesh=(2, 2, 2))
    model_cfg = model_config_for(cfg, ("Si",))
    params = init_params(jax.random.PRNGKey(5), model_cfg)
    noise = np.random.default_rng(0)
    params = jax.tree_util.tree_map(lambda p: p + 0.1 * noise.normal(size=p.shape), params)
    batch = prepare_batch([_supercell_along_c(crystal_structures("si", 1, seed=3)[0], 2)], model_cfg, gather=False)
    whole = [np.asarray(x) for x in predict_blocks(params, batch)]
    assert np.abs(whole[1]).max() > 1e-6
    for chunk in (37, 1000):
        parts = [np.asarray(x) for x in predict_blocks(params, batch, edge_chunk=chunk)]
        for a, b in zip(parts, whole):
            np.testing.assert_allclose(a, b, atol=1e-12 * np.abs(b).max(), rtol=0)


def test_training_and_prediction_see_one_hamiltonian_when_ao_slots_are_padded():
    """gth-dzvp Si has 13 AOs per atom: a 2-atom cell's 26 AOs sit in 28 bucketed slots.
    The H(k) and H(q) the training loss sees (prepared cell, off-mesh points included) equal
    what prediction returns at those k-points, with the correction filtered by S(k)'s
    spectrum (``overlap_filter``, which this basis needs) in both, and the loss is finite."""
    cfg = make_config("crystal", basis="gth-dzvp", xc="lda,vwn", pseudo="gth-pade", kmesh=(2, 1, 1), mesh=SMALL_MESH,
                      baseline="sap", overlap_filter=1e-3, correction_basis="ao")
    task = CrystalTask(cfg)
    model_cfg = model_config_for(cfg, ("Si",))
    params = init_params(jax.random.PRNGKey(2), model_cfg)
    system = crystal_structures("si", 1, seed=3)[0]
    (cells,) = task.prepare([system], model_cfg)
    assert cells.arrays.batch.ao_mask.shape[-1] > 26  # the case under test: padded AO slots
    data = cells.take([0])
    Hk, Hq = task.training_hamiltonians(params, data)
    for H_train, kpts in ((Hk, data.ints.kpts), (Hq, data.offmesh.kpts)):
        H, _ = task.hamiltonian(params, model_cfg, system, np.asarray(kpts[0]))
        assert H.shape[-1] == 26
        np.testing.assert_allclose(np.asarray(H_train[0]), H, atol=1e-12, rtol=0)
    unfiltered, _ = task.training_hamiltonians(params, data.replace(G=None))
    assert np.abs(np.asarray(unfiltered - Hk)).max() > 1e-6  # the filter acts on this cell
    # lowdin (the default of new runs): training rebuilds S^1/2 g(S) from the stored g(S), whose
    # eigenvalues near 1 cost digits at this τ (8.5e-11 Eh measured); prediction builds it from S
    lowdin = CrystalTask(dataclasses.replace(cfg, correction_basis="lowdin"))
    for H_train, kpts in zip(lowdin.training_hamiltonians(params, data), (data.ints.kpts, data.offmesh.kpts)):
        H, _ = lowdin.hamiltonian(params, model_cfg, system, np.asarray(kpts[0]))
        np.testing.assert_allclose(np.asarray(H_train[0]), H, atol=1e-9, rtol=0)
    with pytest.raises(InputError, match="H\\(k\\), not H\\(R\\)"):
        task.real_space(params, model_cfg, system)
    for basis, band_weight in (("orthonormal", 0.0), ("window", 3000.0)):  # for such bases' nearly dependent directions
        loss_weights = dataclasses.replace(task.config.loss, band_energy=band_weight)
        windowed = CrystalTask(dataclasses.replace(task.config, self_consistency_basis=basis, loss=loss_weights))
        loss_and_grad = jax.jit(jax.value_and_grad(lambda p: windowed.batch_terms(p, data)[0].sum()))
        compiled = loss_and_grad.lower(params).compile()  # compiled once: run and inspected
        loss, grad = compiled(params)
        assert np.isfinite(float(loss)) and all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grad))
        # no batched eigh, whose CPU kernel deadlocked the window residual's step (solvers.eigen.eigh)
        assert not batched_eigh_calls(compiled.as_text())


def _filtered_si_cell(**settings):
    """(task, model config, initial parameters, system, prepared data) of one gth-szv Si cell
    with the overlap filter at τ = 0.3 (which acts on it), LDA, no off-mesh points."""
    cfg = make_config("crystal", xc="lda,vwn", kmesh=(2, 1, 1), mesh=SMALL_MESH, baseline="sap", overlap_filter=0.3,
                      offmesh_self_consistency=False, **settings)
    system = crystal_structures("si", 1, seed=4)[0]
    task = CrystalTask(CrystalTask(cfg).resolve([system]))
    model_cfg = model_config_for(task.config, ("Si",))
    params = init_params(jax.random.PRNGKey(3), model_cfg)
    (cells,) = task.prepare([system], model_cfg)
    return task, model_cfg, params, system, cells.take([0])


def test_the_lowdin_correction_is_s_half_g_dh_g_s_half_in_training_and_prediction():
    """With ``correction_basis="lowdin"`` the H(k) the loss sees is H_base + L ΔH L, L =
    S(k)^{1/2} g(S(k)) built here with SciPy from the cell's overlap, ΔH the network's
    unfiltered Bloch sum; prediction returns the same H(k), and the ao basis another one."""
    from scipy.linalg import sqrtm

    from solvers.eigen import overlap_filter

    task, model_cfg, params, system, data = _filtered_si_cell(correction_basis="lowdin")
    cfg = task.config
    Hk, _, Hk_raw, _ = task.training_hamiltonians(params, data, unfiltered=True)
    Hk, Hk_raw = np.asarray(Hk[0]), np.asarray(Hk_raw[0])
    H, S = task.hamiltonian(params, model_cfg, system, np.asarray(data.ints.kpts[0]))  # S(k) of the sap blocks
    np.testing.assert_allclose(H, Hk, atol=1e-10)
    H_base = np.asarray(data.h_base[0])
    for k in range(len(S)):
        L = sqrtm(S[k]) @ overlap_filter(S[k], 0.3)
        np.testing.assert_allclose(Hk[k], H_base[k] + L @ (Hk_raw[k] - H_base[k]) @ L, atol=1e-10)
    ao = CrystalTask(dataclasses.replace(cfg, correction_basis="ao"))
    assert np.abs(np.asarray(ao.training_hamiltonians(params, data)[0][0]) - Hk).max() > 1e-4
    with pytest.raises(InputError, match="overlap-filter"):
        make_config("crystal", correction_basis="lowdin")
    with pytest.raises(InputError, match="applies to crystals"):
        make_config("molecule", correction_basis="lowdin")
    with pytest.raises(InputError, match="unknown correction basis"):
        make_config("crystal", overlap_filter=1e-3, correction_basis="loewdin")


def test_new_filtered_crystal_runs_default_to_the_lowdin_correction_and_saved_runs_keep_ao():
    """``make_config`` picks lowdin for a new crystal run with an overlap filter and the fock
    target, unless told otherwise; a config saved without the field reads back as ao."""
    from vardft.config import TrainConfig

    assert make_config("crystal", overlap_filter=1e-3).correction_basis == "lowdin"
    assert make_config("crystal", overlap_filter=1e-3, correction_basis="ao").correction_basis == "ao"
    assert make_config("crystal", overlap_filter=1e-3,
                       self_consistency_target="filtered-fock").correction_basis == "ao"
    assert make_config("crystal").correction_basis == "ao"  # no filter: nothing to choose
    saved = {k: v for k, v in make_config("crystal", overlap_filter=1e-3).to_dict().items() if k != "correction_basis"}
    assert TrainConfig.from_dict(saved).correction_basis == "ao"


@pytest.mark.parametrize("target", ["fock", "filtered-fock"])
def test_filtered_residual_compares_h_with_the_fock_matrix_or_the_filtered_fock_matrix(target):
    """With H = H_base + G ΔH G, the residual the loss reports is G (H − F) G ("fock") or
    H − (H_base + G (F − H_base) G) ("filtered-fock"), F the Fock matrix of H's density,
    each rebuilt here from the loss's H, H_base, G and F."""
    from solvers import periodic
    from vardft.losses import hermitian_density

    task, model_cfg, params, system, data = _filtered_si_cell(self_consistency_basis="ao", self_consistency_target=target,
                                                              correction_basis="ao")
    _, metrics = task.batch_terms(params, data)
    Hk, _, Hk_raw, _ = (np.asarray(h[0]) if h is not None else None
                        for h in task.training_hamiltonians(params, data, unfiltered=True))
    ints = jax.tree.map(lambda a: a[0], data.ints)
    P, _ = hermitian_density(jnp.asarray(Hk), data.X[0], data.mo_mask[0], ints.n_electrons)
    F = np.asarray(periodic.energy_and_fock(P, ints)[2])
    G, H_base = np.asarray(data.G[0]), np.asarray(data.h_base[0])
    filtered_fock = H_base + G @ (F - H_base) @ G
    assert np.abs(Hk - (H_base + G @ (Hk_raw - H_base) @ G)).max() < 1e-12  # H is the filtered correction
    D = G @ (Hk - F) @ G if target == "fock" else Hk - filtered_fock
    expected = np.sqrt(np.mean(np.abs(D) ** 2))
    assert float(metrics["sc_rmse"][0]) == pytest.approx(expected, rel=1e-9)
    other = Hk - filtered_fock if target == "fock" else G @ (Hk - F) @ G
    assert abs(np.sqrt(np.mean(np.abs(other) ** 2)) - expected) > 1e-3 * expected  # the two targets differ here


def test_filtered_fock_target_needs_a_crystal_with_an_overlap_filter():
    with pytest.raises(InputError, match="overlap filter"):
        make_config("crystal", self_consistency_target="filtered-fock")
    with pytest.raises(InputError, match="overlap filter"):
        make_config("molecule", overlap_filter=1e-2, self_consistency_target="filtered-fock")
    with pytest.raises(InputError, match="unknown self-consistency target"):
        make_config("crystal", overlap_filter=1e-3, self_consistency_target="fok")
