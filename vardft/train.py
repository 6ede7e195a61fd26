"""Label-free training of the Hamiltonian network (library; the CLI is thin).

:func:`train` takes a :class:`TrainConfig`, a dataset and a run directory,
and returns the trained parameters. Everything that defines a run lives in
``RUN_DIR/config.json``; parameters and optimizer state are checkpointed
atomically every ``checkpoint_every`` steps, at the end, and on Ctrl-C /
SIGTERM. ``resume=True`` continues from the checkpoint and reproduces the
losses of an uninterrupted run: the data order of step ``s`` depends only on
``(seed, s)``.

The predicted Hamiltonian is ``H = H_base + ΔH_θ``: ``H_base`` is the Fock
matrix of PySCF's minao guess density (``baseline="minao"``, one Fock build
per geometry, no SCF) or zero (``baseline="none"``), and the network learns
the rest. Both are exactly equivariant.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct as flax_struct

from basis.errors import CheckpointError, InputError
from basis.integrals import Integrals
from basis.system import System
from solvers.eigen import canonical_orthogonalizer, pad_orthogonalizer
from solvers.energy import energy_and_fock
from vardft import checkpoint as ckpt
from vardft.data import Dataset, IntegralCache, check_dataset
from vardft.losses import LossWeights, molecule_loss

BASELINES = ("minao", "none")

TRAIN_GRID_LEVEL = 1
"""PySCF grid level of the training energy. Measured on water PBE/def2-SVP at the
converged density: level 1 has 10,128 points (level 3: 33,704) and changes the Fock
matrix by 1.7 μEh MAE (134 μEh max), far below the accuracy targets, for a 3× cheaper
step. Validation and prediction energies always use level 3."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything about a training run except the model architecture.

    Attributes:
        xc, basis: level of theory (PySCF names).
        preset: model size preset, "S", "M" or "L".
        model_overrides: ((field, value), ...) applied on top of the preset.
        steps: optimizer steps.
        batch_size: molecules per step.
        learning_rate: peak learning rate (after linear warm-up; cosine decay after).
        warmup_steps: linear warm-up length.
        final_lr_fraction: learning rate at the last step / peak.
        weight_decay: AdamW decoupled weight decay.
        adam_eps: Adam's ε. Gradients of μEh-level errors are far below optax's
            default 1e-8, which then stalls training (measured on a water Fock fit).
        grad_clip: global gradient-norm clip.
        loss: weights of the loss terms.
        baseline: "minao" (H = F[P_minao] + ΔH) or "none" (H = ΔH).
        output_scale: ΔH = output_scale × network output, Hartree (the network's
            outputs start at O(1); the baseline is already within ~0.02 Eh).
        grid_level: PySCF grid level of the training energy (validation always uses 3).
        seed: parameter initialisation and data order.
        checkpoint_every: steps between checkpoints.
        eval_every: steps between label-free validation (energy, self-consistency).
        max_minutes: stop (with a checkpoint) after this much wall time; None = no limit.
        bucket_aos: width (in AOs) of a size bucket: molecules whose AO counts
            round up to the same multiple share one padded, compiled step (a
            bucket with fewer than ``batch_size`` molecules joins the next larger).
    """

    xc: str = "pbe"
    basis: str = "def2-svp"
    preset: str = "L"
    model_overrides: tuple = ()
    steps: int = 3000
    batch_size: int = 8
    learning_rate: float = 1e-2
    warmup_steps: int = 50
    final_lr_fraction: float = 0.01
    weight_decay: float = 0.0
    adam_eps: float = 1e-16
    grad_clip: float = 10.0
    loss: LossWeights = LossWeights()
    baseline: str = "minao"
    output_scale: float = 0.01
    grid_level: int = TRAIN_GRID_LEVEL
    seed: int = 0
    checkpoint_every: int = 100
    eval_every: int = 100
    max_minutes: float | None = None
    bucket_aos: int = 16

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        d["loss"] = LossWeights(**d.get("loss", {}))
        d["model_overrides"] = tuple(tuple(kv) for kv in d.get("model_overrides", ()))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# ------------------------------------------------------------------ data
@flax_struct.dataclass
class SetArrays:
    """Arrays of the ``n`` molecules of one size bucket, stacked on axis 0 (a pytree).

    Molecules may differ in composition: every axis is zero-padded to the
    bucket's largest (AOs ``N``, auxiliary functions, grid points), which
    changes no energy or Fock matrix (see :func:`pad_integrals`).

    Attributes:
        batch: :class:`vardft.hamiltonian.Batch` of all molecules (model input).
        ints: stacked :class:`Integrals`, padded to ``N`` AOs, ``naux`` and
            ``ngrid``. Its static ``n_electrons`` is the molecules' common count,
            or -1 when they differ (use the ``n_electrons`` field).
        X: (n, N, N) padded orthogonalizers.
        mo_mask: (n, N) real columns of X.
        h_base: (n, N, N) baseline Hamiltonians, Hartree.
        n_electrons: (n,) int32 electrons per molecule (traced in the step).
    """

    batch: Any
    ints: Integrals
    X: jax.Array
    mo_mask: jax.Array
    h_base: jax.Array
    n_electrons: jax.Array


MIXED_ELECTRONS = -1
"""Static ``Integrals.n_electrons`` of a stacked bucket whose molecules differ in
electron count: any code that reads the static count instead of
``SetArrays.n_electrons`` then fails loudly (``solve_hamiltonian`` rejects it)."""


@dataclasses.dataclass
class PreparedSet:
    """Systems of one size bucket and their stacked arrays."""

    systems: tuple[System, ...]
    arrays: SetArrays

    def __len__(self) -> int:
        return len(self.systems)


def pad_integrals(ints: Integrals, nao: int, naux: int | None = None, ngrid: int | None = None) -> Integrals:
    """Zero-pad ``ints`` to ``nao`` AOs, ``naux`` auxiliary functions and ``ngrid`` grid points.

    Padded AOs carry no density (their rows/columns of S, h, L and AO values are
    zero); padded auxiliary functions are zero rows of the DF factor L
    (nothing in J or K); padded grid points have zero AO values and zero
    weight (zero density: libxc returns zero energy density and potentials).
    The energy and Fock matrix of a padded density equal the unpadded ones.
    ``naux`` / ``ngrid`` of ``None`` keep the molecule's own.
    """
    p = nao - ints.nao
    q = 0 if naux is None else naux - ints.cderi.shape[0]
    r = 0 if ngrid is None else ngrid - ints.weights.shape[0]
    if min(p, q, r) < 0:
        raise ValueError(
            f"cannot pad integrals of shape (nao {ints.nao}, naux {ints.cderi.shape[0]}, "
            f"ngrid {ints.weights.shape[0]}) down to ({nao}, {naux}, {ngrid})"
        )
    if p == q == r == 0:
        return ints
    pad2 = lambda a: jnp.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, p), (0, p)])  # noqa: E731
    return ints.replace(
        overlap=pad2(ints.overlap),
        hcore=pad2(ints.hcore),
        cderi=jnp.pad(ints.cderi, [(0, q), (0, p), (0, p)]),
        ao=jnp.pad(ints.ao, [(0, 0), (0, r), (0, p)]),
        weights=jnp.pad(ints.weights, [(0, r)]),
        dm_guess=pad2(ints.dm_guess),
    )


_fock_of = jax.jit(lambda P, ints: energy_and_fock(P, ints)[2])


def baseline_hamiltonian(ints: Integrals, baseline: str) -> jax.Array:
    """(nao, nao) H_base for one molecule, Hartree."""
    if baseline == "minao":
        return _fock_of(ints.dm_guess, ints)
    if baseline == "none":
        return jnp.zeros_like(ints.overlap)
    raise InputError(f"unknown baseline {baseline!r}; choose from {', '.join(BASELINES)}")


def _bucket_integrals(systems: Sequence[System], config: TrainConfig, cache: IntegralCache, progress: bool):
    """Shapes of every molecule's integrals and a loader, without holding them all at once.

    Returns ``(shapes, load)``: ``shapes[k] = (naux, ngrid, n_electrons)`` and
    ``load(k)`` the :class:`Integrals` of ``systems[k]``. With a disk cache the
    integrals are built (or found) here and reloaded one at a time by ``load``,
    so a bucket never holds all its unpadded integrals in memory.
    """
    from tqdm.auto import tqdm

    args = (config.xc, config.basis, config.grid_level)
    kept, shapes = [], []
    for s in tqdm(systems, desc="integrals", unit="mol", disable=not progress, leave=False):
        ints = cache.get(s, *args)
        shapes.append((ints.cderi.shape[0], ints.weights.shape[0], ints.n_electrons))
        if cache.directory is None:
            kept.append(ints)
    if cache.directory is None:
        return shapes, kept.__getitem__
    return shapes, lambda k: cache.get(systems[k], *args)


_STACKED_FIELDS = ("overlap", "hcore", "cderi", "ao", "weights", "e_nuc", "dm_guess")


def prepare_set(
    systems: Sequence[System],
    model_config,
    config: TrainConfig,
    cache: IntegralCache,
    pad_to: tuple[int, int, int] | None = None,
    progress: bool = False,
) -> PreparedSet:
    """Integrals, orthogonalizers, baselines and model inputs of one size bucket.

    The molecules may differ in composition; every array is zero-padded to the
    bucket's largest (:func:`pad_integrals`). Molecules of one composition
    (conformations) are stacked without any padding beyond the model's AO slots.
    """
    from vardft.hamiltonian import prepare_batch

    batch = prepare_batch(list(systems), model_config, pad_to=pad_to)
    n_slots = batch.ao_mask.shape[1]
    shapes, load = _bucket_integrals(systems, config, cache, progress)
    naux = max(sh[0] for sh in shapes)
    ngrid = max(sh[1] for sh in shapes)
    electrons = np.array([sh[2] for sh in shapes], np.int32)
    static_electrons = int(electrons[0]) if np.all(electrons == electrons[0]) else MIXED_ELECTRONS
    n = len(systems)
    stacked: dict[str, np.ndarray] = {}
    xs, masks, bases, auxbases = [], [], [], []
    template = None
    for k in range(n):
        ints = load(k)
        X, mask = pad_orthogonalizer(canonical_orthogonalizer(np.asarray(ints.overlap)), n_slots, n_slots)
        # baseline from the AO-unpadded integrals (conformations of one composition: exactly as unbatched)
        own_aos = pad_integrals(ints, ints.nao, naux, ngrid).replace(n_electrons=static_electrons)
        base = np.asarray(baseline_hamiltonian(own_aos, config.baseline))
        bases.append(np.pad(base, [(0, n_slots - base.shape[0])] * 2))
        padded = pad_integrals(own_aos, n_slots)
        if template is None:
            template = padded
        elif (padded.basis, padded.functional, padded.grid_level) != (
            template.basis, template.functional, template.grid_level
        ):
            raise InputError(f"{systems[k].formula}: integrals built with other settings than {systems[0].formula}")
        auxbases.append(padded.auxbasis)
        for name in _STACKED_FIELDS:
            a = np.asarray(getattr(padded, name))
            if name not in stacked:
                stacked[name] = np.zeros((n,) + a.shape, a.dtype)
            stacked[name][k] = a
        xs.append(X)
        masks.append(mask)
        del ints, own_aos, padded
    fields = {}
    for name in _STACKED_FIELDS:  # one field at a time: the numpy and JAX copies never coexist in full
        fields[name] = jnp.asarray(stacked.pop(name))
    arrays = SetArrays(
        batch=batch,
        ints=template.replace(**fields, auxbasis=_merged_auxbasis(auxbases)),
        X=jnp.asarray(np.stack(xs)),
        mo_mask=jnp.asarray(np.stack(masks)),
        h_base=jnp.asarray(np.stack(bases)),
        n_electrons=jnp.asarray(electrons),
    )
    return PreparedSet(systems=tuple(systems), arrays=arrays)


def _merged_auxbasis(names: Sequence[str]) -> str:
    """One auxiliary-basis description for a bucket (PySCF names it per element for a molecule)."""
    import ast

    unique = list(dict.fromkeys(names))
    if len(unique) == 1:
        return unique[0]
    try:
        merged: dict = {}
        for name in unique:
            merged.update(ast.literal_eval(name))
        return str(dict(sorted(merged.items())))
    except (ValueError, SyntaxError, TypeError):
        return " | ".join(unique)


def size_buckets(systems: Sequence[System], basis: str, width: int, min_size: int = 1) -> list[list[System]]:
    """Group molecules into size buckets that share one padded, compiled step.

    Molecules are keyed by their AO count rounded up to a multiple of ``width``;
    a bucket with fewer than ``min_size`` molecules joins the next larger one
    (the last such bucket joins the largest). Molecules of one composition
    always share a bucket; dataset order is kept within a bucket.

    Args:
        systems: molecules.
        basis: AO basis (PySCF name) that decides the AO counts.
        width: bucket width in AOs (> 0).
        min_size: smallest bucket (e.g. the batch size).

    Returns:
        Buckets in ascending size, each a list of systems.
    """
    if width < 1:
        raise InputError(f"bucket width must be a positive number of AOs, got {width}")
    nao_of: dict[tuple, int] = {}
    keyed: dict[int, list[System]] = {}
    for s in systems:
        comp = (s.symbols, s.charge, s.spin)
        if comp not in nao_of:
            nao_of[comp] = s.to_mole(basis).nao_nr()
        keyed.setdefault(-(-nao_of[comp] // width), []).append(s)
    buckets: list[list[System]] = []
    pending: list[System] = []
    for key in sorted(keyed):
        pending = pending + keyed[key]
        if len(pending) >= min_size:
            buckets.append(pending)
            pending = []
    if pending:
        if buckets:
            buckets[-1] = buckets[-1] + pending
        else:
            buckets.append(pending)
    return [_dataset_order(b, systems) for b in buckets]


def _dataset_order(bucket: list[System], systems: Sequence[System]) -> list[System]:
    position = {id(s): k for k, s in enumerate(systems)}
    return sorted(bucket, key=lambda s: position[id(s)])


# ------------------------------------------------------------ optimisation
def scheduled_adam(
    steps: int,
    learning_rate: float,
    warmup_steps: int,
    final_lr_fraction: float,
    grad_clip: float,
    adam_eps: float,
    weight_decay: float | None = None,
) -> optax.GradientTransformation:
    """Global-norm clipping, then Adam (AdamW when ``weight_decay`` is not None) with a
    linear warm-up to ``learning_rate`` and cosine decay to ``final_lr_fraction`` of it
    at ``steps``. The one recipe of the molecular and the crystal trainers."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=learning_rate,
        warmup_steps=max(1, min(warmup_steps, steps - 1)),
        decay_steps=max(steps, 2),
        end_value=learning_rate * final_lr_fraction,
    )
    if weight_decay is None:
        adam = optax.adam(schedule, eps=adam_eps)
    else:
        adam = optax.adamw(schedule, eps=adam_eps, weight_decay=weight_decay)
    return optax.chain(optax.clip_by_global_norm(grad_clip), adam)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    return scheduled_adam(
        config.steps, config.learning_rate, config.warmup_steps, config.final_lr_fraction,
        config.grad_clip, config.adam_eps, weight_decay=config.weight_decay,
    )


