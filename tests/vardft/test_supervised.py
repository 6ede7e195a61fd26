"""The supervised comparison of issue 12: distillation steps whose target is PySCF's converged
Kohn–Sham matrix (``distill_target="scf"``), in memory and from streamed records."""

import dataclasses

import numpy as np
import pytest

from basis.errors import InputError
from basis.integrals import make_mean_field
from vardft.api import load
from vardft.config import LossWeights, TrainConfig, make_config
from vardft.data import IntegralCache, load_dataset
from vardft.tasks import MoleculeTask
from vardft.train import initial_params, step_batch, train

CONFIG = TrainConfig(
    xc="pbe", basis="sto-3g", preset="S", model_overrides=(("num_layers", 1), ("channels", 8)), steps=0,
    batch_size=None, learning_rate=1e-2, warmup_steps=1, checkpoint_every=3, eval_every=None, grid_level=1,
    loss=LossWeights(1.0, 300.0, 0.0), baseline="minao", distill_steps=3, distill_target="scf",
)


@pytest.fixture(scope="module")
def water():
    return load_dataset("water", seed=0, n_train=2, n_validation=1)


def _scf_fock(system):
    """PySCF's converged Kohn–Sham matrix of the run's level of theory on its whole grid (an
    independent SCF, tighter than the labels')."""
    mf = make_mean_field(system, CONFIG.xc, CONFIG.basis, CONFIG.grid_level)
    mf.small_rho_cutoff = 0.0
    mf.conv_tol = 1e-11
    mf.kernel()
    assert mf.converged
    return mf.get_fock()


@pytest.mark.parametrize("backend", ["host", "jax"])
def test_first_supervised_loss_is_the_mean_square_to_pyscf_converged_fock(water, backend, tmp_path):
    """Step 1's loss (initial parameters) from what prediction returns and PySCF's converged
    Fock matrix: the labels are the SCF's, in memory and in the records alike, and the model
    is one network on the run's own baseline."""
    config = dataclasses.replace(CONFIG, backend=backend)
    run_dir = str(tmp_path / "run")
    result = train(water, run_dir, config, cache=IntegralCache(str(tmp_path / "cache")), progress=False)
    model = load(run_dir)
    assert not model.config.frozen_distilled and result.step == 3
    params = initial_params(config, model.model_config)
    task = MoleculeTask(model.config)
    _, idx = step_batch(config.seed, 0, [len(water.train)], config.batch_size)
    losses = []
    for k in idx:
        inside = task.to_frame(water.train[k])[0]
        H = task.hamiltonian(params, model.model_config, inside)
        losses.append(np.mean((H - _scf_fock(inside)) ** 2))
    first = result.history[0]
    assert "distill_mae" in first and "energy" not in first
    assert abs(first["loss"] - np.mean(losses)) < 1e-7 * np.mean(losses)  # SCF labels converged to ~1e-8 Eh
    assert result.history[-1]["loss"] < first["loss"]  # step 1 is the warm-up's zero learning rate


def test_supervised_labels_need_distillation_steps_and_molecules():
    with pytest.raises(InputError, match="--distill-steps"):
        make_config("molecule", distill_target="scf")
    with pytest.raises(InputError, match="distill_target applies to molecules"):
        make_config("crystal", distill_target="scf", distill_steps=3)
    with pytest.raises(InputError, match="unknown distillation target"):
        make_config("molecule", distill_target="dft", distill_steps=3)
    supervised = make_config("molecule", baseline="sap", distill_target="scf", distill_steps=30, steps=0)
    assert supervised.total_steps == 30 and not supervised.frozen_distilled  # one network, labels only
