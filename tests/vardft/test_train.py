"""Label-free training: it learns, it resumes exactly, and its run directory predicts and validates."""

import dataclasses
import os
import signal

import h5py
import numpy as np
import pytest
from pyscf import dft

from basis.errors import CheckpointError
from vardft.api import load
from vardft.cli import main
from vardft.data import IntegralCache, load_dataset
from vardft.config import LossWeights, TrainConfig
from vardft.train import train
from vardft.validate import frame_metrics

BASIS = "sto-3g"
CONFIG = TrainConfig(
    xc="pbe", basis=BASIS, preset="S", model_overrides=(("num_layers", 1), ("channels", 8)), steps=16, batch_size=4, learning_rate=1e-2, warmup_steps=2,
    checkpoint_every=4, eval_every=8, grid_level=1, loss=LossWeights(1.0, 300.0, 0.0),
)


@pytest.fixture(scope="module")
def water():
    return load_dataset("water", seed=0, n_train=8, n_validation=2)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return IntegralCache(str(tmp_path_factory.mktemp("integrals")))


@pytest.fixture(scope="module")
def trained(water, cache, tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("run"))
    result = train(water, run_dir, CONFIG, cache=cache, progress=False)
    return run_dir, result


def test_training_lowers_energy_and_self_consistency_error(trained):
    _, result = trained
    h = result.history
    assert len(h) == CONFIG.steps and result.skipped_steps == 0
    first = np.mean([r["energy"] for r in h[:3]]), np.mean([r["sc_rmse"] for r in h[:3]])
    last = np.mean([r["energy"] for r in h[-3:]]), np.mean([r["sc_rmse"] for r in h[-3:]])
    assert last[0] < first[0], (first, last)
    assert last[1] < first[1], (first, last)


def test_resume_after_interruption_reproduces_losses(trained, water, cache, tmp_path):
    _, reference = trained
    run_dir = str(tmp_path / "run")

    def interrupt_after_checkpoint(record):
        if record["step"] == 5:  # after the checkpoint at step 4: step 5 is lost
            os.kill(os.getpid(), signal.SIGTERM)

    first = train(water, run_dir, CONFIG, cache=cache, progress=False, on_step=interrupt_after_checkpoint)
    assert first.interrupted and first.step == 5
    resumed = train(water, run_dir, CONFIG, cache=cache, progress=False, resume=True)
    assert resumed.step == CONFIG.steps
    ref = {r["step"]: r["loss"] for r in reference.history}
    got = {r["step"]: r["loss"] for r in resumed.history}
    assert sorted(got) == list(range(6, CONFIG.steps + 1))
    for step, loss in got.items():
        assert loss == ref[step], (step, loss, ref[step])


def test_existing_checkpoint_is_not_overwritten(trained, water, cache):
    run_dir, _ = trained
    with pytest.raises(CheckpointError):
        train(water, run_dir, CONFIG, cache=cache, progress=False)


def test_validate_metrics_match_direct_pyscf(trained, water):
    run_dir, _ = trained
    model = load(run_dir)
    system = water.validation[0]
    H = model.hamiltonian(system)
    m = frame_metrics(system, H, "pbe", BASIS)
    # independent PySCF computation of the same quantities
    mol = system.to_mole(BASIS)
    mf = dft.RKS(mol, xc="pbe").density_fit()
    mf.verbose = 0
    mf.kernel()
    S = mf.get_ovlp()
    eps, C = np.linalg.eigh(np.linalg.inv(np.linalg.cholesky(S)) @ H @ np.linalg.inv(np.linalg.cholesky(S)).T)
    nocc = mol.nelectron // 2
    C = np.linalg.inv(np.linalg.cholesky(S)).T @ C
    P = 2 * C[:, :nocc] @ C[:, :nocc].T
    assert abs(m["energy_pyscf"] - mf.e_tot) < 1e-8
    assert abs(m["energy_error"] - (mf.energy_tot(dm=P) - mf.e_tot)) < 1e-8
    assert m["energy_error"] > -1e-8  # variational
    assert abs(m["hamiltonian_mae"] - np.abs(H - mf.get_fock()).mean()) < 1e-10
    assert abs(m["occupied_energy_mae"] - np.abs(eps[:nocc] - mf.mo_energy[:nocc]).mean()) < 1e-8
    assert abs(m["lumo_error"] - (eps[nocc] - mf.mo_energy[nocc])) < 1e-8
    cos = np.abs(np.sum(C[:, :nocc] * mf.mo_coeff[:, :nocc], axis=0)) / (
        np.linalg.norm(C[:, :nocc], axis=0) * np.linalg.norm(mf.mo_coeff[:, :nocc], axis=0))
    assert abs(m["orbital_cosine"] - cos.mean()) < 1e-6


