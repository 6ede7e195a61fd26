"""Label-free training on crystals: the model predicts H(R), the loss is the periodic energy.

For one crystal with predicted real-space blocks H(R) (:func:`vardft.hamiltonian.predict_hamiltonian`
on a periodic batch) and the integrals of its k-mesh (:class:`basis.pbc_integrals.PeriodicIntegrals`):

    H(k)  = Σ_R e^{ik·T_R} H(R)                           (Bloch sum, PySCF convention)
    P(k)  = 2 Σ_{n occ} C_n(k) C_n(k)†,   H(k) C = S(k) C ε (n_electrons/2 bands per k)
    L     = w_E · E[{P(k)}]  +  w_SC · mean_k,μν |H(k) − F(k)[sg P]|²

E is the KS energy per cell of :mod:`solvers.periodic` (Hartree) and F(k) = ∂E/∂P(k) its
Fock matrices. As for molecules (:mod:`vardft.losses`), one Fock evaluation serves both
terms: the energy's gradient comes from the surrogate Σ_k w_k Re tr(sg F(k) P(k)).

The complex Hermitian eigenproblem is solved through its real embedding
[[Re H, −Im H], [Im H, Re H]] (every level twice) with the molecular solver
:func:`solvers.eigen.solve_hamiltonian`, whose VJP uses occupied–virtual pairs only:
gradients stay finite at the degenerate valence-band tops of Si (Γ). Occupations are
those of an insulator (the same number of bands at every k).

Example:
    >>> from vardft.train_crystal import CrystalTrainConfig, crystal_dataset, train_crystal
    >>> cfg = CrystalTrainConfig(steps=2, mesh=(9, 9, 9))
    >>> result = train_crystal(crystal_dataset("si", 2, seed=0), cfg)   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from basis.crystal import read_crystal
from basis.pbc_integrals import PeriodicIntegrals, build_periodic_integrals, make_periodic_mean_field
from basis.system import System
from solvers.eigen import pad_orthogonalizer, solve_hamiltonian
from solvers.periodic import LINDEP_THRESHOLD, energy_and_fock
from vardft.hamiltonian import Batch, bloch_sum_batch, prepare_batch, predict_hamiltonian

__all__ = [
    "CrystalTrainConfig",
    "CrystalSet",
    "CrystalTrainResult",
    "crystal_dataset",
    "prepare_crystal_set",
    "hermitian_density",
    "crystal_loss_terms",
    "train_crystal",
    "predict_bands",
]

sg = jax.lax.stop_gradient

DISPLACEMENT_ANGSTROM = 0.05
"""Standard deviation of the random atomic displacements of :func:`crystal_dataset`."""

STRAIN = 0.01
"""Standard deviation of the random symmetric strain of :func:`crystal_dataset`."""


@dataclasses.dataclass(frozen=True)
class CrystalTrainConfig:
    """Everything about a crystal training run.

    Attributes:
        xc, basis, pseudo: level of theory (PySCF names; ``pseudo=None``: matches ``xc``).
        kmesh: Γ-centred k-mesh of the training energy.
        mesh: FFT mesh (``None``: PySCF's default for the undistorted first structure;
            every structure uses the same mesh so that one compiled step serves all).
        preset, cutoff: model size preset and cutoff (Å).
        steps, learning_rate: Adam steps and step size.
        energy_weight, self_consistency_weight: loss weights (Eh, Eh²).
        output_scale: H(R) = output_scale × network output, Hartree.
        seed: parameter initialisation.
    """

    xc: str = "pbe"
    basis: str = "gth-szv"
    pseudo: str | None = None
    kmesh: tuple[int, int, int] = (2, 2, 2)
    mesh: tuple[int, int, int] | None = None
    preset: str = "S"
    cutoff: float = 5.0
    steps: int = 100
    learning_rate: float = 3e-3
    energy_weight: float = 1.0
    self_consistency_weight: float = 30.0
    output_scale: float = 0.1
    seed: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CrystalTrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        for key in ("kmesh", "mesh"):
            if d.get(key) is not None:
                d[key] = tuple(int(v) for v in d[key])
        return cls(**d)

    def model_config(self, elements: Sequence[str]):
        from vardft.model import ModelConfig

        return ModelConfig.preset(self.preset, basis=self.basis, elements=tuple(elements), cutoff=self.cutoff)


# ------------------------------------------------------------------- data
def crystal_dataset(
    name: str = "si",
    n: int = 4,
    seed: int = 0,
    displacement: float = DISPLACEMENT_ANGSTROM,
    strain: float = STRAIN,
) -> list[System]:
    """Displaced and strained copies of a built-in crystal, deterministic for a seed.

    Args:
        name: ``"si"``, ``"diamond"`` or ``"hbn"``.
        n: number of structures.
        seed: numpy seed.
        displacement: Gaussian atomic displacements, standard deviation in Å.
        strain: symmetric strain ε with entries of this standard deviation;
            cell and positions are multiplied by (1 + ε) (in-plane only for ``hbn``).
    """
    base = read_crystal(name)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(int(n)):
        eps = rng.normal(scale=strain, size=(3, 3))
        eps = 0.5 * (eps + eps.T)
        if name.strip().lower() == "hbn":
            eps[2, :] = eps[:, 2] = 0.0
        deform = np.eye(3) + eps
        pos = base.positions @ deform + rng.normal(scale=displacement, size=base.positions.shape)
        out.append(System(base.symbols, pos, cell=base.cell @ deform))
    return out


def _embed(A):
    """Real embedding [[Re A, −Im A], [Im A, Re A]] of complex (..., n, m) matrices."""
    top = jnp.concatenate([A.real, -A.imag], axis=-1)
    bottom = jnp.concatenate([A.imag, A.real], axis=-1)
    return jnp.concatenate([top, bottom], axis=-2)


def _real_orthogonalizers(S: np.ndarray, nao_pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Real embeddings of canonical orthogonalizers X(k) of S(k) (numpy), padded.

    Returns ``X`` (nk, 2N, 2N) and ``mo_mask`` (nk, 2N) in the layout of
    :func:`solvers.eigen.pad_orthogonalizer`.
    """
    Xs, masks = [], []
    for Sk in np.asarray(S):
        s, U = np.linalg.eigh(0.5 * (Sk + Sk.conj().T))
        keep = s > LINDEP_THRESHOLD
        X = U[:, keep] / np.sqrt(s[keep])
        Xr = np.asarray(_embed(jnp.asarray(X)))
        Xp, m = pad_orthogonalizer(Xr, 2 * nao_pad, 2 * nao_pad)
        Xs.append(Xp)
        masks.append(m)
    return np.stack(Xs), np.stack(masks)


