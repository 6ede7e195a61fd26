"""Label-free training, one loop for molecules and crystals (library; the CLI is thin).

:func:`train` takes a :class:`~vardft.data.Dataset`, a run directory and a
:class:`~vardft.config.TrainConfig`, and returns the trained parameters. The kind of
the data picks the task (:mod:`vardft.tasks`); everything else — optimizer, data
order, non-finite guard, checkpoints, log, resume, progress — is written once here.

Everything that defines a run lives in ``RUN_DIR/config.json``; parameters and
optimizer state are checkpointed atomically every ``checkpoint_every`` steps, at the
end, and on Ctrl-C / SIGTERM. ``resume=True`` continues from the checkpoint and
reproduces the losses of an uninterrupted run: the structures of step ``s`` depend
only on ``(seed, s)``.

Example:
    >>> from vardft.config import make_config
    >>> from vardft.data import load_dataset
    >>> from vardft.train import train
    >>> result = train(load_dataset("water", n_train=2, n_validation=1), "runs/tiny",
    ...                make_config("molecule", steps=2, preset="S"))      # doctest: +SKIP
    >>> result.step                                                         # doctest: +SKIP
    2
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization
from jax.sharding import Mesh, PartitionSpec
from tqdm.auto import tqdm

from basis.errors import CheckpointError, InputError
from vardft import checkpoint as ckpt
from vardft.config import (DISTILL_WINDOW, TrainConfig, check_config, default_config, default_workers,
                           legacy_config)
from vardft.data import Dataset, IntegralCache, check_dataset, displaced_copies
from vardft.model import ModelConfig, init_params
from vardft.parallel import (AXIS, all_gather_once, data_mesh, fetch, is_writer, local_rows, pad_rows, psum_once,
                             replicate, shard_rows)
from vardft.rundir import claim_run_directory
from vardft.stream import distillation_sets, worker_pool
from vardft.tasks import PreparedSet, available_memory_bytes, hold_budget, model_config_for, task_for


# ------------------------------------------------------------ optimisation
def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW (plain Adam bit for bit when ``weight_decay`` is 0)
    with a linear warm-up to the peak learning rate and cosine decay to
    ``final_lr_fraction`` of it at ``steps``."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=max(1, min(config.warmup_steps, config.steps - 1)),
        decay_steps=max(config.steps, 2),
        end_value=config.learning_rate * config.final_lr_fraction,
    )
    adam = optax.adamw(schedule, eps=config.adam_eps, weight_decay=config.weight_decay)
    return optax.chain(optax.clip_by_global_norm(config.grad_clip), adam)


def batch_indices(seed: int, step: int, n: int, batch_size: int | None) -> np.ndarray:
    """Indices of the structures of step ``step``: a function of (seed, step) only.
    ``batch_size`` None (or ≥ n): all of them."""
    if batch_size is None or batch_size >= n:
        return np.arange(n, dtype=np.int32)
    rng = np.random.default_rng([seed, step])
    return np.sort(rng.choice(n, size=batch_size, replace=False)).astype(np.int32)


def step_batch(seed: int, step: int, sizes: Sequence[int], batch_size: int | None) -> tuple[int, np.ndarray]:
    """Bucket and structure indices of step ``step``: a function of (seed, step, sizes) only.

    One bucket: :func:`batch_indices`. Several (``sizes`` in ascending cost, as
    :func:`vardft.data.size_buckets` orders them): the first ``len(sizes)`` steps visit
    every bucket once, the most expensive first — every step shape is compiled in that
    first pass and the peak memory is reached at the first step — then each step's bucket
    is drawn with probability proportional to its size (every structure is seen equally
    often); then ``batch_size`` distinct structures of it.
    """
    if len(sizes) == 1:
        return 0, batch_indices(seed, step, sizes[0], batch_size)
    rng = np.random.default_rng([seed, step])
    p = np.asarray(sizes, np.float64)
    b = int(rng.choice(len(sizes), p=p / p.sum()))  # drawn also in the warm-up: one random stream
    if step < len(sizes):
        b = len(sizes) - 1 - step
    k = sizes[b] if batch_size is None else min(batch_size, sizes[b])
    idx = np.sort(rng.choice(sizes[b], size=k, replace=False)).astype(np.int32)
    return b, idx


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


@dataclasses.dataclass
class DistillationEnd:
    """Where the distillation steps of a run end: at ``config.n_distill`` steps, or earlier,
    after the first step at which the batch MAEs to F[P_minao] of the last
    :data:`DISTILL_WINDOW` steps average at most ``config.distill_tolerance``.

    Both the end and the recent MAEs (``recent``, NaN where no step yet) are saved in the
    checkpoint, so a resumed run ends its distillation at the step an uninterrupted one does.
    """

    n_distill: int
    tolerance: float
    recent: np.ndarray  # (DISTILL_WINDOW,) batch MAEs, Hartree, oldest first

    @classmethod
    def start(cls, config: TrainConfig) -> "DistillationEnd":
        tolerance = config.distill_tolerance if config.distill_target == "minao" else 0.0
        return cls(config.n_distill, tolerance, np.full(DISTILL_WINDOW, np.nan))

    @classmethod
    def from_state(cls, state: dict, config: TrainConfig) -> "DistillationEnd":
        ending = cls.start(config)
        return dataclasses.replace(ending, n_distill=int(state["n_distill"]),
                                   recent=np.asarray(state["distill_recent"], dtype=np.float64).copy())

    def state(self) -> dict:
        return {"n_distill": self.n_distill, "distill_recent": np.asarray(self.recent, dtype=np.float64)}

    def observe(self, step: int, mae: float | None) -> bool:
        """Record the MAE of distillation step ``step`` (1-based count of steps done);
        True when distillation ends here (then :attr:`n_distill` is ``step``)."""
        if mae is None or not np.isfinite(mae):
            return False
        self.recent = np.append(self.recent[1:], mae)
        if step < self.n_distill and self.tolerance > 0 and np.mean(self.recent) <= self.tolerance:
            self.n_distill = step
            return True
        return False


def _load_state(run_dir: str, state: dict, config: TrainConfig) -> dict:
    """The checkpoint of ``run_dir`` in the structure of ``state``; checkpoints written
    before :class:`DistillationEnd` existed ran every distillation step."""
    try:
        return ckpt.load_checkpoint(run_dir, state)
    except CheckpointError as error:
        older = {k: v for k, v in state.items() if k not in ("n_distill", "distill_recent")}
        try:
            loaded = ckpt.load_checkpoint(run_dir, older)
        except CheckpointError:
            raise error from None
        return {**loaded, "n_distill": config.n_distill, "distill_recent": state["distill_recent"]}


STEP_INDEPENDENT = ("seed", "max_minutes", "checkpoint_every", "eval_every", "workers", "devices",
                    "distill_tolerance", "distill_displaced")
"""Settings the compiled step does not read (the devices come as its mesh). Every other
setting is part of :func:`_step_key`, so a new one over-keys (a compile more) instead of
under-keying (a run silently trained by the step of other settings)."""


def _step_key(config: TrainConfig) -> TrainConfig:
    """The config as :func:`compiled_step` sees it: :data:`STEP_INDEPENDENT` reset to the
    kind's defaults, so runs differing only in those share one compiled step."""
    defaults = default_config(config.kind)
    return dataclasses.replace(config, **{f: getattr(defaults, f) for f in STEP_INDEPENDENT})


