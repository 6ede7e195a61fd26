"""The fast prediction path (issue 14): the SAP baseline, distillation of the minao Kohn–Sham
matrix, batched prediction, and energies only when asked for."""

import dataclasses
import os
import signal

import h5py
import jax
import numpy as np
import pytest
import scipy.linalg
from pyscf import dft

from basis.errors import InputError
from basis.integrals import make_mean_field
from solvers.eigen import overlap_filter
from vardft.api import load
from vardft.cli import main
from vardft.config import LossWeights, TrainConfig, make_config
from vardft.data import Dataset, IntegralCache, load_dataset
from vardft.tasks import MoleculeTask, model_config_for
from vardft.train import initial_params, step_batch, train
from vardft.testing import assert_equivariant

BASIS = "sto-3g"
CONFIG = TrainConfig(
    xc="pbe", basis=BASIS, preset="S", model_overrides=(("num_layers", 1), ("channels", 8)),
    batch_size=None, learning_rate=1e-2, warmup_steps=1, checkpoint_every=3, eval_every=None, grid_level=1,
    loss=LossWeights(1.0, 300.0, 0.0), baseline="sap", distill_steps=6, steps=2, distill_tolerance=0.0,
)
"""One run's settings for every training in this module (the fixture's compiled steps are
reused): 6 distillation steps, never ended early, then 2 label-free steps."""


@pytest.fixture(scope="module")
def water():
    return load_dataset("water", seed=0, n_train=3, n_validation=2)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return IntegralCache(str(tmp_path_factory.mktemp("integrals")))


@pytest.fixture(scope="module")
def trained(water, cache, tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("run"))
    return run_dir, train(water, run_dir, CONFIG, cache=cache, progress=False)


def _minao_fock(system, grid_level):
    """PySCF's Kohn–Sham matrix of its minao guess density (every grid point kept)."""
    mf = make_mean_field(system, CONFIG.xc, BASIS, grid_level)
    mf.small_rho_cutoff = 0.0
    return mf.get_fock(dm=mf.get_init_guess())


def test_first_distillation_loss_is_the_mean_square_to_pyscf_minao_fock(trained, water):
    """The loss of step 1 (initial parameters) from what prediction returns (its correction
    network scaled to zero) and PySCF's minao Fock matrix: prediction's H is the H training
    optimised, and the target is F[P_minao]."""
    run_dir, result = trained
    model = load(run_dir)
    params = initial_params(CONFIG, model.model_config)
    task = MoleculeTask(dataclasses.replace(model.config, output_scale=0.0))
    _, idx = step_batch(CONFIG.seed, 0, [len(water.train)], CONFIG.batch_size)
    losses, orthonormal = [], []
    for k in idx:
        inside = task.to_frame(water.train[k])[0]
        H = task.hamiltonian(params, model.model_config, inside)
        error = H - _minao_fock(inside, CONFIG.grid_level)
        losses.append(np.mean(error**2))
        orthonormal.append(np.mean(_lowdin(error, inside) ** 2))
    first = result.history[0]
    assert "distill_mae" in first and "energy" not in first
    assert abs(first["loss"] - np.mean(losses)) < 1e-10 * np.mean(losses)
    # the orthonormal-orbital error (any orthonormal basis of the full space: the same mean square)
    assert abs(first["distill_orth_rmse"] - np.sqrt(np.mean(orthonormal))) < 1e-8 * first["distill_orth_rmse"]


def _lowdin(matrix, system):
    """``matrix`` in Löwdin's orthonormal orbitals S^(-1/2) … S^(-1/2) (PySCF's overlap)."""
    s, U = np.linalg.eigh(system.to_mole(BASIS).intor("int1e_ovlp"))
    half = (U / np.sqrt(s)) @ U.T
    return half @ matrix @ half


@pytest.mark.parametrize("basis", ["orthonormal", "both"])
def test_orthonormal_distillation_minimises_the_orthonormal_error(basis, water, cache, tmp_path):
    """``distill_basis="orthonormal"``: the loss is the orthonormal-orbital mean square (the
    metric checked against Löwdin's orbitals above), not the AO one; ``"both"``: their sum."""
    config = dataclasses.replace(CONFIG, distill_basis=basis, distill_steps=1)

    def stop(record):
        os.kill(os.getpid(), signal.SIGTERM)

    first = train(water, str(tmp_path / "run"), config, cache=cache, progress=False, on_step=stop).history[0]
    expected = first["distill_orth_rmse"] ** 2 + (first["distill_rmse"] ** 2 if basis == "both" else 0.0)
    assert abs(first["loss"] - expected) < 1e-12 * first["loss"]
    assert abs(first["loss"] - first["distill_rmse"] ** 2) > 0.1 * first["loss"]
    if basis == "both":  # the AO term is not negligible, so the sum is tested
        assert first["distill_rmse"] ** 2 > 1e-3 * first["loss"]
    with pytest.raises(InputError, match="distillation basis"):
        make_config("molecule", baseline="sap", distill_basis="lowdin")