@flax.struct.dataclass
class CrystalSet:
    """Crystals with their periodic graph and integrals, stacked on a leading axis B.

    Attributes:
        batch: periodic :class:`~vardft.hamiltonian.Batch` (B crystals).
        ints: :class:`PeriodicIntegrals` stacked over B (same mesh, k-mesh, basis).
        X: (B, nk, 2N, 2N) real-embedded orthogonalizers of S(k).
        mo_mask: (B, nk, 2N) real columns of X.
    """

    batch: Batch
    ints: PeriodicIntegrals
    X: Any
    mo_mask: Any

    def __len__(self) -> int:
        return int(self.X.shape[0])


def _default_mesh(system: System, cfg: CrystalTrainConfig) -> tuple[int, int, int]:
    mf = make_periodic_mean_field(system, cfg.xc, cfg.basis, cfg.pseudo, cfg.kmesh, None)
    return tuple(int(v) for v in mf.cell.mesh)


def prepare_crystal_set(systems: Sequence[System], model_config, cfg: CrystalTrainConfig, mesh=None) -> CrystalSet:
    """Graphs, integrals and orthogonalizers of ``systems`` (numpy/PySCF; outside jit)."""
    systems = [System.from_any(s) for s in systems]
    mesh = tuple(mesh or cfg.mesh or _default_mesh(systems[0], cfg))
    batch = prepare_batch(systems, model_config)
    ints = [build_periodic_integrals(s, cfg.xc, cfg.basis, cfg.pseudo, cfg.kmesh, mesh) for s in systems]
    n_pad = batch.ao_mask.shape[1]
    if any(i.nao != n_pad for i in ints):
        raise ValueError("crystals of one set must have the same atoms (same number of AOs)")
    XM = [_real_orthogonalizers(np.asarray(i.overlap), n_pad) for i in ints]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *ints)
    return CrystalSet(
        batch=batch,
        ints=stacked,
        X=jnp.asarray(np.stack([x for x, _ in XM])),
        mo_mask=jnp.asarray(np.stack([m for _, m in XM])),
    )