def initial_params(config: TrainConfig, model_config: ModelConfig):
    """The parameters a run starts from (seeded by ``config.seed``): one network, or with
    ``config.frozen_distilled`` ``{"distilled": …, "correction": …}``, the correction
    initialised as a one-network run of the same seed is."""
    key = jax.random.PRNGKey(config.seed)
    if not config.frozen_distilled:
        return init_params(key, model_config)
    return {"distilled": init_params(jax.random.fold_in(key, 1), model_config),
            "correction": init_params(key, model_config)}


def frozen_part(config: TrainConfig, distill: bool) -> tuple[str, float] | None:
    """``(part, rate)``: the part of the parameters whose updates a step scales, and by how
    much: the correction network while distilling (0: it waits), the distilled one in the
    label-free steps (``config.distilled_lr_fraction``; 0: frozen), with
    ``config.frozen_distilled``; else none."""
    if not config.frozen_distilled:
        return None
    return ("correction", 0.0) if distill else ("distilled", config.distilled_lr_fraction)


def distill_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """The optimizer of the distillation steps: :func:`make_optimizer` with its schedule
    over ``n_distill`` steps (the same state structure, so one checkpoint format)."""
    return make_optimizer(dataclasses.replace(config, steps=config.n_distill,
                                              learning_rate=config.distill_learning_rate))