def test_displaced_copies_join_the_distillation_only(trained, water, cache, tmp_path):
    """``distill_displaced``: the distillation batches are drawn from the training structures
    and their displaced copies (the first loss is the mean over the drawn ones against
    PySCF's minao Fock). The fixture's step settings: its compiled steps are reused."""
    from vardft.data import displaced_copies

    config = dataclasses.replace(CONFIG, distill_displaced=1, batch_size=len(water.train))

    def stop(record):
        os.kill(os.getpid(), signal.SIGTERM)

    result = train(water, str(tmp_path / "run"), config, cache=cache, progress=False, on_step=stop)
    pool = list(water.train) + displaced_copies(water.train, 1, config.seed)
    assert all(np.abs(c.positions - s.positions).max() > 1e-3 for c, s in zip(pool[3:], pool[:3]))
    _, idx = step_batch(config.seed, 0, [len(pool)], config.batch_size)
    assert max(idx) >= len(water.train)  # a copy is drawn (else the test could not fail)
    task = MoleculeTask(dataclasses.replace(config, output_scale=0.0))
    params = initial_params(config, result.model_config)
    losses = []
    for k in idx:
        inside = task.to_frame(pool[k])[0]
        H = task.hamiltonian(params, result.model_config, inside)
        losses.append(np.mean((H - _minao_fock(inside, config.grid_level)) ** 2))
    assert result.step == 1 and abs(result.history[0]["loss"] - np.mean(losses)) < 1e-10 * np.mean(losses)
    # the copies, used by this run only, are not written to the disk cache; the training structures are
    cached = [os.path.exists(cache.path(task.to_frame(s)[0], config.xc, BASIS, config.grid_level)) for s in pool]
    assert cached == [True] * len(water.train) + [False] * (len(pool) - len(water.train))
    with pytest.raises(InputError, match="distillation"):
        make_config("molecule", baseline="minao", distill_displaced=2)


def test_distillation_targets_alone_give_the_loss_of_whole_records(trained, water, cache):
    """``prepare_targets`` (what the host backend distils displaced copies on, without their
    grid and DF arrays) gives the distillation loss and metrics of ``prepare``'s in-memory
    records, molecule by molecule, with a trained distilled network."""
    run_dir, result = trained
    model = load(run_dir)
    task = MoleculeTask(dataclasses.replace(model.config, distill_basis="both", backend="host"))
    whole = task.prepare(water.train, model.model_config, cache)
    alone = task.prepare_targets(water.train, model.model_config, cache)
    assert [len(s) for s in alone] == [len(s) for s in whole] == [len(water.train)]
    idx = np.array([2, 0, 1])
    loss_whole, metrics_whole = task.distill_terms(result.params, whole[0].take(idx))
    loss_alone, metrics_alone = task.distill_terms(result.params, alone[0].take(idx))
    assert np.all(np.asarray(loss_whole) > 0)
    np.testing.assert_allclose(loss_alone, loss_whole, rtol=1e-10)
    for name in metrics_whole:
        np.testing.assert_allclose(metrics_alone[name], metrics_whole[name], rtol=1e-10)


def test_distillation_then_label_free_steps(trained):
    _, result = trained
    phases = ["energy" in r for r in result.history]
    assert phases == [False] * 6 + [True] * 2 and result.skipped_steps == 0
    assert result.history[5]["distill_mae"] < result.history[0]["distill_mae"]


def _stopped_and_resumed(water, run_dir, config, cache, at: int):
    """``(first, resumed)``: a run stopped by SIGTERM after step ``at`` (checkpoint kept), then resumed."""

    def interrupt(record):
        if record["step"] == at:
            os.kill(os.getpid(), signal.SIGTERM)

    first = train(water, run_dir, config, cache=cache, progress=False, on_step=interrupt)
    assert first.interrupted and first.step == at
    return first, train(water, run_dir, config, cache=cache, progress=False, resume=True)