def _gather(tree, idx):
    return jax.tree.map(lambda a: a[idx], tree)


def _batch_terms(params, data: SetArrays, idx, weights: LossWeights, output_scale: float):
    from vardft.hamiltonian import predict_hamiltonian

    batch = _gather(data.batch, idx)
    H = data.h_base[idx] + output_scale * predict_hamiltonian(params, batch)

    def one(H, ints, X, mo_mask, ao_mask, n_electrons):
        return molecule_loss(H, ints, X, mo_mask, ao_mask, weights, n_electrons=n_electrons)

    return jax.vmap(one)(
        H, _gather(data.ints, idx), data.X[idx], data.mo_mask[idx], batch.ao_mask, data.n_electrons[idx]
    )


def make_train_step(optimizer: optax.GradientTransformation, weights: LossWeights, output_scale: float):
    """A jitted step: (params, opt_state, data, idx) → (params, opt_state, metrics)."""

    def loss_fn(params, data, idx):
        terms = _batch_terms(params, data, idx, weights, output_scale)
        return jnp.mean(terms.loss), terms

    @jax.jit
    def step(params, opt_state, data: SetArrays, idx):
        (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, data, idx)
        finite = jnp.isfinite(loss) & jnp.all(
            jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)])
        )
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
        metrics = {
            "loss": loss,
            "energy": jnp.mean(terms.energy),
            "sc_rmse": jnp.sqrt(jnp.mean(terms.self_consistency_rmse**2)),
            "sc_mae": jnp.mean(terms.self_consistency_mae),
            "grad_norm": optax.tree.norm(grads),
            "finite": finite,
        }
        return keep(new_params, params), keep(new_opt_state, opt_state), metrics

    return step


