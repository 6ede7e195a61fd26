"""The equivariant Hamiltonian network on random (untrained) parameters.

D(R) comes from basis.layout.ao_rotation, which is built from PySCF's own
Cartesian→spherical coefficients and checked against PySCF AO values and
overlap matrices in tests/basis/test_layout.py (independent of e3nn-jax).
"""

import time

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ase.build import molecule

from basis.system import System, molecules_equal
from vardft.hamiltonian import prepare_batch, unpad
from vardft.model import predict_hamiltonian
from vardft.model import HamiltonianModel, ModelConfig, count_params, init_params
from vardft.testing import MOLECULE_OPERATIONS, assert_equivariant, equivariance_errors, make_transforms

EQUIVARIANCE_RTOL = 1e-10  # relative to max |H|
EQUIVARIANCE_RTOL_FLOAT32 = 1e-4
FLOAT32_VS_FLOAT64_RTOL = 1e-4
FIT_MAE_TOL = 1e-5  # Hartree
ADAM_EPS = 1e-16
FD_STEP = 1e-4  # Bohr
FD_RTOL = 1e-6
ELEMENTS = ("H", "C", "N", "O", "F")

SYMBOLS = ("C", "O", "N", "F", "H", "H")  # all five elements, no symmetry
POSITIONS = np.array(
    [[0.00, 0.00, 0.00], [1.21, 0.05, -0.02], [-0.70, 1.18, 0.10], [-0.75, -1.10, 0.15],
     [-0.20, 2.00, -0.45], [-1.65, 1.10, 0.35]]
)  # Ångström
PERM = [3, 0, 5, 1, 4, 2]


OPS = MOLECULE_OPERATIONS + ("combined",)  # rotation, inversion, rotoinversion, translation, permutation, all at once
SEED = 11
BASE = System(SYMBOLS, POSITIONS)


def _case(basis, dtype="float64"):
    """One batch: a molecule, its transforms, a permutation, water (smaller) and a padding slot."""
    cfg = ModelConfig.preset("S", basis=basis, elements=ELEMENTS, dtype=dtype)
    params = init_params(jax.random.PRNGKey(1), cfg)
    systems = [BASE] + [tr.apply(BASE) for tr in make_transforms(BASE, OPS, SEED)]
    systems.append(System.from_atoms(molecule("H2O")))
    batch = prepare_batch(systems, cfg, batch_size=len(systems) + 1)  # one bucket, one compilation
    return cfg, params, batch, np.asarray(predict_hamiltonian(params, batch))


def _outputs(h_all, batch):
    """vardft.testing's batched fn: the batch's own predictions for the systems it was built from."""
    n = len(OPS) + 1
    built = [tr.apply(BASE) for tr in make_transforms(BASE, OPS, SEED)]

    def fn(systems):
        assert len(systems) == n and all(molecules_equal(a, b, atol=0) for a, b in zip(systems, [BASE] + built))
        return [unpad(h_all, batch, k) for k in range(n)]

    return fn


def _errors(basis, h_all, batch):
    return equivariance_errors(_outputs(h_all, batch), BASE, basis=basis, ops=OPS, seed=SEED, batched=True)


@pytest.fixture(scope="module")
def svp_case():
    return _case("def2-svp")


@pytest.mark.parametrize("basis", ["def2-svp", "def2-tzvp"])
def test_equivariance(basis, request):
    cfg, _, batch, h_all = request.getfixturevalue("svp_case") if basis == "def2-svp" else _case(basis)
    errors = assert_equivariant(_outputs(h_all, batch), BASE, basis=basis, ops=OPS, seed=SEED, batched=True,
                                rtol=EQUIVARIANCE_RTOL)
    print(basis, {k: f"{v:.1e}" for k, v in errors.items()})
    # not trivially equivariant: every atom block and every atom-pair block is non-zero
    h0 = unpad(h_all, batch, 0)
    offsets = np.concatenate([[0], np.cumsum([cfg.layout.element_nao[cfg.layout.elements.index(s)] for s in SYMBOLS])])
    for i in range(len(SYMBOLS)):
        for j in range(len(SYMBOLS)):
            assert np.abs(h0[offsets[i] : offsets[i + 1], offsets[j] : offsets[j + 1]]).max() > 1e-6
    np.testing.assert_allclose(h0, h0.T, atol=0)


