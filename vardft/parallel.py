"""Data-parallel training over the devices of one or several processes.

The parameters and optimizer state are replicated; each step's batch is split along its
leading (structure) axis over a one-dimensional mesh of devices named :data:`AXIS`.
Every device scores its rows with the task's ``batch_terms`` inside
:func:`jax.shard_map` (where a host callback — the ``"host"`` XC backend — also works),
and the weighted sums of losses, gradients and metrics are added over the mesh by one
all-reduce (:func:`psum_once`). A batch whose size the device count does not divide is
padded by repeating its rows with weight zero, so the loss is the mean over the real
structures whatever the number of devices: sharded and single-device runs agree to
round-off.

Several hosts: start one process per host with the same command, after
:func:`start_distributed` (``vardft train --distributed``: the coordinator address,
process count and index from ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
``JAX_PROCESS_ID``, or from a cluster scheduler JAX recognises). Every process draws
the same global batch (it depends only on the seed and the step) and builds only its own
rows (:func:`local_rows`); process 0 writes the run directory, which the others must see
at the same path (a shared file system) to resume.

Example:
    >>> from vardft.parallel import data_mesh, pad_rows
    >>> pad_rows([3, 5, 7], 2)[1].tolist()
    [1.0, 1.0, 1.0, 0.0]
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from basis.errors import InputError

AXIS = "data"
"""Name of the mesh axis the batch is split along."""


def start_distributed() -> None:
    """:func:`jax.distributed.initialize` with the process count and index from
    ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` when set (JAX itself reads only
    ``JAX_COORDINATOR_ADDRESS``; without them it asks the cluster scheduler), and CPU
    collectives over gloo so that CPU processes can add their gradients too.

    Raises:
        InputError: a variable that is not a non-negative integer.
    """
    kwargs = {}
    for var, key in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
        value = os.environ.get(var)
        if value is not None:
            if not value.strip().isdigit():
                raise InputError(f"{var}={value!r} must be a non-negative integer")
            kwargs[key] = int(value)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)


def data_mesh(devices: int | None = None) -> Mesh:
    """A one-dimensional mesh over ``devices`` devices (``None``: all of every process).

    Raises:
        InputError: more devices asked for than this process has (a count below the
            total is only possible with one process).
    """
    available = jax.devices()
    if devices is None:
        return Mesh(np.array(available), (AXIS,))
    if jax.process_count() > 1 and devices != len(available):
        raise InputError(f"with several processes every device is used ({len(available)}); drop --devices")
    if devices > len(available):
        raise InputError(f"{devices} devices asked for, {len(available)} available "
                         f"({jax.default_backend()}; on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N)")
    return Mesh(np.array(available[:devices]), (AXIS,))


def device_count(devices: int | None) -> int:
    """Devices a run with ``TrainConfig.devices = devices`` splits its batch over."""
    return jax.device_count() if devices is None else devices


def pad_rows(idx, n_devices: int) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, weights)``: ``idx`` repeated cyclically up to a multiple of ``n_devices``,
    and weights 1 for the real rows, 0 for the repeats."""
    idx = np.asarray(idx, np.int32)
    n = -(-len(idx) // n_devices) * n_devices
    weights = np.zeros(n, np.float64)
    weights[: len(idx)] = 1.0
    return np.resize(idx, n).astype(np.int32), weights


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows (axis 0) split over the mesh's devices."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def local_rows(n_rows: int, mesh: Mesh) -> slice:
    """The rows of an ``n_rows`` global batch held by this process's devices (all of them
    with one process)."""
    if jax.process_count() == 1:
        return slice(0, n_rows)
    parts = batch_sharding(mesh).addressable_devices_indices_map((n_rows,)).values()
    starts = [p[0].start or 0 for p in parts]
    stops = [n_rows if p[0].stop is None else p[0].stop for p in parts]
    return slice(min(starts), max(stops))


def shard_rows(tree, mesh: Mesh, n_rows: int):
    """``tree`` (this process's rows of every leaf, :func:`local_rows`) as global arrays
    split over ``mesh`` along axis 0."""
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree.map(
        lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a), (n_rows,) + a.shape[1:]), tree
    )


def replicate(tree, mesh: Mesh):
    """``tree`` placed whole on every device of ``mesh`` (parameters, optimizer state)."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def fetch(tree):
    """Host numpy copies of replicated arrays (any process)."""
    return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)) if isinstance(a, jax.Array) else a, tree)


def psum_once(tree):
    """Every leaf of ``tree`` summed over :data:`AXIS` (inside :func:`jax.shard_map`) by a
    single all-reduce of one flat vector, summed in the widest dtype of its leaves.

    Why one, by construction rather than by XLA's all-reduce combiner: XLA's CPU runtime
    waits for a collective on a worker of a thread pool about as large as the device count,
    so collectives that run side by side could each hold a worker while a device that has
    not arrived finds none free. (Once, on a loaded 2-core machine, a step's all-reduce
    waited for the 4th of 4 forced CPU devices past XLA's 40 s limit; the cause was not
    established, and that step already compiled to one all-reduce.)
    """
    flat, unravel = ravel_pytree(tree)
    return unravel(lax.psum(flat, AXIS))


def all_gather_once(rows: dict) -> dict:
    """``rows`` (name -> (b,) per-device values) gathered over :data:`AXIS` into
    (b × devices,) arrays by a single all-gather (why one: :func:`psum_once`)."""
    names = sorted(rows)
    if not names:
        return {}
    common = jnp.result_type(*rows.values())
    stacked = jnp.stack([jnp.asarray(rows[k], common) for k in names])
    gathered = lax.all_gather(stacked, AXIS, axis=1, tiled=True)
    return {k: gathered[i].astype(jnp.result_type(rows[k])) for i, k in enumerate(names)}


def is_writer() -> bool:
    """Whether this process writes the run directory (process 0)."""
    return jax.process_index() == 0


__all__ = ["AXIS", "all_gather_once", "batch_sharding", "data_mesh", "device_count", "fetch", "is_writer",
           "local_rows", "pad_rows", "psum_once", "replicate", "shard_rows", "start_distributed"]