@functools.lru_cache(maxsize=8)
def compiled_step(config: TrainConfig, mesh: Mesh, distill: bool = False):
    """Jitted ``step(params, opt_state, data, weights) -> (params, opt_state, metrics)``
    and ``evaluate(params, data) -> per-structure metrics``, for batches split over
    ``mesh`` (:mod:`vardft.parallel`), shared by every run with the same settings.
    ``distill``: the step of the distillation phase (the task's ``distill_terms`` and
    :func:`distill_optimizer`); ``evaluate`` is the label-free one either way.

    ``data`` is a batch (``PreparedSet.take``) whose rows are split over the devices,
    ``weights`` (B,) 1 for real rows, 0 for padding: the loss is the weighted mean of the
    structures' losses, metrics weighted means (``*rmse``: root mean squares). A step
    whose loss, gradients or updated parameters are not all finite changes nothing
    (``metrics["finite"]`` is False) and is counted as skipped.
    """
    task = task_for(config)
    optimizer = distill_optimizer(config) if distill else make_optimizer(config)
    terms = task.distill_terms if distill else task.batch_terms
    frozen = frozen_part(config, distill)
    rows, whole = PartitionSpec(AXIS), PartitionSpec()

    def weighted_sum(params, data, weights):
        loss, metrics = terms(params, data)
        return jnp.sum(weights * loss), metrics

    def local_gradient(params, data, weights):
        (loss, metrics), grads = jax.value_and_grad(weighted_sum, has_aux=True)(params, data, weights)
        sums = {k: jnp.sum(weights * v**2) if k.endswith("rmse") else jnp.sum(weights * v) for k, v in metrics.items()}
        total, loss, grads, sums = psum_once((jnp.sum(weights), loss, grads, sums))
        out = {k: jnp.sqrt(v / total) if k.endswith("rmse") else v / total for k, v in sums.items()}
        return jax.tree.map(lambda g: g / total, grads), {"loss": loss / total, **out}

    # check_vma off: the host XC's custom VJP returns untyped (non-varying) cotangents
    gradient = jax.shard_map(local_gradient, mesh=mesh, in_specs=(whole, rows, rows), out_specs=(whole, whole),
                             check_vma=False)

    @jax.jit
    def step(params, opt_state, data, weights):
        grads, out = gradient(params, data, weights)
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        if frozen is not None:  # scaled after Adam, weight decay included; rate 0: zeros, so it stays exactly
            part, rate = frozen
            scale = (lambda u: rate * u) if rate else jnp.zeros_like  # noqa: E731
            updates = {**updates, part: jax.tree.map(scale, updates[part])}
        new_params = optax.apply_updates(params, updates)
        finite = jnp.isfinite(out["loss"]) & _all_finite(grads) & _all_finite(new_params)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
        out = {**out, "grad_norm": optax.tree.norm(grads), "finite": finite}
        return keep(new_params, params), keep(new_opt_state, opt_state), out

    def local_metrics(params, data):
        metrics = task.batch_terms(params, data)[1]
        return all_gather_once(metrics)

    evaluate = jax.jit(jax.shard_map(local_metrics, mesh=mesh, in_specs=(whole, rows), out_specs=whole,
                                     check_vma=False))
    return step, evaluate