def test_float32_option(svp_case):
    _, _, batch, h32_all = _case("def2-svp", dtype="float32")
    errors = _errors("def2-svp", h32_all, batch)
    print("float32", {k: f"{v:.1e}" for k, v in errors.items()})
    assert max(errors.values()) < EQUIVARIANCE_RTOL_FLOAT32
    # same numpy-drawn parameters (cast), so the two precisions compute the same function
    h64_all = svp_case[3]
    rel = np.abs(h32_all - h64_all).max() / np.abs(h64_all).max()
    print(f"float32 vs float64: {rel:.1e}")
    assert h32_all.dtype == np.float64 and rel < FLOAT32_VS_FLOAT64_RTOL


def test_padding(svp_case):
    cfg, _, batch, h = svp_case
    water = len(OPS) + 1
    assert h.shape == (batch.shape[0],) + (batch.shape[3],) * 2 and h.dtype == np.float64
    assert batch.nao[water] == 24 < batch.shape[3]
    assert np.all(h[water, 24:, :] == 0) and np.all(h[water, :, 24:] == 0) and np.all(h[-1] == 0)
    single = prepare_batch([System.from_atoms(molecule("H2O"))], cfg, pad_to=batch.shape[1:])
    np.testing.assert_allclose(unpad(h, batch, water), unpad(predict_hamiltonian(svp_case[1], single), single, 0),
                               atol=1e-13)


def test_position_derivative(svp_case):
    """d H / d positions (forward mode) agrees with central finite differences and has no NaN."""
    _, params, batch, _ = svp_case

    def f(pos):
        return predict_hamiltonian(params, batch.with_positions(pos))

    pos = jnp.asarray(batch.positions)
    direction = jnp.asarray(np.random.default_rng(3).normal(size=pos.shape)) * batch.atom_mask[..., None]
    _, tangent = jax.jvp(f, (pos,), (direction,))
    fd = (f(pos + FD_STEP * direction) - f(pos - FD_STEP * direction)) / (2 * FD_STEP)
    assert np.all(np.isfinite(tangent)) and np.abs(tangent[0]).max() > 0
    np.testing.assert_allclose(tangent, fd, atol=FD_RTOL * np.abs(tangent).max())


def test_one_compilation_per_bucket():
    """Two molecules of one bucket and two conformations reuse one compiled function."""
    cfg = ModelConfig.preset("S", elements=ELEMENTS)
    params = init_params(jax.random.PRNGKey(3), cfg)
    traces = []

    @jax.jit
    def predict(p, batch):
        traces.append(batch.shape)  # runs once per trace, i.e. per compilation
        return HamiltonianModel(cfg).apply(p, batch)

    ethanol = System.from_atoms(molecule("CH3CH2OH"))
    ether = System.from_atoms(molecule("CH3OCH3"))
    moved = ethanol.replace(positions=ethanol.positions + np.random.default_rng(4).normal(scale=0.05, size=(9, 3)))
    batches = [prepare_batch([s], cfg) for s in (ethanol, ether, moved)]
    assert len({b.shape for b in batches}) == 1
    outs = [predict(params, b) for b in batches]
    assert len(traces) == 1
    # the same compiled function also serves new positions given as an array
    predict(params, batches[0].with_positions(batches[2].positions))
    assert len(traces) == 1
    assert not np.allclose(outs[0], outs[2]) and not np.allclose(outs[0], outs[1])