def test_cli_predict_writes_pyscf_ordered_h5(trained, tmp_path, capsys):
    run_dir, _ = trained
    xyz = tmp_path / "two.xyz"
    xyz.write_text(
        "3\n\nO 0 0 0\nH 0 0 0.96\nH 0.93 0 -0.24\n3\n\nO 0 0 0\nH 0 0 0.99\nH 0.90 0 -0.30\n"
    )
    out = tmp_path / "pred.h5"
    assert main(["predict", run_dir, str(xyz), "--out", str(out), "--energy"]) == 0
    with h5py.File(out) as f:
        assert sorted(f.keys()) == ["0", "1"]
        g = f["1"]
        for name in ("hamiltonian", "overlap", "density_matrix", "mo_energy", "mo_coeff", "energy"):
            assert name in g
        assert g.attrs["basis"] == BASIS and g.attrs["xc"] == "pbe"
        mol = dft.RKS(__import__("pyscf").gto.M(atom="O 0 0 0; H 0 0 0.99; H 0.90 0 -0.30", basis=BASIS)).mol
        np.testing.assert_allclose(g["overlap"][()], mol.intor("int1e_ovlp"), atol=1e-12)
        P = g["density_matrix"][()]
        assert abs(np.trace(P @ g["overlap"][()]) - 10) < 1e-8


def test_cli_errors_for_runs(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "nope"), "H2O"]) == 2
    assert "no such run directory" in capsys.readouterr().err
    assert main(["train", "no-such-dataset", "--out", str(tmp_path / "r")]) == 2
    assert "no such file or built-in dataset" in capsys.readouterr().err


def test_cli_train_zero_steps_writes_a_usable_untrained_model(tmp_path, capsys):
    run_dir = str(tmp_path / "untrained")
    args = ["train", "water", "--out", run_dir, "--steps", "0", "--basis", BASIS, "--preset", "L",
            "--n-train", "2", "--cache", "none", "--quiet"]
    assert main(args) == 0
    assert sorted(os.listdir(run_dir)) == [".lock", "checkpoint.msgpack", "config.json", "vardft-run.json"]
    model = load(run_dir)
    assert model.step == 0 and model.basis == BASIS and model.xc == "pbe"
    pred = model.predict(water_molecule(), energy=True)
    assert pred.hamiltonian.shape == (7, 7) and np.isfinite(pred.energy)
    assert model.predict(water_molecule()).energy is None  # only when asked for
    np.testing.assert_allclose(pred.hamiltonian, pred.hamiltonian.T, atol=1e-14)


def water_molecule():
    from basis.system import System

    return System(("O", "H", "H"), [[0.0, 0.0, 0.0], [0.0, 0.0, 0.96], [0.93, 0.0, -0.24]])


def test_initial_guess_seeds_pyscf(trained, water):
    from vardft import initial_guess

    run_dir, _ = trained
    system = water.validation[1]
    mol = system.to_mole(BASIS)
    dm0 = initial_guess(run_dir, mol)
    assert dm0.shape == (mol.nao, mol.nao)
    assert abs(np.trace(dm0 @ mol.intor("int1e_ovlp")) - mol.nelectron) < 1e-8
    mf = dft.RKS(mol, xc="pbe").density_fit()
    mf.verbose = 0
    e_seeded = mf.kernel(dm0=dm0)
    reference = dft.RKS(mol, xc="pbe").density_fit()
    reference.verbose = 0
    assert mf.converged and abs(e_seeded - reference.kernel()) < 1e-7
    # PySCF's other spellings of the model's basis, per element too; Cartesian AOs refused
    import pyscf

    spelled = pyscf.gto.M(atom=mol.atom, basis={"O": "STO3G", "H": "sto_3g"}, unit="Angstrom")
    np.testing.assert_allclose(initial_guess(run_dir, spelled), dm0, atol=1e-10)
    from basis.errors import InputError

    with pytest.raises(InputError, match="cart=True"):
        initial_guess(run_dir, pyscf.gto.M(atom=mol.atom, basis=BASIS, cart=True, unit="Angstrom"))