# ----------------------------------------------------------------- run files
def run_record(config: TrainConfig, model_config: ModelConfig, dataset: Dataset) -> dict:
    """What ``config.json`` holds: the config, the model and the data it was trained on."""
    return {
        "kind": config.kind,
        "train": config.to_dict(),
        "model": model_config.to_dict(),
        "xc": config.xc,
        "basis": config.basis,
        "baseline": config.baseline,
        "dataset": dataset.name,
        "n_train": len(dataset.train),
        "n_validation": len(dataset.validation),
        "charges": sorted({int(s.charge) for s in dataset.train}),
        **({"train_molecules": list(dataset.train_labels)} if dataset.train_labels else {}),
    }


def model_config_from_dict(d: dict) -> ModelConfig:
    """Rebuild a :class:`ModelConfig` from its ``to_dict`` (JSON lists → tuples)."""
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    return ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known})


def read_run(run_dir: str) -> tuple[dict, TrainConfig, ModelConfig]:
    """``(record, train config, model config)`` of a run directory (any version)."""
    record = ckpt.load_config(run_dir)
    for key in ("dataset", "n_train"):  # crystal runs of the first layout kept these with the settings
        if record.get(key) is None and record["train"].get(key) is not None:
            record[key] = record["train"][key]
    return record, legacy_config(record), model_config_from_dict(record["model"])


MAX_CONSECUTIVE_SKIPS = 20
"""Non-finite steps in a row after which training stops: the optimizer state is the last
good one each time, so more attempts at the same point would only repeat the failure
(the data order changes, the parameters do not)."""

RESUME_IGNORED = ("max_minutes", "checkpoint_every", "eval_every", "backend", "workers", "devices")
"""Settings that may change when a run is resumed (they do not change the result beyond
round-off: the backends agree to it, and so do different device counts)."""


def _check_resume(run_dir: str, record: dict, saved: TrainConfig, config: TrainConfig | None, dataset: Dataset,
                  model_config: ModelConfig) -> TrainConfig:
    """The config to resume with; a one-line :class:`CheckpointError` when the data, the
    level of theory, the model or the schedule asked for differ from the run's."""
    problems = []
    if record.get("dataset") not in (None, dataset.name):
        problems.append(f"data {dataset.name}, not {record['dataset']}")
    if record.get("n_train") not in (None, len(dataset.train)):
        problems.append(f"{len(dataset.train)} training structures, not {record['n_train']}")
    saved_elements = tuple(record["model"]["elements"])
    if tuple(model_config.elements) != saved_elements:
        problems.append(f"elements {', '.join(model_config.elements)}, not {', '.join(saved_elements)}")
    if config is not None:
        for f in dataclasses.fields(TrainConfig):
            if f.name in RESUME_IGNORED:
                continue
            old, new = getattr(saved, f.name), getattr(config, f.name)
            if old != new:
                problems.append(f"{f.name} {new}, not {old}")
    if problems:
        raise CheckpointError(f"--resume: {run_dir} was trained with other settings: " + "; ".join(problems))
    if config is None:
        return saved
    return dataclasses.replace(saved, **{k: getattr(config, k) for k in RESUME_IGNORED})


# ----------------------------------------------------------------- driver
class TrainingDiverged(InputError):
    """Training could not make a finite step :data:`MAX_CONSECUTIVE_SKIPS` times in a row."""



@dataclasses.dataclass
class TrainResult:
    """Parameters and per-step history of a training call.

    ``seconds``: wall time of the call (integrals, compilation, steps); ``step``: steps
    done in total; ``interrupted``: stopped by Ctrl-C / SIGTERM; ``skipped_steps``:
    steps whose loss, gradients or parameters were not finite (nothing changed);
    ``step_bytes``, ``hold_bytes``: a streamed run's compiled step (with the next batch) and
    the records it held at most (:func:`vardft.tasks.hold_budget`), when it sized that itself.
    """

    params: Any
    model_config: ModelConfig
    config: TrainConfig
    step: int
    interrupted: bool
    skipped_steps: int
    seconds: float
    history: list
    step_bytes: int | None = None
    hold_bytes: int | None = None