def test_resume_across_the_distillation_boundary_reproduces_losses(trained, water, cache, tmp_path):
    """Stopped (checkpoint) at the last distillation step: the resumed run starts the
    label-free optimizer afresh there, as the uninterrupted run did, and repeats its losses."""
    _, reference = trained
    run_dir = str(tmp_path / "run")
    first, resumed = _stopped_and_resumed(water, run_dir, CONFIG, cache, at=6)
    ref = {r["step"]: r["loss"] for r in reference.history}
    got = {r["step"]: r["loss"] for r in resumed.history}
    assert sorted(got) == [7, 8]
    assert all(got[s] == ref[s] for s in got), (got, ref)
    # the distillation trains only the distilled network, the label-free steps only the correction
    start = initial_params(CONFIG, resumed.model_config)
    same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))  # noqa: E731
    assert same(first.params["correction"], start["correction"])
    assert not same(first.params["distilled"], start["distilled"])
    assert same(resumed.params["distilled"], first.params["distilled"])
    assert not same(resumed.params["correction"], first.params["correction"])


def test_label_free_steps_move_the_distilled_network_at_its_fraction_of_the_rate(trained, water, cache):
    """``distilled_lr_fraction`` f: the label-free steps train the distilled network too, by f
    times the update it would get at f = 1, and leave the correction's updates as at f = 0.
    Step 7 (the first label-free one) is at learning rate 0 (warm-up), so before step 8 the
    runs have equal parameters, and step 8 computes the same gradient in each."""
    _, frozen = trained
    half, whole = (train(water, None, dataclasses.replace(CONFIG, distilled_lr_fraction=f), cache=cache,
                         progress=False) for f in (0.5, 1.0))
    leaves = lambda result, part: jax.tree.leaves(result.params[part])  # noqa: E731
    for a, b, c in zip(leaves(frozen, "correction"), leaves(half, "correction"), leaves(whole, "correction")):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-12)
        np.testing.assert_allclose(c, a, rtol=0, atol=1e-12)
    moved = 0.0
    for a, b, c in zip(leaves(frozen, "distilled"), leaves(half, "distilled"), leaves(whole, "distilled")):
        np.testing.assert_allclose(np.asarray(b) - a, 0.5 * (np.asarray(c) - a), rtol=0, atol=1e-12)
        moved = max(moved, float(np.max(np.abs(np.asarray(c) - a))))
    assert moved > 1e-6
    with pytest.raises(InputError, match="fraction"):
        make_config("molecule", baseline="sap", distilled_lr_fraction=1.5)


def test_stop_after_distillation_then_resume_repeats_the_uninterrupted_run(trained, water, cache, tmp_path):
    _, reference = trained
    run_dir = str(tmp_path / "run")
    first = train(water, run_dir, CONFIG, cache=cache, progress=False, stop_after_distillation=True)
    assert first.step == 6 and not first.interrupted and not any("energy" in r for r in first.history)
    resumed = train(water, run_dir, CONFIG, cache=cache, progress=False, resume=True)
    assert [r["step"] for r in resumed.history] == [7, 8]
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in reference.history[6:]]
    with pytest.raises(InputError, match="no distillation"):
        train(water, None, dataclasses.replace(CONFIG, baseline="minao", distill_steps=None), cache=cache,
              progress=False, stop_after_distillation=True)


def test_distillation_ends_at_its_tolerance_and_resume_ends_it_at_the_same_step(trained, water, cache, tmp_path,
                                                                                  monkeypatch):
    """With a tolerance met at step 4 of 6 (window of 2 batch MAEs), distillation ends there
    and the label-free steps follow; a run stopped at step 3 (its MAE window only in the
    checkpoint) ends at step 4 too and repeats the uninterrupted run's losses. The fixture's
    run (tolerance 0: all 6 distillation steps) gives the MAE trajectory."""
    import vardft.train

    monkeypatch.setattr(vardft.train, "DISTILL_WINDOW", 2)
    mae = [r["distill_mae"] for r in trained[1].history[:6]]
    windows = {k: (mae[k - 2] + mae[k - 1]) / 2 for k in range(2, 7)}
    assert windows[4] < min(windows[2], windows[3])  # the trajectory the test needs
    config = dataclasses.replace(CONFIG, distill_tolerance=windows[4])
    ended = train(water, None, config, cache=cache, progress=False)
    assert ["energy" in r for r in ended.history] == [False] * 4 + [True] * 2 and ended.step == 6
    assert [r["distill_mae"] for r in ended.history[:4]] == mae[:4]

    _, resumed = _stopped_and_resumed(water, str(tmp_path / "run"), config, cache, at=3)
    assert [("energy" in r, r["step"]) for r in resumed.history] == [(False, 4), (True, 5), (True, 6)]
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in ended.history[3:]]