def make_eval_fn(weights: LossWeights, output_scale: float):
    """Jitted per-molecule label-free metrics: energy and self-consistency, (B,) each."""

    @jax.jit
    def evaluate(params, data: SetArrays, idx):
        terms = _batch_terms(params, data, idx, weights, output_scale)
        return {"energy": terms.energy, "sc_rmse": terms.self_consistency_rmse, "sc_mae": terms.self_consistency_mae}

    return evaluate


def _optimizer_key(config: TrainConfig) -> TrainConfig:
    """The part of a config that the compiled step depends on (others reset to defaults)."""
    d = TrainConfig()
    return dataclasses.replace(
        d, steps=config.steps, learning_rate=config.learning_rate, warmup_steps=config.warmup_steps,
        final_lr_fraction=config.final_lr_fraction, weight_decay=config.weight_decay, adam_eps=config.adam_eps,
        grad_clip=config.grad_clip, loss=config.loss, output_scale=config.output_scale,
    )


@functools.lru_cache(maxsize=8)
def _compiled_functions(key: TrainConfig):
    """Jitted step and evaluation, shared by every train() call with the same settings."""
    return make_train_step(make_optimizer(key), key.loss, key.output_scale), make_eval_fn(key.loss, key.output_scale)


def batch_indices(seed: int, step: int, n: int, batch_size: int) -> np.ndarray:
    """Indices of the molecules of step ``step``: a function of (seed, step) only."""
    rng = np.random.default_rng([seed, step])
    return np.sort(rng.choice(n, size=min(batch_size, n), replace=False)).astype(np.int32)