def train(
    dataset: Dataset,
    run_dir: str | None,
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    cache: IntegralCache | None = None,
    progress: bool = True,
    on_step: Callable[[dict], None] | None = None,
    stop_after_distillation: bool = False,
) -> TrainResult:
    """Train label-free on ``dataset.train``; checkpoints and log in ``run_dir``.

    Molecules are grouped into size buckets (width ``config.bucket_aos``), a batch
    holds molecules of one bucket padded to one shape (one compiled step per bucket);
    crystals form one bucket. ``on_step(record)`` is called after every step.

    Args:
        dataset: molecules or crystals (:func:`vardft.data.load_dataset`).
        run_dir: run directory, or ``None`` to keep nothing on disk.
        config: settings of the dataset's kind (default: :func:`default_config`); with
            ``resume``, ``None`` means the run's own, and anything else must agree with it.
        resume: continue the run in ``run_dir`` from its checkpoint.
        cache: integral cache (molecules) and Bloch AO store (crystals); default none
            (crystals: every cell's Bloch AOs in memory).
        stop_after_distillation: stop (checkpoint kept, as at ``max_minutes``) where the
            distillation steps end, before the first label-free step, so the distilled
            network can be looked at alone (``benchmarks/distilled_start.py``); ``resume``
            continues the run from there. A run past its distillation is not stopped.

    Raises:
        CheckpointError: a new run into a directory holding a run, a resume without a
            run, or with other data or settings than the run's.
        InputError: a config of another kind than the data, or settings that cannot work.
    """
    check_dataset(dataset)
    start = time.perf_counter()
    if config is not None and config.kind != dataset.kind:
        raise InputError(f"a {config.kind} config cannot train on {dataset.name}, a {dataset.kind} dataset")
    elements = sorted({s for sys_ in dataset.train + dataset.validation for s in sys_.symbols})
    if resume:
        if run_dir is None or not ckpt.has_checkpoint(run_dir):
            raise CheckpointError(f"--resume: no checkpoint in {run_dir}")
        record, saved, saved_model = read_run(run_dir)
        if saved.kind != dataset.kind:
            raise CheckpointError(f"--resume: {run_dir} holds a {saved.kind} run; {dataset.name} is a {dataset.kind} dataset")
        requested = None if config is None else task_for(config).resolve(prepared_systems(dataset, config))
        config = _check_resume(run_dir, record, saved, requested, dataset, model_config_for(saved, elements))
        model_config = saved_model
    else:
        config = check_config(config or default_config(dataset.kind))
    config = task_for(config).resolve(prepared_systems(dataset, config))
    check_stop_after_distillation(config, stop_after_distillation)
    data_mesh(config.devices)  # devices that are not there: refused before any work
    if not resume:
        model_config = model_config_for(config, elements)
    writer = run_dir is not None and is_writer()  # one process writes the run directory
    claim = claim_run_directory(run_dir, dataset.kind, resume=resume) if writer else contextlib.nullcontext()
    with claim:
        if writer and not resume:
            ckpt.save_config(run_dir, run_record(config, model_config, dataset))
        return _run(dataset, run_dir, config, model_config, resume, cache, progress, on_step, start,
                    stop_after_distillation)


def check_stop_after_distillation(config: TrainConfig, stop_after_distillation: bool) -> None:
    """Raise :class:`InputError` for a stop after a distillation the run does not have."""
    if stop_after_distillation and not config.n_distill:
        raise InputError("--stop-after-distillation: this run has no distillation steps (molecules on the sap baseline)")


def evaluates_held_out(config: TrainConfig) -> bool:
    """Whether a run evaluates its held-out structures: ``eval_every``, and steps to evaluate after."""
    return config.eval_every is not None and config.total_steps > 0