# ------------------------------------------------------------------- loss
def hermitian_density(Hk, X, mo_mask, n_electrons: int):
    """Density matrices and band energies of an insulator from H(k), with safe gradients.

    Args:
        Hk: (nk, N, N) complex Hermitian H(k), Hartree.
        X: (nk, 2N, 2N) real-embedded orthogonalizers (:func:`prepare_crystal_set`).
        mo_mask: (nk, 2N) real columns of ``X``.
        n_electrons: electrons per cell (static, even).

    Returns:
        P (nk, N, N) complex128, PySCF's ``dm_kpts`` (Σ_k w_k tr P S = n_electrons);
        ε (nk, N) band energies, ascending, Hartree.
    """
    n = Hk.shape[-1]
    res = jax.vmap(lambda h, x, m: solve_hamiltonian(h, x, 2 * n_electrons, mo_mask=m))(_embed(Hk), X, mo_mask)
    D = res.density
    P = D[:, :n, :n] + 1j * D[:, n:, :n]
    return P, res.mo_energy[:, ::2]


class CrystalTerms(flax.struct.PyTreeNode):
    """Per-crystal loss terms (shapes ()), Hartree."""

    loss: Any
    energy: Any  # E per cell of the density of H(k)
    self_consistency_rmse: Any  # sqrt(mean |H(k) − F(k)|²)


def crystal_loss_terms(Hk, ints: PeriodicIntegrals, X, mo_mask, cfg: CrystalTrainConfig) -> CrystalTerms:
    """Loss of one crystal from its H(k) (nk, N, N) at the k-points of ``ints`` (unstacked)."""
    nao = ints.nao
    Hk = Hk[:, :nao, :nao]
    P, _ = hermitian_density(Hk, X, mo_mask, ints.n_electrons)
    E, _, F = energy_and_fock(sg(P), ints)
    F = sg(F)
    surrogate = jnp.sum(ints.kweights * jnp.einsum("kij,kji->k", F, P).real)
    mse = jnp.mean(jnp.abs(Hk - F) ** 2)
    loss = cfg.energy_weight * (sg(E) + surrogate - sg(surrogate)) + cfg.self_consistency_weight * mse
    return CrystalTerms(loss=loss, energy=E, self_consistency_rmse=jnp.sqrt(sg(mse)))


def _set_terms(params, data: CrystalSet, cfg: CrystalTrainConfig) -> CrystalTerms:
    H_R = cfg.output_scale * predict_hamiltonian(params, data.batch)
    Hk = bloch_sum_batch(H_R, data.batch, data.ints.kpts)
    return jax.vmap(lambda h, i, x, m: crystal_loss_terms(h, i, x, m, cfg))(Hk, data.ints, data.X, data.mo_mask)


# ----------------------------------------------------------------- training
@dataclasses.dataclass
class CrystalTrainResult:
    """Parameters and the per-step history (energy per cell, self-consistency RMSE, Hartree)."""

    params: Any
    model_config: Any
    config: CrystalTrainConfig
    history: list[dict]
    seconds: float


