"""Label-free training on crystals: complex density with safe gradients, a short run, bands --model."""

import dataclasses
import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from basis.crystal import read_crystal
from basis.pbc_integrals import build_band_integrals, build_periodic_integrals
from basis.errors import InputError
from vardft.api import load
from vardft.cli import main
from vardft.config import make_config
from vardft.data import Dataset, IntegralCache, crystal_structures
from vardft.losses import BAND_MIXING_WIDTH, hermitian_density, orthonormal_mse, window_residuals
from vardft.tasks import CrystalTask, offmesh_kpts, real_orthogonalizers
from vardft.train import train

DENSITY_TOL = 1e-10
FD_STEP = 1e-6
FD_RTOL = 1e-5
SMALL_MESH = (9, 9, 9)
CONFIG = make_config("crystal", xc="lda,vwn", mesh=SMALL_MESH, steps=4, learning_rate=1e-2, baseline="minao")


def si_set(n, seed):
    """``n`` displaced, strained Si cells as a training set (no held-out structures)."""
    return Dataset("si", tuple(crystal_structures("si", n, seed=seed)), (), kind="crystal")


@pytest.fixture(scope="module")
def si_ints():
    """Perfect Si: threefold-degenerate valence-band top at Γ."""
    return build_periodic_integrals(read_crystal("si"), "lda,vwn", "gth-szv", None, (2, 2, 2), SMALL_MESH)


def test_hermitian_density_matches_numpy_and_has_finite_gradients(si_ints):
    ints = si_ints
    H = np.asarray(ints.hcore)
    S = np.asarray(ints.overlap)
    X, mask = real_orthogonalizers(S, ints.nao)
    P, eps = hermitian_density(jnp.asarray(H), X, mask, ints.n_electrons)
    nocc = ints.n_electrons // 2
    for k in range(ints.nkpts):
        e, C = scipy.linalg.eigh(H[k], S[k])
        assert np.abs(np.asarray(eps[k]) - e).max() < DENSITY_TOL
        ref = 2 * C[:, :nocc] @ C[:, :nocc].conj().T
        assert np.abs(np.asarray(P[k]) - ref).max() < DENSITY_TOL
    w = np.asarray(ints.kweights)
    assert abs(np.sum(w * np.einsum("kij,kji->k", np.asarray(P), S).real) - ints.n_electrons) < DENSITY_TOL

    # gradient of a real function of P(H) through the degenerate Γ point: finite, equal to FD
    A = jnp.asarray(np.random.default_rng(0).normal(size=H.shape) + 1j * np.random.default_rng(1).normal(size=H.shape))
    A = A + jnp.conj(jnp.swapaxes(A, 1, 2))

    def f(h):
        p, _ = hermitian_density(h, X, mask, ints.n_electrons)
        return jnp.sum(jnp.einsum("kij,kji->k", p, A).real)

    g = jax.grad(f)(jnp.asarray(H))
    assert np.all(np.isfinite(np.asarray(g)))
    d = np.random.default_rng(2).normal(size=H.shape) + 1j * np.random.default_rng(3).normal(size=H.shape)
    d = jnp.asarray(d + np.conj(np.swapaxes(d, 1, 2)))
    fd = (f(jnp.asarray(H) + FD_STEP * d) - f(jnp.asarray(H) - FD_STEP * d)) / (2 * FD_STEP)
    analytic = jnp.sum(jnp.real(g * d))  # jax.grad of real f(z): ∂f/∂Re z − i ∂f/∂Im z
    assert abs(float(analytic) - float(fd)) < FD_RTOL * abs(float(fd))


def test_crystal_structures_are_deterministic():
    a, b = crystal_structures("si", 2, seed=3), crystal_structures("si", 2, seed=3)
    assert np.array_equal(a[1].positions, b[1].positions) and np.array_equal(a[1].cell, b[1].cell)
    assert not np.array_equal(a[0].cell, a[1].cell)


@pytest.fixture(scope="module")
def trained_si(tmp_path_factory):
    """A 4-step run on two Si cells (shared: training compiles once for this module's config)."""
    run_dir = str(tmp_path_factory.mktemp("si") / "run")
    return run_dir, train(si_set(2, 0), run_dir, CONFIG, progress=False)