def test_config():
    cfg = ModelConfig.preset("m", basis="DEF2-SVP", elements=["h", "O"], cutoff=5.0)
    assert cfg.basis == "def2-svp" and cfg.elements == ("H", "O") and cfg.cutoff == 5.0
    assert ModelConfig(**cfg.to_dict()) == cfg and hash(cfg) == hash(ModelConfig(**cfg.to_dict()))
    with pytest.raises(ValueError):
        ModelConfig.preset("XL")
    with pytest.raises(ValueError):
        ModelConfig(dtype="float16")
    sizes = [count_params(init_params(jax.random.PRNGKey(0), ModelConfig.preset(p))) for p in "SML"]
    assert sizes[0] < sizes[1] < sizes[2]
    p1 = init_params(jax.random.PRNGKey(0), ModelConfig.preset("S"))
    p2 = init_params(jax.random.PRNGKey(0), ModelConfig.preset("S"))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p2)))
    batch = prepare_batch([System.from_atoms(molecule("H2O"))], ModelConfig.preset("S", elements=("H", "O")))
    with pytest.raises(ValueError):
        HamiltonianModel(cfg).apply(p1, batch)


# ----------------------------------------------------------- supervised fit
READOUT = ("diag", "diag_bias", "offdiag")


@pytest.fixture(scope="module")
def water_fock():
    from pyscf import dft

    water = System.from_atoms(molecule("H2O"))
    mf = dft.RKS(water.to_mole("def2-svp"), xc="pbe").density_fit().run()
    assert mf.converged
    return water, np.asarray(mf.get_fock())


def test_fits_pyscf_fock(water_fock):
    """Expressivity: from random features, the readout weights that minimise the squared
    error (a linear least-squares problem, solved exactly) reproduce the PBE/def2-SVP Fock
    matrix of water to MAE < 1e-5 Eh, checked through the full network."""
    water, fock = water_fock
    cfg = ModelConfig.preset("S", elements=("H", "O"))
    params = init_params(jax.random.PRNGKey(0), cfg)
    batch = prepare_batch([water], cfg)
    t0 = time.perf_counter()
    inner = params["params"]
    rest = {k: v for k, v in inner.items() if k not in READOUT}
    readout, unravel = jax.flatten_util.ravel_pytree({k: inner[k] for k in READOUT})
    iu = np.triu_indices(fock.shape[0])

    def upper(flat):
        return HamiltonianModel(cfg).apply({"params": {**rest, **unravel(flat)}}, batch)[0][iu]

    # H is linear in the readout weights: H(w) = J w
    jac = np.asarray(jax.jit(jax.jacfwd(upper))(jnp.zeros_like(readout)))
    w, *_ = np.linalg.lstsq(jac, fock[iu], rcond=None)
    fitted = {"params": {**rest, **unravel(jnp.asarray(w))}}
    h = unpad(predict_hamiltonian(fitted, batch), batch, 0)
    mae = np.abs(h - fock).mean()
    print(f"least-squares readout: MAE {mae:.2e} Eh, max {np.abs(h - fock).max():.2e} Eh, "
          f"{time.perf_counter() - t0:.1f} s, {readout.size} readout weights")
    assert mae < FIT_MAE_TOL


@pytest.mark.slow
def test_adam_training_reduces_fock_error(water_fock):
    """Plain gradient training of all weights on the same label (Adam): the error falls fast.

    Measured: with a 4000-step warmup-cosine schedule the same setup reaches MAE 1.05e-5 Eh."""
    water, fock = water_fock
    cfg = ModelConfig.preset("S", elements=("H", "O"))
    params = init_params(jax.random.PRNGKey(0), cfg)
    batch = prepare_batch([water], cfg)
    target = jnp.asarray(fock)[None]
    steps = 300
    # Fock errors of ~1e-5 Eh give gradients far below Adam's default eps = 1e-8
    opt = optax.adam(optax.warmup_cosine_decay_schedule(0.0, 1e-2, 20, steps, 1e-4), eps=ADAM_EPS)
    state = opt.init(params)

    @jax.jit
    def step(p, s):
        loss, g = jax.value_and_grad(lambda q: jnp.mean((predict_hamiltonian(q, batch) - target) ** 2))(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    mae0 = float(jnp.abs(predict_hamiltonian(params, batch) - target).mean())
    t0 = time.perf_counter()
    for _ in range(steps):
        params, state, _ = step(params, state)
    mae = float(jnp.abs(predict_hamiltonian(params, batch) - target).mean())
    print(f"Adam {steps} steps: MAE {mae0:.2e} -> {mae:.2e} Eh in {time.perf_counter() - t0:.1f} s")
    assert mae < mae0 / 50