def train_crystal(
    systems: Sequence[System],
    cfg: CrystalTrainConfig,
    run_dir: str | None = None,
    log=None,
) -> CrystalTrainResult:
    """Label-free Adam training on crystals (all in every step).

    Args:
        systems: crystals with the same atoms (e.g. :func:`crystal_dataset`).
        cfg: :class:`CrystalTrainConfig`.
        run_dir: if given, ``config.json`` and ``checkpoint.msgpack`` (params) are written
            there (loadable by :func:`load_crystal_model`).
        log: optional callable taking one dict per step.
    """
    from vardft.model import init_params

    elements = tuple(dict.fromkeys(s for sys_ in systems for s in System.from_any(sys_).symbols))
    model_cfg = cfg.model_config(elements)
    data = prepare_crystal_set(systems, model_cfg, cfg)
    params = init_params(jax.random.PRNGKey(cfg.seed), model_cfg)
    opt = optax.adam(cfg.learning_rate)
    opt_state = opt.init(params)

    def loss_fn(p):
        terms = _set_terms(p, data, cfg)
        return jnp.mean(terms.loss), terms

    @jax.jit
    def step(p, s):
        (loss, terms), g = jax.value_and_grad(loss_fn, has_aux=True)(p)
        updates, s = opt.update(g, s, p)
        return optax.apply_updates(p, updates), s, loss, terms

    history = []
    t0 = time.perf_counter()
    for k in range(cfg.steps):
        params, opt_state, loss, terms = step(params, opt_state)
        rec = {
            "step": k,
            "loss": float(loss),
            "energy": float(jnp.mean(terms.energy)),
            "sc_rmse": float(jnp.sqrt(jnp.mean(terms.self_consistency_rmse**2))),
            "seconds": time.perf_counter() - t0,
        }
        history.append(rec)
        if log is not None:
            log(rec)
    seconds = time.perf_counter() - t0
    if run_dir is not None:
        save_crystal_model(run_dir, params, model_cfg, cfg)
    return CrystalTrainResult(params, model_cfg, cfg, history, seconds)


# ------------------------------------------------------------ run directories
def save_crystal_model(run_dir: str, params, model_cfg, cfg: CrystalTrainConfig) -> None:
    """Write ``config.json`` (kind ``crystal``) and the parameters to ``run_dir``."""
    from vardft.checkpoint import save_checkpoint, save_config

    os.makedirs(run_dir, exist_ok=True)
    save_config(run_dir, {"kind": "crystal", "model": model_cfg.to_dict(), "train": cfg.to_dict()})
    save_checkpoint(run_dir, {"params": params})


def load_crystal_model(run_dir: str):
    """``(params, model_config, train_config)`` of a crystal run directory.

    Raises:
        CheckpointError: not a vardft run directory, or not a crystal model.
    """
    from vardft.checkpoint import load_checkpoint, load_config
    from basis.errors import CheckpointError
    from vardft.model import ModelConfig, init_params

    conf = load_config(run_dir)
    if conf.get("kind") != "crystal":
        raise CheckpointError(f"{run_dir} holds a molecular model; band structures need a crystal model")
    m = dict(conf["model"])
    m["elements"] = tuple(m["elements"])
    model_cfg = ModelConfig(**m)
    cfg = CrystalTrainConfig.from_dict(conf["train"])
    template = {"params": init_params(jax.random.PRNGKey(0), model_cfg)}
    params = load_checkpoint(run_dir, template)["params"]
    return params, model_cfg, cfg


def predict_bands(params, model_cfg, system: System, kpts, output_scale: float, overlap_k) -> np.ndarray:
    """Band energies (nk, nmo), Hartree, of the predicted H(k) with S(k) at Cartesian ``kpts``.

    Args:
        overlap_k: (nk, nao, nao) S(k) at the same k-points (e.g. ``cell.pbc_intor``).
    """
    from solvers.periodic import generalized_eigh

    batch = prepare_batch([system], model_cfg)
    H_R = output_scale * predict_hamiltonian(params, batch)
    nao = int(np.asarray(batch.nao)[0])
    Hk = bloch_sum_batch(H_R, batch, jnp.asarray(kpts))[0][:, :nao, :nao]
    e, _ = generalized_eigh(Hk, jnp.asarray(overlap_k))
    return np.asarray(e)