def test_training_lowers_the_energy_and_bands_from_the_model(trained_si, capsys):
    run_dir, result = trained_si
    energies = [h["energy"] for h in result.history]
    assert all(np.isfinite(energies))
    assert energies[-1] < energies[0]
    model = load(run_dir)
    cfg = model.config
    assert model.kind == "crystal" and cfg == result.config and model.model_config == result.model_config
    assert cfg.mesh == SMALL_MESH and cfg.pseudo == "gth-pade" and cfg.baseline == "minao"
    assert main(["bands", "si", "--model", run_dir, "--path", "GX", "--npoints", "3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    bands = np.asarray(data["bands_ev"])
    assert bands.shape == (3, 8) and np.all(np.isfinite(bands))
    assert (data["xc"], data["basis"], data["pseudo"]) == ("lda,vwn", "gth-szv", "gth-pade")
    assert data["fermi_ev"] == pytest.approx(bands[:, 3].max())


def test_orthonormal_residual_is_the_lowdin_basis_frobenius_norm(si_ints):
    """X†DX with the padded real-embedded canonical X equals S^-1/2 D S^-1/2 (any orthonormal basis)."""
    S = np.asarray(si_ints.overlap)
    rng = np.random.default_rng(4)
    D = rng.normal(size=S.shape) + 1j * rng.normal(size=S.shape)
    D = D + np.conj(np.swapaxes(D, 1, 2))
    X, mask = real_orthogonalizers(S, si_ints.nao)
    expected = []
    for k in range(S.shape[0]):
        s_half_inv = scipy.linalg.fractional_matrix_power(S[k], -0.5)
        expected.append(np.mean(np.abs(s_half_inv @ D[k] @ s_half_inv) ** 2))
    got = float(orthonormal_mse(jnp.asarray(D), jnp.asarray(X), jnp.asarray(mask)))
    assert got == pytest.approx(np.mean(expected), rel=1e-10)
    assert got > 2 * float(np.mean(np.abs(D) ** 2))  # S(k) eigenvalues < 1 amplify: the AO norm understates


def test_window_residual_is_the_residual_among_the_lowest_bands_of_h(si_ints):
    """The "window" residual is mean |C†DC|² over the n lowest S-orthonormal eigenvectors C of
    H(k) (from scipy's generalized solver here); over all bands it is the orthonormal one."""
    S = np.asarray(si_ints.overlap)
    rng = np.random.default_rng(5)

    def hermitian():
        A = rng.normal(size=S.shape) + 1j * rng.normal(size=S.shape)
        return A + np.conj(np.swapaxes(A, 1, 2))

    H, D = hermitian(), hermitian()
    X, mask = (jnp.asarray(a) for a in real_orthogonalizers(S, si_ints.nao))
    for n in (3, 5):
        expected = []
        for k in range(S.shape[0]):
            C = scipy.linalg.eigh(H[k], S[k])[1][:, :n]
            expected.append(np.mean(np.abs(C.conj().T @ D[k] @ C) ** 2))
        got = float(window_residuals(jnp.asarray(D), jnp.asarray(H), X, mask, n).pairs)
        assert got == pytest.approx(np.mean(expected), rel=1e-10)
    every = float(window_residuals(jnp.asarray(D), jnp.asarray(H), X, mask, si_ints.nao).pairs)
    assert every == pytest.approx(float(orthonormal_mse(jnp.asarray(D), X, mask)), rel=1e-10)
    with pytest.raises(InputError, match="for crystals"):
        make_config("molecule", self_consistency_basis="window")


def test_band_residual_is_the_first_order_band_error_and_basis_free_in_degenerate_sets(si_ints):
    """``bands`` is the mean of squared first-order band shifts (C†DC)_ii for isolated bands, the
    squared eigenvalues of the block of a degenerate set (built here with a triple level, as Si
    at Γ), and c² for a rigid shift D = cS, which the mean over pairs divides by n."""
    S = np.asarray(si_ints.overlap)
    nk, nao = S.shape[:2]
    rng = np.random.default_rng(6)
    levels = np.array([-0.5, -0.2, -0.2, -0.2, 0.1, 0.3, 0.6, 0.9])[:nao]
    H, C0 = np.empty_like(S), np.empty_like(S)
    for k in range(nk):
        U = scipy.linalg.qr(rng.normal(size=(nao, nao)) + 1j * rng.normal(size=(nao, nao)))[0]
        C0[k] = scipy.linalg.fractional_matrix_power(S[k], -0.5) @ U  # S-orthonormal eigenvectors
        H[k] = S[k] @ C0[k] @ np.diag(levels) @ C0[k].conj().T @ S[k]
    A = rng.normal(size=S.shape) + 1j * rng.normal(size=S.shape)
    D = 0.01 * (A + np.conj(np.swapaxes(A, 1, 2)))
    X, mask = (jnp.asarray(a) for a in real_orthogonalizers(S, nao))
    n = 6  # the triple set and two isolated bands above it
    expected = []
    for k in range(nk):
        R = C0[k][:, :n].conj().T @ D[k] @ C0[k][:, :n]
        shifts = np.concatenate([[R[0, 0].real], np.linalg.eigvalsh(R[1:4, 1:4]), [R[4, 4].real, R[5, 5].real]])
        expected.append(np.mean(shifts**2))
    got = window_residuals(jnp.asarray(D), jnp.asarray(H), X, mask, n)
    assert BAND_MIXING_WIDTH < 0.2 / 4  # sets 0.2 Eh or more apart: weight below exp(-16) between them
    assert float(got.bands) == pytest.approx(np.mean(expected), rel=1e-6)
    rigid = window_residuals(jnp.asarray(0.02 * S), jnp.asarray(H), X, mask, n)
    assert float(rigid.bands) == pytest.approx(0.02**2, rel=1e-10)
    assert float(rigid.pairs) == pytest.approx(0.02**2 / n, rel=1e-10)
    with pytest.raises(InputError, match="applies to crystals"):
        make_config("molecule", band_energy=1.0)  # not a molecule setting
    with pytest.raises(InputError, match="band-energy weight"):
        make_config("crystal", band_energy=-1.0)


@pytest.mark.slow  # 36 s; the one training loop resumes bit for bit in tests/vardft/test_train.py
def test_minibatch_resume_continues_exactly(tmp_path):
    """Batches of 2 of 3 crystals, drawn per step: 2 steps + resume 2 = 4 steps in one go."""
    systems = si_set(3, 1)
    cfg = dataclasses.replace(CONFIG, steps=4, batch_size=2, checkpoint_every=1)
    straight = train(systems, None, cfg, progress=False)
    run_dir = str(tmp_path / "run")

    def interrupt(record):
        if record["step"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    first = train(systems, run_dir, cfg, on_step=interrupt, progress=False)
    assert first.interrupted and first.step == 2
    resumed = train(systems, run_dir, cfg, resume=True, progress=False)
    assert resumed.step == 4
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history[2:]]
    for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    everything = train(systems, None, dataclasses.replace(cfg, batch_size=None, steps=1), progress=False)
    assert everything.history[0]["loss"] != straight.history[0]["loss"]  # a batch is a subset


@pytest.mark.parametrize("bad", [{"batch_size": 0}, {"self_consistency_basis": "mo"}])
def test_bad_training_options_raise_input_error(bad):
    with pytest.raises(InputError):
        train(si_set(1, 0), None, dataclasses.replace(CONFIG, **bad), progress=False)


def test_offmesh_fock_is_the_fock_of_pyscf_get_bands():
    """F(q) from a converged KRKS density at the half-shifted mesh: get_bands' eigenvalues."""
    from pyscf.pbc import dft as pbcdft

    from basis.crystal import scaled_kpts, to_cell
    from basis.pbc_integrals import periodic_integrals_from_mean_field
    from vardft.losses import offmesh_fock

    system = crystal_structures("si", 1, seed=2)[0]
    cfg = dataclasses.replace(CONFIG, xc="pbe", pseudo="gth-pbe", kmesh=(2, 2, 2))
    cell = to_cell(system, basis=cfg.basis, pseudo=cfg.pseudo, mesh=SMALL_MESH)
    mf = pbcdft.KRKS(cell, cell.make_kpts(cfg.kmesh), xc="pbe")
    mf.conv_tol = 1e-11
    mf.kernel()
    ints = periodic_integrals_from_mean_field(mf)
    q = offmesh_kpts(cell, cfg.kmesh)
    frac = scaled_kpts(cell, q)
    # one of each pair q, −q: with their partners, the whole half-shifted 2×2×2 mesh
    both = np.round(np.concatenate([frac, (-frac) % 1.0]), 12)
    assert len(q) == 4 and len(np.unique(both, axis=0)) == 8
    assert np.allclose(np.sort(np.unique(both)), [0.25, 0.75])
    task = CrystalTask(cfg)
    off = task._offmesh(system, ints, ints.nao, task.baseline_potential(ints))
    F = np.asarray(offmesh_fock(jnp.asarray(np.asarray(mf.make_rdm1())), ints, off))
    ref = np.asarray(mf.get_bands(q)[0])
    S = np.asarray(cell.pbc_intor("int1e_ovlp", hermi=1, kpts=q))
    for k in range(len(q)):
        e = scipy.linalg.eigh(F[k], S[k], eigvals_only=True)
        assert np.abs(e - ref[k]).max() < 1e-8


def test_runs_saved_before_the_new_loss_options_load_with_their_old_loss(trained_si, tmp_path):
    """A config.json without the newer keys resumes with the loss it was trained with."""
    import shutil

    run_dir = str(tmp_path / "run")
    shutil.copytree(trained_si[0], run_dir)
    path = os.path.join(run_dir, "config.json")
    with open(path) as f:
        conf = json.load(f)
    # the layout of a crystal run before molecules and crystals shared one config
    old = {k: v for k, v in conf["train"].items() if k not in ("kind", "loss", "weight_decay", "grid_level", "bucket_aos",
                                                                 "self_consistency_basis", "offmesh_self_consistency",
                                                                 "batch_size", "model_overrides", "eval_every")}
    old.update(energy_weight=1.0, self_consistency_weight=3000.0, dataset="si", n_train=2)
    conf["train"] = old
    with open(path, "w") as f:
        json.dump(conf, f)
    cfg = load(run_dir).config
    assert (cfg.self_consistency_basis, cfg.offmesh_self_consistency, cfg.batch_size) == ("ao", False, None)
    assert cfg.loss.self_consistency == 3000.0 and cfg.kind == "crystal"


def test_bloch_aos_are_read_from_the_cache_one_batch_at_a_time(trained_si, tmp_path):
    """With a cache directory the prepared set holds no Bloch AOs: a batch reads exactly
    its cells' arrays (or recomputes them when the cache has no room), equal to the
    integrals' own, and training is the in-memory run's bit for bit; a memory budget holds
    the records that fit in it, which are then never read from disk again."""
    systems = si_set(3, 1).train
    task = CrystalTask(CrystalTask(CONFIG).resolve(systems))
    model_config = trained_si[1].model_config
    (stored,) = task.prepare(systems, model_config, IntegralCache(str(tmp_path / "cache"), memory_bytes=0))
    assert stored.arrays.ints.ao is None and stored.arrays.offmesh.ao is None and not stored.store.memory
    assert len([f for f in os.listdir(tmp_path / "cache") if f.startswith("bloch-")]) == len(systems)
    batch = stored.take([2, 0])
    assert (stored.store.read, stored.store.rebuilt) == (2, 0)
    c = task.config
    own = build_periodic_integrals(systems[2], c.xc, c.basis, c.pseudo, c.kmesh, c.mesh)
    np.testing.assert_array_equal(np.asarray(batch.ints.ao[0]), np.asarray(own.ao))
    assert batch.offmesh.ao.shape[:2] == (2, 4)  # 8 half-shifted points, one of each ±q pair

    (bounded,) = task.prepare(systems[:1], model_config, IntegralCache(str(tmp_path / "small"), max_bytes=1000,
                                                                   memory_bytes=0))
    assert not os.listdir(tmp_path / "small")
    again = bounded.take([0, 0])
    assert bounded.store.rebuilt == 1
    np.testing.assert_array_equal(np.asarray(again.ints.ao[1]), np.asarray(stored.take([0]).ints.ao[0]))

    # a memory budget for two of the three records: those two are never read from disk again
    budget = 2 * stored.records([0])[0].nbytes
    (held,) = task.prepare(systems, model_config, IntegralCache(str(tmp_path / "cache"), memory_bytes=budget))
    assert len(held.store.resident) == 2 and held.store.resident.held_bytes <= budget
    for a, b in zip(jax.tree.leaves(held.take([2, 0, 1])), jax.tree.leaves(stored.take([2, 0, 1]))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    held.take([1, 2])
    assert held.store.read == 2  # cell 2, twice

    (in_memory,) = task.prepare(systems, model_config)
    assert len(in_memory.store.memory) == len(systems)
    for a, b in zip(jax.tree.leaves(in_memory.take([1, 2])), jax.tree.leaves(stored.take([1, 2]))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    cached = train(si_set(2, 0), None, CONFIG, cache=IntegralCache(str(tmp_path / "cache")), progress=False)
    assert [h["loss"] for h in cached.history] == [h["loss"] for h in trained_si[1].history]


def test_the_loss_on_half_of_the_offmesh_points_is_the_loss_on_all(si_ints):
    """Off-mesh self-consistency keeps one of each ±q pair (issue 13: half the Bloch AOs
    and the work): the loss and its gradient equal those over all 8 half-shifted points."""
    from basis.crystal import absolute_kpts, scaled_kpts, to_cell
    from vardft.losses import LossWeights, crystal_loss

    ints = si_ints
    task = CrystalTask(dataclasses.replace(CONFIG, kmesh=(2, 2, 2), pseudo="gth-pade"))
    system = read_crystal("si")
    cell = to_cell(system, basis="gth-szv", pseudo="gth-pade", mesh=SMALL_MESH)
    half = offmesh_kpts(cell, (2, 2, 2))
    frac = scaled_kpts(cell, half)
    every = absolute_kpts(cell, np.concatenate([frac, (-frac) % 1.0]))
    v = task.baseline_potential(ints)

    def offmesh(q):
        off = task._offmesh(system, ints, ints.nao, v)
        band = build_band_integrals(cell, q, ints.functional, mesh=ints.mesh)
        X, mask = real_orthogonalizers(np.asarray(band.overlap), ints.nao)
        return off.replace(kpts=band.kpts, hcore=band.hcore, ao=band.ao, X=jnp.asarray(X), mo_mask=jnp.asarray(mask),
                           h_base=task.baseline(band, v))

    X, mask = real_orthogonalizers(np.asarray(ints.overlap), ints.nao)
    rng = np.random.default_rng(5)
    dH = rng.normal(scale=0.02, size=(ints.nao, ints.nao))
    dH = jnp.asarray(dH + dH.T)

    def loss(scale, off):
        Hk = task.baseline(ints, v) + scale * dH
        Hq = off.h_base + scale * dH
        return crystal_loss(Hk, ints, jnp.asarray(X), jnp.asarray(mask), LossWeights(self_consistency=3000.0),
                            "orthonormal", Hq, off).loss

    a, b = offmesh(half), offmesh(every)
    assert a.kpts.shape[0] == 4 and b.kpts.shape[0] == 8
    assert float(loss(1.0, a)) == pytest.approx(float(loss(1.0, b)), rel=1e-13)
    assert float(jax.grad(loss)(1.0, a)) == pytest.approx(float(jax.grad(loss)(1.0, b)), rel=1e-10)


def test_cells_one_pass_at_a_time_train_as_the_vectorised_batch(trained_si):
    """``cells_per_pass=1`` (each cell's loss rematerialised in turn, for large meshes)
    changes the memory of a step, not its numbers: the same 4 steps as the vectorised run."""
    from vardft.train import _step_key

    config = dataclasses.replace(CONFIG, cells_per_pass=1)
    assert _step_key(config).cells_per_pass == 1  # a compiled step of its own
    one_at_a_time = train(si_set(2, 0), None, config, progress=False)
    np.testing.assert_allclose([h["loss"] for h in one_at_a_time.history],
                               [h["loss"] for h in trained_si[1].history], rtol=1e-12, atol=0)
    for a, b in zip(jax.tree.leaves(one_at_a_time.params), jax.tree.leaves(trained_si[1].params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)