def step_batch(seed: int, step: int, sizes: Sequence[int], batch_size: int) -> tuple[int, np.ndarray]:
    """Bucket and molecule indices of step ``step``: a function of (seed, step, sizes) only.

    One bucket: :func:`batch_indices`. Several: the bucket is drawn with
    probability proportional to its number of molecules (every molecule is
    seen equally often), then ``batch_size`` distinct molecules of it.
    """
    if len(sizes) == 1:
        return 0, batch_indices(seed, step, sizes[0], batch_size)
    rng = np.random.default_rng([seed, step])
    p = np.asarray(sizes, np.float64)
    b = int(rng.choice(len(sizes), p=p / p.sum()))
    idx = np.sort(rng.choice(sizes[b], size=min(batch_size, sizes[b]), replace=False)).astype(np.int32)
    return b, idx


# ----------------------------------------------------------------- driver
@dataclasses.dataclass
class TrainResult:
    params: Any
    step: int
    interrupted: bool
    skipped_steps: int
    wall_time: float
    history: list


def model_config_for(config: TrainConfig, elements: Sequence[str]):
    from vardft.model import ModelConfig

    return ModelConfig.preset(
        config.preset,
        **dict(config.model_overrides),
        basis=config.basis,
        elements=tuple(sorted(set(elements), key=_z)),
    )