def prepared_systems(dataset: Dataset, config: TrainConfig) -> tuple:
    """The structures a run prepares (and the automatic backend must fit in memory): the
    training ones, and the held-out ones when the run evaluates them. A QM9 run of 8
    training and 100 held-out molecules chose the host backend from the 8 alone and was
    killed for memory preparing the 100."""
    return tuple(dataset.train) + (tuple(dataset.validation) if evaluates_held_out(config) else ())


def _run(dataset, run_dir, config, model_config, resume, cache, progress, on_step, start,
         stop_after_distillation) -> TrainResult:
    """:func:`_loop` with the record workers of the ``"jax"`` backend running."""
    streamed = config.kind == "molecule" and config.backend == "jax"
    workers = (default_workers() if config.workers is None else config.workers) if streamed else 0
    with worker_pool(workers) as pool:
        return _loop(dataset, run_dir, config, model_config, resume, cache, progress, on_step, start, pool,
                     stop_after_distillation)


def _loop(dataset, run_dir, config, model_config, resume, cache, progress, on_step, start, pool,
          stop_after_distillation) -> TrainResult:
    """The loop of :func:`train`, inside the claim of ``run_dir``."""
    task = task_for(config)
    cache = cache or IntegralCache(None)
    min_bucket = config.batch_size or 1
    evaluate = bool(dataset.validation) and evaluates_held_out(config)
    sizing = list(dataset.train) + (list(dataset.validation) if evaluate else [])
    sets = task.prepare(dataset.train, model_config, cache, progress=progress, min_bucket=min_bucket, pool=pool,
                        sizing=sizing)
    # held-out structures are evaluated label-free: no SCF labels built for them
    val_task = task if config.distill_target == "minao" else task_for(dataclasses.replace(config, distill_target="minao"))
    resident = getattr(sets[0], "resident", None)  # one device budget for every set of the run
    val_sets = val_task.prepare(dataset.validation, model_config, cache, progress=progress, pool=pool,
                                resident=resident) if evaluate else []
    mesh = data_mesh(config.devices)
    distill_sets = sets  # with displaced copies: replaced below, while distillation steps remain

    def batch_of(s: int):
        chosen = distill_sets if s < ending.n_distill else sets
        bucket, idx = step_batch(config.seed, s, [len(b) for b in chosen], config.batch_size)
        return sharded_batch(chosen[bucket], idx, mesh)

    optimizer = make_optimizer(config)
    params = initial_params(config, model_config)
    state = {"params": params, "opt_state": optimizer.init(params), "step": 0, "skipped": 0,
             **DistillationEnd.start(config).state()}
    time_offset = 0.0
    if resume:
        state = _load_state(run_dir, state, config)
        ckpt.truncate_log(run_dir, int(state["step"]))
        log = ckpt.read_log(run_dir)
        time_offset = float(log[-1].get("time", 0.0)) if log else 0.0
    params, opt_state = replicate((state["params"], state["opt_state"]), mesh)
    step, skipped = int(state["step"]), int(state["skipped"])
    ending = DistillationEnd.from_state(state, config)
    key, total = _step_key(config), ending.n_distill + config.steps
    if config.distill_displaced and step < ending.n_distill:
        extra = displaced_copies(dataset.train, config.distill_displaced, config.seed)
        geometries = list(dataset.train) + extra
        if config.backend == "jax":
            distill_sets = task.prepare(geometries, model_config, cache, progress=progress,
                                       min_bucket=min_bucket, pool=pool, resident=resident)
        else:  # in-memory sets would hold every geometry's grid and DF arrays
            distill_sets = task.prepare_targets(geometries, model_config, cache, progress=progress,
                                                min_bucket=min_bucket)
    if step < ending.n_distill:  # distillation reads only the baseline and target of each record
        distill_sets = distillation_sets(distill_sets, progress)
    step_fn, eval_fn = compiled_step(key, mesh)
    step_bytes = hold = None
    if resident is not None and cache.memory_bytes is None and mesh.size == 1:
        step_bytes = compiled_step_bytes(step_fn, params, opt_state, largest_set(sets), config.batch_size, mesh)
        resident.budget = hold = hold_budget(step_bytes, available_memory_bytes())
        if progress:
            print(f"training step: {step_bytes / 1e9:.1f} GB (compiled, with the next batch); "
                  f"records held in memory: up to {hold / 1e9:.1f} GB", file=sys.stderr)
    if ending.n_distill and step <= ending.n_distill:
        distill_fn = compiled_step(key, mesh, distill=True)[0]
        if step == 0:
            opt_state = replicate(distill_optimizer(config).init(fetch(params)), mesh)
    writer = run_dir is not None and is_writer()

    def save():
        if writer:
            host = fetch({"params": params, "opt_state": opt_state})
            ckpt.save_checkpoint(run_dir, {**host, "step": step, "skipped": skipped, **ending.state()})

    history = []
    in_a_row = 0
    interrupted = False
    deadline = None if config.max_minutes is None else start + 60.0 * config.max_minutes
    bar = tqdm(total=total, initial=step, desc="train", unit="step", disable=not progress, dynamic_ncols=True)
    # the next step's batch is loaded (streamed sets: read or rebuilt) while this step runs
    loader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vardft-batch")
    upcoming = loader.submit(batch_of, step) if step < total else None
    with ckpt.StopRequested() as stop, contextlib.ExitStack() as on_exit:
        on_exit.callback(loader.shutdown, cancel_futures=True)
        while step < total:
            data, weights = upcoming.result()
            upcoming = loader.submit(batch_of, step + 1) if step + 1 < total else None
            if step == ending.n_distill and ending.n_distill:  # label-free steps start with a fresh optimizer
                opt_state = replicate(make_optimizer(config).init(fetch(params)), mesh)
            fn = distill_fn if step < ending.n_distill else step_fn
            params, opt_state, metrics = fn(params, opt_state, data, weights)
            del data
            step += 1
            m = {k: float(v) for k, v in metrics.items()}
            if m.pop("finite"):
                in_a_row = 0
            else:
                skipped += 1
                in_a_row += 1
            if ending.observe(step, m.get("distill_mae")):  # distilled well enough: label-free steps next
                total = ending.n_distill + config.steps
                bar.total = total
                if upcoming is not None:  # it was loading a distillation batch
                    upcoming.cancel()
                upcoming = loader.submit(batch_of, step) if step < total else None
            record = {"step": step, **m, "skipped": skipped, "time": time_offset + time.perf_counter() - start}
            if val_sets and step > ending.n_distill and ((step - ending.n_distill) % config.eval_every == 0 or step == total):
                values = evaluate_sets(eval_fn, params, val_sets, config.batch_size, mesh)
                record.update({f"val_{k}": v for k, v in values.items()})
            if writer:
                ckpt.append_log(run_dir, record)
            history.append(record)
            if "energy" in m:
                bar.set_postfix(loss=f"{m['loss']:.5f}", E=f"{m['energy']:.5f}", sc=f"{m['sc_rmse']:.1e}", refresh=False)
            else:
                bar.set_postfix(distill_mae=f"{m['distill_mae']:.1e}", refresh=False)
            bar.update(1)
            if on_step is not None:
                on_step(record)
            if in_a_row >= MAX_CONSECUTIVE_SKIPS:
                step -= in_a_row  # the parameters are those of the last finite step
                save()
                raise TrainingDiverged(
                    f"{in_a_row} training steps in a row gave non-finite values (loss, gradients or "
                    f"parameters); stopped, the last good state (step {step}) is kept"
                    + (f" in {run_dir}" if run_dir else "") + "; try a smaller --lr"
                )
            if step % config.checkpoint_every == 0:
                save()
            if stop.requested or (deadline is not None and time.perf_counter() > deadline):
                interrupted = stop.requested
                break
            if stop_after_distillation and ending.n_distill and step == ending.n_distill:
                break
    bar.close()
    save()
    params = fetch(params)
    return TrainResult(params, model_config, config, step, interrupted, skipped, time.perf_counter() - start, history,
                       step_bytes, hold)