def test_resume_with_other_data_is_refused_before_anything_is_written(trained, tmp_path, cache):
    """issue 15: --resume with another dataset used to overwrite config.json and train on."""
    import shutil

    from vardft.data import load_dataset

    run_dir, _ = trained
    copy = str(tmp_path / "run")
    shutil.copytree(run_dir, copy)
    before = {name: open(os.path.join(copy, name), "rb").read() for name in ("config.json", "checkpoint.msgpack")}
    other = load_dataset("ethanol", seed=0, n_train=2, n_validation=1)
    with pytest.raises(CheckpointError, match="other settings"):
        train(other, copy, CONFIG, cache=cache, progress=False, resume=True)
    with pytest.raises(CheckpointError, match="steps"):
        train(load_dataset("water", seed=0, n_train=8, n_validation=2), copy, dataclasses.replace(CONFIG, steps=320),
              cache=cache, progress=False, resume=True)
    after = {name: open(os.path.join(copy, name), "rb").read() for name in before}
    assert after == before


def test_non_finite_learning_rate_is_refused():
    from basis.errors import InputError
    from vardft.config import make_config

    with pytest.raises(InputError, match="learning rate"):
        make_config("molecule", learning_rate=float("nan"))


def test_prediction_outside_the_training_charges_warns(trained):
    """issue 15: a model trained on neutral molecules predicted a dication without a word."""
    run_dir, _ = trained
    model = load(run_dir)
    assert model.record["charges"] == [0]
    with pytest.warns(UserWarning, match="trained on charge"):
        model.predict(water_molecule().replace(charge=2))


def test_float32_network_trains_resumes_and_predicts_in_float64(trained, water, cache, tmp_path):
    """--network-dtype float32: the network's parameters are single precision, everything
    compared with PySCF stays float64, and a resumed run repeats the uninterrupted one."""
    import jax

    config = dataclasses.replace(CONFIG, steps=6, checkpoint_every=3, eval_every=None, network_dtype="float32")
    whole = train(water, str(tmp_path / "whole"), config, cache=cache, progress=False)
    # the same initial parameters, cast: the first loss (before any update) agrees to float32 round-off
    first64 = trained[1].history[0]["loss"]
    assert abs(whole.history[0]["loss"] - first64) <= 1e-4 * abs(first64)
    assert whole.history[0]["loss"] != first64

    run_dir = str(tmp_path / "split")

    def interrupt(record):
        if record["step"] == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    assert train(water, run_dir, config, cache=cache, progress=False, on_step=interrupt).interrupted
    resumed = train(water, run_dir, config, cache=cache, progress=False, resume=True)
    assert resumed.step == config.steps
    ref = {r["step"]: r["loss"] for r in whole.history}
    assert {r["step"]: r["loss"] for r in resumed.history} == {s: ref[s] for s in range(5, config.steps + 1)}

    model = load(run_dir)
    assert {leaf.dtype for leaf in jax.tree.leaves(model.params)} == {np.dtype("float32")}
    pred = model.predict(water_molecule(), energy=True)
    assert pred.hamiltonian.dtype == np.float64 and isinstance(pred.energy, float)
    with pytest.raises(CheckpointError, match="other settings"):
        train(water, run_dir, dataclasses.replace(config, network_dtype="float64"), cache=cache, progress=False,
              resume=True)


@pytest.mark.parametrize("kind", ["molecule", "crystal"])
def test_every_setting_the_step_may_read_is_in_its_cache_key(kind):
    """Runs share a compiled step only when they differ in settings listed as not read by
    it: changing any other setting of the config (one added later included) changes the
    step's cache key, so a run is never trained by the step of another's settings."""
    from vardft.config import default_config
    from vardft.train import STEP_INDEPENDENT, _step_key

    base = default_config(kind)
    changed = {"kind": "crystal" if kind == "molecule" else "molecule",
               "loss": LossWeights(self_consistency=7.0), "model_overrides": (("lmax", 1),), "kmesh": (3, 3, 3),
               "mesh": (9, 9, 9)}
    for field in dataclasses.fields(TrainConfig):
        value = getattr(base, field.name)
        if field.name in changed:
            other = changed[field.name]
        elif isinstance(value, bool):
            other = not value
        elif isinstance(value, (int, float)):
            other = value + 1
        elif value is None:
            other = 3
        else:
            other = value + "x"
        key = _step_key(dataclasses.replace(base, **{field.name: other}))
        assert (key == _step_key(base)) == (field.name in STEP_INDEPENDENT), field.name