def _z(symbol: str) -> int:
    from basis.system import atomic_number

    return atomic_number(symbol)


def write_run_config(run_dir: str, config: TrainConfig, model_config, dataset: Dataset) -> None:
    ckpt.save_config(
        run_dir,
        {
            "train": config.to_dict(),
            "model": model_config.to_dict(),
            "xc": config.xc,
            "basis": config.basis,
            "baseline": config.baseline,
            "dataset": dataset.name,
            "n_train": len(dataset.train),
            "n_validation": len(dataset.validation),
        },
    )


def train(
    dataset: Dataset,
    run_dir: str,
    config: TrainConfig = TrainConfig(),
    *,
    resume: bool = False,
    cache: IntegralCache | None = None,
    progress: bool = True,
    log=print,
    on_step=None,
) -> TrainResult:
    """Train label-free on ``dataset.train``; checkpoints and logs in ``run_dir``.

    Molecules are grouped into size buckets (:func:`size_buckets`, width
    ``config.bucket_aos``); a batch holds molecules of one bucket, of any
    composition, padded to one shape, so a dataset compiles one step per
    bucket. Conformations of one molecule form a single bucket.
    ``on_step(record)`` is called after every step (tests, notebooks).
    """
    from tqdm.auto import tqdm

    from vardft.model import init_params

    check_dataset(dataset)
    cache = cache or IntegralCache(None)
    elements = sorted({s for sys_ in dataset.train + dataset.validation for s in sys_.symbols})
    model_config = model_config_for(config, elements)
    os.makedirs(run_dir, exist_ok=True)
    if resume:
        saved = ckpt.load_config(run_dir)
        if saved["train"] != json.loads(json.dumps(config.to_dict())):
            config = TrainConfig.from_dict(saved["train"])
            log(f"resuming with the run's saved settings ({run_dir}/config.json)")
            model_config = model_config_for(config, elements)
    elif ckpt.has_checkpoint(run_dir):
        raise CheckpointError(f"{run_dir} already holds a checkpoint; pass --resume to continue it or choose another --out")
    write_run_config(run_dir, config, model_config, dataset)

    start = time.perf_counter()
    buckets = size_buckets(dataset.train, config.basis, config.bucket_aos, min_size=config.batch_size)
    sets = [prepare_set(b, model_config, config, cache, progress=progress) for b in buckets]
    val_buckets = size_buckets(dataset.validation, config.basis, config.bucket_aos)
    val_sets = [prepare_set(b, model_config, config, cache, progress=progress) for b in val_buckets]
    sizes = [len(s) for s in sets]

    optimizer = make_optimizer(config)
    params = init_params(jax.random.PRNGKey(config.seed), model_config)
    opt_state = optimizer.init(params)
    state = {"params": params, "opt_state": opt_state, "step": 0, "skipped": 0}
    if resume:
        state = ckpt.load_checkpoint(run_dir, state)
        ckpt.truncate_log(run_dir, int(state["step"]))
    elif os.path.exists(os.path.join(run_dir, ckpt.LOG_FILE)):
        os.remove(os.path.join(run_dir, ckpt.LOG_FILE))
    params, opt_state = state["params"], state["opt_state"]
    step0, skipped = int(state["step"]), int(state["skipped"])

    step_fn, eval_fn = _compiled_functions(_optimizer_key(config))
    history = []

    def save(step):
        ckpt.save_checkpoint(run_dir, {"params": params, "opt_state": opt_state, "step": step, "skipped": skipped})

    interrupted = False
    step = step0
    deadline = None if config.max_minutes is None else start + 60.0 * config.max_minutes
    bar = tqdm(total=config.steps, initial=step0, desc="train", unit="step", disable=not progress, dynamic_ncols=True)
    with ckpt.StopRequested() as stop:
        while step < config.steps:
            bucket, idx = step_batch(config.seed, step, sizes, config.batch_size)
            params, opt_state, metrics = step_fn(params, opt_state, sets[bucket].arrays, jnp.asarray(idx))
            step += 1
            m = {k: float(v) for k, v in metrics.items()}
            if not m["finite"]:
                skipped += 1
            record = {"step": step, **{k: v for k, v in m.items() if k != "finite"}, "skipped": skipped,
                      "time": time.perf_counter() - start}
            if val_sets and (step % config.eval_every == 0 or step == config.steps):
                v = _evaluate_sets(eval_fn, params, val_sets, config.batch_size)
                record.update({f"val_{k}": val for k, val in v.items()})
            ckpt.append_log(run_dir, record)
            history.append(record)
            bar.set_postfix(loss=f"{m['loss']:.5f}", E=f"{m['energy']:.5f}", sc=f"{m['sc_rmse']:.1e}", refresh=False)
            bar.update(1)
            if on_step is not None:
                on_step(record)
            if step % config.checkpoint_every == 0:
                save(step)
            if stop.requested or (deadline is not None and time.perf_counter() > deadline):
                interrupted = stop.requested
                break
    bar.close()
    save(step)
    return TrainResult(params, step, interrupted, skipped, time.perf_counter() - start, history)


def _evaluate_sets(eval_fn, params, sets: Sequence[PreparedSet], batch_size: int) -> dict:
    """Mean label-free metrics over all molecules of ``sets`` (fixed batch shape)."""
    values: dict[str, list] = {}
    for data in sets:
        for start in range(0, len(data), batch_size):
            real = np.arange(start, min(start + batch_size, len(data)))
            idx = np.resize(real, batch_size).astype(np.int32)  # pad by repeating, keep one shape
            out = eval_fn(params, data.arrays, jnp.asarray(idx))
            for k, v in out.items():
                values.setdefault(k, []).extend(np.asarray(v)[: len(real)].tolist())
    out = {k: float(np.mean(v)) for k, v in values.items() if k != "sc_rmse"}
    out["sc_rmse"] = float(np.sqrt(np.mean(np.square(values["sc_rmse"]))))
    return out