def test_distillation_tolerance_checks_and_older_runs_run_every_step():
    from vardft.config import DISTILL_TOLERANCE, legacy_config

    assert TrainConfig(baseline="sap").distill_tolerance == DISTILL_TOLERANCE
    assert make_config("molecule", baseline="sap").distill_tolerance == 0.0  # the recipe runs every step
    assert make_config("molecule", baseline="sap", distill_tolerance=1e-3).distill_tolerance == 1e-3
    with pytest.raises(InputError, match="tolerance"):
        make_config("molecule", baseline="sap", distill_tolerance=-1e-3)
    with pytest.raises(InputError, match="molecules"):
        make_config("crystal", distill_tolerance=1e-3)
    saved = make_config("molecule", baseline="sap", steps=30).to_dict()
    old = {k: v for k, v in saved.items() if k != "distill_tolerance"}
    assert legacy_config({"kind": "molecule", "train": old}).distill_tolerance == 0.0


def test_predict_many_equals_predict_and_compiles_the_network_once_per_size(trained, water, compilations):
    model = load(trained[0])
    frames = list(water.validation) + list(water.train)
    one = [model.predict(s) for s in frames[:2]]
    many = model.predict_many(frames[:4])  # 4 conformations: one batch shape
    before = compilations[0]
    again = model.predict_many(frames[1:5])
    assert compilations[0] == before
    for a, b in zip(one, many):
        assert np.abs(a.hamiltonian - b.hamiltonian).max() < 1e-12
        assert np.abs(a.mo_energy - b.mo_energy).max() < 1e-12
    assert np.abs(again[0].hamiltonian - many[1].hamiltonian).max() < 1e-12
    assert all(p.energy is None for p in many)


def test_fast_prediction_energy_equals_pyscf_energy_of_its_density(trained, water):
    """``energy=True``: PySCF's DFT energy functional (grid level 3, in the molecule's own
    frame, where the energy is evaluated) of the predicted density."""
    from basis.layout import ao_rotation

    model = load(trained[0])
    system = water.validation[0]
    pred = model.predict(system, energy=True)
    inside, frame = MoleculeTask.to_frame(system)
    D = ao_rotation(BASIS, system.symbols, frame.rotation)
    mol = inside.to_mole(BASIS)
    mf = dft.RKS(mol, xc=CONFIG.xc).density_fit()
    mf.grids.level = 3
    mf.small_rho_cutoff = 0.0
    assert abs(pred.energy - mf.energy_tot(dm=D @ pred.density_matrix @ D.T)) < 1e-8
    S = system.to_mole(BASIS).intor("int1e_ovlp")
    assert abs(np.trace(pred.density_matrix @ S) - mol.nelectron) < 1e-10


def test_filtered_correction_is_the_same_in_training_distillation_and_prediction(water, cache, monkeypatch):
    """``overlap_filter`` on molecules: the H a label-free step's loss sees and the H a
    distillation step compares with F[P_minao] (built from the batch's padded
    orthogonalizers) equal what prediction returns (built from S); the filter acts."""
    config = dataclasses.replace(CONFIG, overlap_filter=0.3, backend="jax")
    task = MoleculeTask(config)
    model_config = model_config_for(config, ("H", "O"))
    params = initial_params(config, model_config)
    params = jax.tree.map(lambda a: a * 3.0, params)  # a correction large enough to see
    (bucket,) = task.prepare(water.train, model_config, cache)
    seen = []
    monkeypatch.setattr(MoleculeTask, "hamiltonian_terms", lambda self, H, data: seen.append(np.asarray(H)) or (None, {}))
    data = bucket.take([2, 0])
    task.batch_terms(params, data)
    distill_mse = np.asarray(task.distill_terms(params, data)[1]["distill_rmse"]) ** 2
    unfiltered = MoleculeTask(dataclasses.replace(config, overlap_filter=0.0))
    distilled_only = MoleculeTask(dataclasses.replace(config, output_scale=0.0))  # the correction network off
    for row, k in enumerate([2, 0]):
        inside = task.to_frame(water.train[k])[0]
        H = task.hamiltonian(params, model_config, inside)
        n = H.shape[0]
        np.testing.assert_allclose(seen[0][row, :n, :n], H, atol=1e-11, rtol=0)
        distilled = distilled_only.hamiltonian(params, model_config, inside)  # what distillation trains
        target = _minao_fock(inside, config.grid_level)
        assert abs(distill_mse[row] - np.mean((distilled - target) ** 2)) < 1e-10 * distill_mse[row]
        assert np.abs(H - unfiltered.hamiltonian(params, model_config, inside)).max() > 1e-4


