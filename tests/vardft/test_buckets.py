"""Size buckets: padded molecules of different compositions in one compiled training step.

Padding (AOs, auxiliary functions, grid points) must change no energy or Fock
matrix, and a traced per-molecule electron count must give the same loss as the
static one.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from basis.integrals import build_integrals
from basis.system import System
from solvers.eigen import canonical_orthogonalizer
from solvers.energy import energy_and_fock
from vardft.config import LossWeights, TrainConfig
from vardft.data import Dataset, IntegralCache, pad_integrals, size_buckets
from vardft.losses import molecule_loss
from vardft.tasks import MIXED_ELECTRONS, MoleculeTask, model_config_for
from vardft.train import step_batch, train

PAD_TOL = 1e-12
"""Hartree: padded and unpadded energies / Fock matrices (float64 round-off only)."""
LOSS_TOL = 1e-10
"""Hartree: per-molecule loss terms in a mixed bucket against the molecule alone."""

BASIS = "sto-3g"
WATER = System(("O", "H", "H"), [[0.0, 0.0, 0.0], [0.0, 0.0, 0.96], [0.93, 0.0, -0.24]])
AMMONIA = System(("N", "H", "H", "H"), [[0.0, 0.0, 0.11], [0.0, 0.94, -0.26], [0.81, -0.47, -0.26], [-0.83, -0.46, -0.26]])
METHANE = System(
    ("C", "H", "H", "H", "H"),
    [[0.0, 0.0, 0.0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63], [-0.63, 0.63, -0.63], [0.65, -0.62, -0.63]],
)
ETHYLENE = System(
    ("C", "C", "H", "H", "H", "H"),
    [[0.0, 0.0, 0.67], [0.0, 0.0, -0.67], [0.0, 0.92, 1.23], [0.0, -0.92, 1.23], [0.0, 0.92, -1.23], [0.0, -0.92, -1.23]],
)
MIXED = (WATER, AMMONIA, METHANE, ETHYLENE)  # 10, 10, 10 and 16 electrons; 7 to 14 AOs
# (methane and ammonia slightly distorted: their baselines need one Fock build, not one per
# frame of a spherical / symmetric top, see basis.frame)

TINY = TrainConfig(
    xc="pbe", basis=BASIS, preset="S", model_overrides=(("num_layers", 1), ("channels", 8)), steps=2, batch_size=4,
    learning_rate=1e-2, warmup_steps=1, checkpoint_every=100, eval_every=100, grid_level=1,
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return IntegralCache(str(tmp_path_factory.mktemp("integrals")))


def _shifted(system: System, dx: float) -> System:
    return system.replace(positions=system.positions + np.array([dx, 0.0, 0.0]) * (np.arange(len(system.symbols))[:, None] == 0))


@pytest.mark.parametrize("xc", ["pbe", "b3lyp"])
def test_padded_energy_and_fock_equal_unpadded(xc):
    ints = build_integrals(WATER, xc=xc, basis=BASIS, grid_level=1)
    n, naux, ngrid = ints.nao, ints.cderi.shape[0], ints.weights.shape[0]
    padded = pad_integrals(ints, n + 3, naux + 5, ngrid + 101)
    assert padded.cderi.shape == (naux + 5, n + 3, n + 3) and padded.ao.shape[1:] == (ngrid + 101, n + 3)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n))
    P = ints.dm_guess + 0.05 * jnp.asarray(a + a.T)
    E, comps, F = energy_and_fock(P, ints)
    Ep, comps_p, Fp = energy_and_fock(jnp.pad(P, [(0, 3), (0, 3)]), padded)
    assert abs(float(Ep - E)) < PAD_TOL
    for c, cp in zip(comps, comps_p):
        assert abs(float(cp - c)) < PAD_TOL
    np.testing.assert_allclose(np.asarray(Fp[:n, :n]), np.asarray(F), rtol=0, atol=PAD_TOL)
    assert np.all(np.asarray(Fp[n:]) == 0.0) and np.all(np.asarray(Fp[:, n:]) == 0.0)


def test_pad_integrals_refuses_to_shrink():
    ints = build_integrals(WATER, xc="pbe", basis=BASIS, grid_level=1)
    with pytest.raises(ValueError):
        pad_integrals(ints, ints.nao, ints.cderi.shape[0] - 1)


def test_size_buckets_group_by_rounded_aos_and_merge_small_buckets():
    # sto-3g AOs: water 7, ammonia 8, methane 9, ethylene 14
    def ids(buckets):
        return [[id(s) for s in b] for b in buckets]

    assert ids(size_buckets(MIXED, BASIS, width=16)) == ids([MIXED])
    assert ids(size_buckets(MIXED, BASIS, width=8)) == ids([[WATER, AMMONIA], [METHANE, ETHYLENE]])
    # a bucket smaller than min_size joins the next one; the last small one joins the largest
    assert ids(size_buckets(MIXED, BASIS, width=8, min_size=3)) == ids([MIXED])
    assert ids(size_buckets(MIXED[::-1], BASIS, width=4, min_size=2)) == ids([[AMMONIA, WATER], [ETHYLENE, METHANE]])
    confs = [_shifted(WATER, 0.01 * k) for k in range(3)]
    assert ids(size_buckets(confs, BASIS, width=1)) == ids([confs])  # one composition, one bucket, order kept


def test_step_batch_is_deterministic_and_proportional():
    b, idx = step_batch(0, 5, [7], 4)
    assert b == 0 and len(idx) == 4 and np.array_equal(idx, step_batch(0, 5, [7], 4)[1])
    picks = [step_batch(3, s, [10, 30], 4)[0] for s in range(400)]
    assert 0.15 < np.mean(np.array(picks) == 0) < 0.35  # bucket 0 holds a quarter of the molecules
    b, idx = step_batch(3, 11, [2, 30], 4)
    assert len(idx) == min(4, [2, 30][b]) and np.all(idx < [2, 30][b])
    assert [step_batch(3, s, [5, 6, 7], 2)[0] for s in range(3)] == [2, 1, 0]  # warm-up: costliest first


def test_no_compilation_after_the_first_pass_through_the_buckets(tmp_path, cache, compilations):
    """Water and ammonia (one bucket) and ethylene (another), and a held-out molecule:
    finite losses, and everything (steps of every bucket, evaluation, batch assembly)
    compiles during the first pass; the steps and the second evaluation after it compile
    nothing."""
    config = dataclasses.replace(TINY, bucket_aos=4, batch_size=2, steps=5, eval_every=2, learning_rate=1.2e-2)
    train_set = tuple(_shifted(m, dx) for m in (WATER, AMMONIA, ETHYLENE) for dx in (0.0, 0.02))  # 7, 8, 14 AOs
    dataset = Dataset("mixed", train_set, (_shifted(WATER, 0.03),))
    compiles: list[int] = []
    result = train(dataset, str(tmp_path / "run"), config, cache=cache, progress=False,
                   on_step=lambda record: compiles.append(compilations[0]))
    assert result.step == 5 and result.skipped_steps == 0 and "val_energy" in result.history[3]
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["energy"]) for r in result.history)
    assert compiles[0] > 0  # the counter sees compilations (the test can fail)
    assert compiles[-1] == compiles[1], compiles  # steps 3-5 and the evaluation at 4: nothing new


def test_mixed_bucket_loss_equals_each_molecule_alone(cache):
    """Padded batch with traced electron counts vs every molecule unpadded with its static count."""
    config = dataclasses.replace(TINY, baseline="minao")
    model_config = model_config_for(config, ["C", "H", "N", "O"])
    data = MoleculeTask(config).prepare_bucket(MIXED, model_config, cache).arrays
    assert data.ints.n_electrons == MIXED_ELECTRONS
    assert np.asarray(data.n_electrons).tolist() == [10, 10, 10, 16]
    weights = LossWeights()
    rng = np.random.default_rng(1)
    n_slots = data.X.shape[1]
    noise = rng.standard_normal((len(MIXED), n_slots, n_slots)) * 0.02
    noise = jnp.asarray(noise + np.swapaxes(noise, 1, 2)) * data.batch.ao_mask[:, :, None] * data.batch.ao_mask[:, None, :]
    H = data.h_base + noise

    def one(H, ints, X, mo_mask, ao_mask, n_electrons):
        return molecule_loss(H, ints, X, mo_mask, ao_mask, weights, n_electrons=n_electrons)

    batched = jax.jit(jax.vmap(one))(H, data.ints, data.X, data.mo_mask, data.batch.ao_mask, data.n_electrons)
    for k, system in enumerate(MIXED):
        ints = cache.get(system, config.xc, BASIS, config.grid_level)
        n = ints.nao
        X = jnp.asarray(canonical_orthogonalizer(np.asarray(ints.overlap)))
        alone = molecule_loss(H[k, :n, :n], ints, X, jnp.ones(X.shape[1], bool), jnp.ones(n, bool), weights)
        for name in ("loss", "energy", "self_consistency_rmse", "self_consistency_mae", "homo", "lumo"):
            assert abs(float(getattr(batched, name)[k]) - float(getattr(alone, name))) < LOSS_TOL, (system.formula, name)