def largest_set(sets: Sequence):
    """The streamed set of ``sets`` whose padded batches are largest (AOs, then grid points)."""
    return max(sets, key=lambda s: (s.shapes.nao, s.shapes.ngrid))


def compiled_step_bytes(step_fn, params, opt_state, data, batch_size: int | None, mesh: Mesh) -> int:
    """Bytes a training step on the largest batches of ``data`` (a streamed set) takes:
    the compiled step's buffers (XLA's memory analysis: temporaries, arguments, outputs)
    plus a second batch, loaded while it runs. One batch is read for its shapes (no record
    held); the step is compiled here instead of at its first call (the compilation is reused)."""
    rows = len(data) if batch_size is None else min(int(batch_size), len(data))
    batch, weights = sharded_batch(dataclasses.replace(data, resident=None), np.arange(rows), mesh)
    batch_bytes = sum(int(np.prod(np.shape(leaf))) * np.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(batch))
    return compiled_bytes(step_fn, params, opt_state, batch, weights) + batch_bytes


def compiled_bytes(fn, *args) -> int:
    """Bytes of jitted ``fn`` compiled for ``args``: temporaries, arguments and outputs
    (XLA's memory analysis)."""
    memory = fn.lower(*args).compile().memory_analysis()
    return int(memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes)