def test_unfiltered_correction_filters_the_distilled_network_only(water, cache, monkeypatch):
    """``unfiltered_correction``: the H a label-free step sees equals what prediction
    returns, and both equal H_SAP + G D G + ΔH_θ built from single-network predictions
    (filtered distilled network alone; the unfiltered sum minus the unfiltered distilled
    network), unlike the H with both networks filtered."""
    config = dataclasses.replace(CONFIG, overlap_filter=0.3, backend="jax", unfiltered_correction=True)
    task = MoleculeTask(config)
    model_config = model_config_for(config, ("H", "O"))
    params = jax.tree.map(lambda a: a * 3.0, initial_params(config, model_config))
    (bucket,) = task.prepare(water.train, model_config, cache)
    seen = []
    monkeypatch.setattr(MoleculeTask, "hamiltonian_terms", lambda self, H, data: seen.append(np.asarray(H)) or (None, {}))
    task.batch_terms(params, bucket.take([1, 0]))
    plain = dataclasses.replace(config, unfiltered_correction=False)
    both_filtered = MoleculeTask(plain)
    distilled_filtered = MoleculeTask(dataclasses.replace(plain, output_scale=0.0))
    everything_unfiltered = MoleculeTask(dataclasses.replace(plain, overlap_filter=0.0))
    distilled_unfiltered = MoleculeTask(dataclasses.replace(plain, overlap_filter=0.0, output_scale=0.0))
    for row, k in enumerate([1, 0]):
        inside = task.to_frame(water.train[k])[0]
        H = task.hamiltonian(params, model_config, inside)
        n = H.shape[0]
        np.testing.assert_allclose(seen[0][row, :n, :n], H, atol=1e-11, rtol=0)
        correction = (everything_unfiltered.hamiltonian(params, model_config, inside)
                      - distilled_unfiltered.hamiltonian(params, model_config, inside))
        expected = distilled_filtered.hamiltonian(params, model_config, inside) + correction
        np.testing.assert_allclose(H, expected, atol=1e-11, rtol=0)
        assert np.abs(correction).max() > 1e-4
        assert np.abs(H - both_filtered.hamiltonian(params, model_config, inside)).max() > 1e-5


def test_unfiltered_correction_needs_a_distilled_network_and_a_filter():
    """The flag has nothing to act on without both: an InputError, not a silent no-op."""
    with pytest.raises(InputError, match="unfiltered correction"):
        make_config("molecule", baseline="sap", overlap_filter=0.0, unfiltered_correction=True)
    with pytest.raises(InputError, match="unfiltered correction"):
        make_config("molecule", baseline="minao", overlap_filter=0.03, unfiltered_correction=True)
    assert make_config("molecule", baseline="sap", unfiltered_correction=True).unfiltered_correction