def sharded_batch(data: PreparedSet, idx, mesh: Mesh):
    """``(batch, weights)`` of structures ``idx`` of ``data``, split over ``mesh``: rows
    padded to a multiple of the device count (weight 0), and only this process's rows
    built (:mod:`vardft.parallel`)."""
    rows, weights = pad_rows(idx, mesh.size)
    mine = local_rows(len(rows), mesh)
    return shard_rows(data.take(rows[mine]), mesh, len(rows)), shard_rows(weights[mine], mesh, len(rows))


def evaluate_sets(eval_fn, params, sets: Sequence[PreparedSet], batch_size: int | None, mesh: Mesh) -> dict:
    """Label-free metrics over every structure of ``sets`` (fixed batch shape): means,
    and root mean squares for ``*rmse``."""
    values: dict[str, list] = {}
    for data in sets:
        size = len(data) if batch_size is None else batch_size
        for first in range(0, len(data), size):
            real = np.arange(first, min(first + size, len(data)))
            idx = np.resize(real, size).astype(np.int32)  # pad by repeating, keep one shape
            out = fetch(eval_fn(params, sharded_batch(data, idx, mesh)[0]))
            for k, v in out.items():
                values.setdefault(k, []).extend(np.asarray(v)[: len(real)].tolist())
    return {k: float(np.sqrt(np.mean(np.square(v)))) if k.endswith("rmse") else float(np.mean(v))
            for k, v in values.items()}


def load_params(run_dir: str, model_config: ModelConfig, config: TrainConfig):
    """The parameters in a run's checkpoint, restored into the structure of ``model_config``
    and ``config`` (:func:`initial_params`).

    Raises:
        CheckpointError: no checkpoint, or one that does not match the config.
    """
    template = initial_params(config, model_config)
    raw = ckpt.load_state_dict(run_dir)
    try:
        params = serialization.from_state_dict(template, raw["params"])
    except Exception as exc:  # flax raises several types for a mismatched tree
        raise CheckpointError(f"the checkpoint in {run_dir} does not match its config.json ({type(exc).__name__})") from None
    return params, int(raw.get("step", 0))


__all__ = ["TrainResult", "batch_indices", "check_stop_after_distillation", "compiled_step", "compiled_step_bytes", "evaluate_sets", "frozen_part", "initial_params",
           "load_params", "make_optimizer", "read_run", "run_record", "sharded_batch", "step_batch", "train"]