@pytest.mark.parametrize("tau", [0.0, 0.3])
def test_orthonormal_self_consistency_penalty_is_the_lowdin_residual_of_pyscf_fock(water, cache, tau):
    """``self_consistency_basis="orthonormal"`` on molecules: the penalty is the mean square
    of H − F[P(H)] in Löwdin's orthonormal orbitals, F from PySCF; with an overlap filter,
    of G (H − F) G with G = g(S) built from PySCF's S (the task builds it from the batch's
    padded orthogonalizers)."""
    config = dataclasses.replace(CONFIG, overlap_filter=tau, backend="jax", self_consistency_basis="orthonormal",
                                 loss=LossWeights(0.0, 1.0, 0.0))
    task = MoleculeTask(config)
    model_config = model_config_for(config, ("H", "O"))
    params = jax.tree.map(lambda a: a * 3.0, initial_params(config, model_config))
    (bucket,) = task.prepare(water.train, model_config, cache)
    penalty = float(task.batch_terms(params, bucket.take([1]))[0][0])
    inside = task.to_frame(water.train[1])[0]
    H = task.hamiltonian(params, model_config, inside)
    mf = make_mean_field(inside, config.xc, BASIS, config.grid_level)
    mf.small_rho_cutoff = 0.0
    S = mf.get_ovlp()
    C = scipy.linalg.eigh(H, S)[1][:, : mf.mol.nelectron // 2]
    residual = H - mf.get_fock(dm=2 * C @ C.T)
    if tau:
        G = overlap_filter(S, tau)
        residual = G @ residual @ G
    expected = np.mean(_lowdin(residual, inside) ** 2)
    assert abs(penalty - expected) < 1e-8 * expected


def test_filtered_distillation_loss_is_the_filtered_difference_to_pyscf_minao_fock(water, cache):
    """``distill_filtered``: the distillation loss (``both``) is the mean square of
    G (H − F[P_minao]) G over AO pairs plus over Löwdin's orbitals, G = g(S) from PySCF's S
    and F from PySCF; the logged metrics stay those of H − F itself."""
    config = dataclasses.replace(CONFIG, overlap_filter=0.3, distill_basis="both", distill_filtered=True)
    task = MoleculeTask(config)
    model_config = model_config_for(config, ("H", "O"))
    params = jax.tree.map(lambda a: a * 3.0, initial_params(config, model_config))
    (bucket,) = task.prepare(water.train, model_config, cache)
    loss, metrics = task.distill_terms(params, bucket.take([1]))
    inside = task.to_frame(water.train[1])[0]
    H = MoleculeTask(dataclasses.replace(config, output_scale=0.0)).hamiltonian(params, model_config, inside)
    error = H - _minao_fock(inside, config.grid_level)
    G = overlap_filter(inside.to_mole(BASIS).intor("int1e_ovlp"), config.overlap_filter)
    expected = np.mean((G @ error @ G) ** 2) + np.mean(_lowdin(G @ error @ G, inside) ** 2)
    assert abs(float(loss[0]) - expected) < 1e-8 * expected
    unfiltered = np.mean(error**2) + np.mean(_lowdin(error, inside) ** 2)
    assert abs(float(loss[0]) - unfiltered) > 1e-3 * unfiltered
    assert abs(float(metrics["distill_rmse"][0]) ** 2 - np.mean(error**2)) < 1e-8 * np.mean(error**2)
    with pytest.raises(InputError, match="overlap-filter"):
        make_config("molecule", baseline="sap", overlap_filter=0.0, distill_filtered=True)
    with pytest.raises(InputError, match="distillation steps"):
        make_config("molecule", baseline="minao", distill_filtered=True, overlap_filter=0.1)


def test_a_filtered_run_trains_through_the_filter(water, cache, tmp_path):
    """End to end: the first distillation loss of a ``train`` run with ``overlap_filter``
    (its compiled step) is the mean square of the filtered H its saved model predicts
    against PySCF's F[P_minao], not that of the unfiltered H."""
    config = dataclasses.replace(CONFIG, overlap_filter=0.3, distill_steps=1)

    def stop(record):
        os.kill(os.getpid(), signal.SIGTERM)

    run_dir = str(tmp_path / "run")
    first = train(water, run_dir, config, cache=cache, progress=False, on_step=stop).history[0]
    model = load(run_dir)
    params = initial_params(config, model.model_config)
    _, idx = step_batch(config.seed, 0, [len(water.train)], config.batch_size)
    errors = {}
    for tau in (0.3, 0.0):
        task = MoleculeTask(dataclasses.replace(model.config, output_scale=0.0, overlap_filter=tau))
        errors[tau] = []
        for k in idx:
            inside = task.to_frame(water.train[k])[0]
            H = task.hamiltonian(params, model.model_config, inside)
            errors[tau].append(np.mean((H - _minao_fock(inside, config.grid_level)) ** 2))
    assert abs(first["loss"] - np.mean(errors[0.3])) < 1e-10 * first["loss"]
    assert abs(first["loss"] - np.mean(errors[0.0])) > 1e-6 * first["loss"]


def test_sap_model_prediction_is_equivariant_to_round_off(tmp_path):
    """No grid anywhere on the fast path: H of a rotated, inverted, shifted and permuted
    molecule transforms exactly (the minao path is limited by the lab-fixed grid's frames)."""
    from ase.build import molecule

    from basis.system import System

    formic = System.from_atoms(molecule("HCOOH"))
    config = dataclasses.replace(make_config("molecule", preset="S", basis="def2-svp", baseline="sap",
                                             distill_steps=0), steps=0)
    data = Dataset("formic", (formic,), ())
    run_dir = str(tmp_path / "run")
    train(data, run_dir, config, progress=False)
    model = load(run_dir)
    errors = assert_equivariant(lambda s: model.predict(s).hamiltonian, formic, basis="def2-svp",
                                ops=("combined",), rtol=1e-10)
    assert max(errors.values()) < 1e-10


def test_cli_predict_writes_energy_only_with_the_flag(trained, water, tmp_path, capsys):
    from ase.io import write

    frames = str(tmp_path / "frames.xyz")
    write(frames, [s.to_atoms() for s in water.validation])
    plain, with_energy = str(tmp_path / "a.h5"), str(tmp_path / "b.h5")
    assert main(["predict", trained[0], frames, "--out", plain]) == 0
    assert main(["predict", trained[0], frames, "--out", with_energy, "--energy"]) == 0
    with h5py.File(plain) as f, h5py.File(with_energy) as g:
        assert "energy" not in f["0"] and "energy" in g["0"]
        assert np.abs(f["1/hamiltonian"][()] - g["1/hamiltonian"][()]).max() == 0.0
    assert "E = " in capsys.readouterr().out


def test_distillation_needs_the_sap_baseline_and_is_for_molecules():
    with pytest.raises(InputError, match="sap"):
        make_config("molecule", baseline="minao", distill_steps=10)
    with pytest.raises(InputError, match="molecules"):
        make_config("crystal", baseline="sap", distill_steps=10)
    crystal = make_config("crystal", baseline="sap")  # the SAD Kohn–Sham matrix: no distillation, minao's scale
    assert crystal.n_distill == 0 and not crystal.frozen_distilled
    assert crystal.delta_scale == make_config("crystal").delta_scale
    sap = make_config("molecule", baseline="sap", steps=300)
    assert sap.n_distill == 400 and sap.total_steps == 700 and sap.frozen_distilled
    assert sap.delta_scale == make_config("molecule", baseline="minao").delta_scale  # the correction: minao's scale
    assert make_config("molecule", baseline="minao").n_distill == 0


def test_sap_molecule_runs_get_the_measured_recipe_unless_told_otherwise():
    from vardft.config import SAP_MOLECULE_RECIPE

    recipe = lambda c: {k: getattr(c, k) for k in SAP_MOLECULE_RECIPE}  # noqa: E731
    assert recipe(make_config("molecule", "water", baseline="sap")) == SAP_MOLECULE_RECIPE
    assert recipe(make_config("molecule", baseline="sap", overlap_filter=0.0, distilled_lr_fraction=0.0)) == {
        **SAP_MOLECULE_RECIPE, "overlap_filter": 0.0, "distilled_lr_fraction": 0.0, "distill_filtered": False}
    plain = TrainConfig()
    for config in (make_config("molecule", baseline="minao"), make_config("crystal", baseline="sap"),
                   make_config("molecule", baseline="sap", distill_target="scf", distill_steps=5, steps=0)):
        assert config.overlap_filter == plain.overlap_filter and config.distill_basis == plain.distill_basis
        assert not config.distill_filtered and config.distill_tolerance == plain.distill_tolerance
        assert config.kind == "crystal" or config.distilled_lr_fraction == plain.distilled_lr_fraction


def test_molecule_runs_default_to_the_fast_path_with_the_measured_distillation():
    """Without flags a molecule run has the SAP baseline (prediction: a forward pass), the
    recipe, 4/3 distillation steps per label-free step, and ethanol's displaced copies;
    flags that leave nothing to distil or filter drop what needs it."""
    from vardft.config import DISTILL_FRACTION, SAP_DATASET_RECIPES, SAP_MOLECULE_RECIPE

    for dataset in ("water", "ethanol", "qm9", None):
        config = make_config("molecule", dataset)
        assert config.baseline == "sap" and config.frozen_distilled
        assert {k: getattr(config, k) for k in SAP_MOLECULE_RECIPE} == SAP_MOLECULE_RECIPE
        extra = SAP_DATASET_RECIPES.get(dataset, {})
        assert config.n_distill == round(extra.get("distill_fraction", DISTILL_FRACTION) * config.steps)
        assert config.distill_displaced == extra.get("distill_displaced", 0)
        assert config.network_dtype == extra.get("network_dtype", "float64")
    assert make_config("molecule", "ethanol").distill_displaced == 10
    assert make_config("molecule", "water").n_distill == 4000
    qm9 = make_config("molecule", "qm9")
    assert qm9.n_distill == 300 and qm9.network_dtype == "float32"  # the measured QM9 run
    assert make_config("molecule", "qm9", distill_steps=7, network_dtype="float64").n_distill == 7
    untrained = make_config("molecule", "ethanol", steps=0)  # nothing to distil: no copies, no filtered loss
    assert untrained.n_distill == 0 and untrained.distill_displaced == 0 and not untrained.distill_filtered
    assert not make_config("molecule", overlap_filter=0.0).distill_filtered
    assert not make_config("molecule", distill_filtered=False).distill_filtered
    minao = make_config("molecule", "ethanol", baseline="minao")
    assert minao.n_distill == 0 and minao.distill_displaced == 0 and minao.overlap_filter == 0.0


def test_saved_runs_keep_their_number_of_distillation_steps(water):
    """A run directory saves the distillation steps it runs; SAP runs saved with them unset
    (before the default became 4/3 of ``steps``) load with a third of their steps."""
    from vardft.config import legacy_config

    resolved = MoleculeTask(make_config("molecule", steps=30)).resolve(water.train)
    assert resolved.distill_steps == 40
    old = {**make_config("molecule", steps=30).to_dict(), "distill_steps": None}
    assert legacy_config({"kind": "molecule", "train": old}).n_distill == 10
    minao = MoleculeTask(make_config("molecule", baseline="minao")).resolve(water.train)
    assert minao.distill_steps is None and minao.n_distill == 0


def test_many_sizes_share_a_few_padded_shapes():
    from vardft.tasks import PREDICT_SHAPES, _shape_groups

    shapes = [(a, 2 * a, 5 * a) for a in (3, 9, 4, 12, 5, 6, 3, 7)]
    groups = _shape_groups(shapes)
    assert len(groups) == PREDICT_SHAPES
    assert sorted(k for _, members in groups for k in members) == list(range(len(shapes)))
    for shape, members in groups:  # every molecule fits its group's padding
        assert all(all(s <= p for s, p in zip(shapes[k], shape)) for k in members)
    assert len(_shape_groups(shapes[:2])) == 2  # few shapes: exact


def test_sap_runs_saved_before_the_frozen_network_load_as_one_network():
    from vardft.config import legacy_config

    saved = {**make_config("molecule", baseline="sap", steps=30).to_dict(), "distill_steps": None}  # as then saved
    old = {k: v for k, v in saved.items() if k != "frozen_distillation"}
    config = legacy_config({"kind": "molecule", "train": old})
    assert not config.frozen_distilled and config.delta_scale == 0.1 and config.n_distill == 10
    assert legacy_config({"kind": "molecule", "train": saved}).frozen_distilled


def test_streamed_distillation_reads_only_baselines_and_targets(trained, water, tmp_path, monkeypatch):
    """With records on disk (the ``"jax"`` backend) the distillation steps repeat the
    in-memory run's losses, and read or pad no whole record (grid, DF factor) for any of
    their batches: each record's baseline, target and orthogonalizer are read once, alone."""
    from vardft import stream

    _, reference = trained
    padded, whole, alone = [], [], []
    real_pad, real_load, real_fields = stream.pad_record, stream.load_record, stream.load_fields
    monkeypatch.setattr(stream, "pad_record", lambda *a, **k: padded.append(1) or real_pad(*a, **k))
    monkeypatch.setattr(stream, "load_record", lambda *a, **k: whole.append(1) or real_load(*a, **k))
    monkeypatch.setattr(stream, "load_fields", lambda *a, **k: alone.append(real_fields(*a, **k)) or alone[-1])
    counts = {}

    def stop(record):  # the last distillation step loads the first label-free batch beside it
        counts[record["step"]] = (len(padded), len(whole))
        if record["step"] == CONFIG.n_distill:
            os.kill(os.getpid(), signal.SIGTERM)

    config = dataclasses.replace(CONFIG, backend="jax", workers=0)
    streamed = train(water, str(tmp_path / "run"), config, cache=IntegralCache(str(tmp_path / "records")),
                     progress=False, on_step=stop)
    assert streamed.step == CONFIG.n_distill and counts[1] == counts[CONFIG.n_distill - 1]
    assert len(alone) == len(water.train) and all(a is not None for a in alone)
    got = [r["loss"] for r in streamed.history]
    want = [r["loss"] for r in reference.history[: CONFIG.n_distill]]
    np.testing.assert_allclose(got, want, rtol=1e-8)
    # a damaged target is caught by its own checksum; the whole record is then read (and rebuilt)
    path = next(str(p) for p in (tmp_path / "records").iterdir() if p.name.endswith(".h5"))
    assert set(stream.load_fields(path, stream.TARGET_FIELDS)) == set(stream.TARGET_FIELDS)
    with h5py.File(path, "r+") as f:
        f[stream.DISTILL_FIELD][0, 0] += 1e-3
    with pytest.warns(UserWarning, match="checksum"):
        assert stream.load_fields(path, stream.TARGET_FIELDS) is None
