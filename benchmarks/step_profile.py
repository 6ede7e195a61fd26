"""What one QM9 training step costs, and which part bounds it: the network or the energy (issue 12).

The defaults of ``vardft train qm9`` (B3LYP/def2-SVP, grid level 1, ``--backend jax``,
8 molecules per step, the model preset of the molecule kind), on the first ``--n-train``
QM9 training molecules of seed 0 (or the molecules of ``--molecules FILE``, e.g. written
by ``--write-molecules FILE`` on a machine that has ``qm9pack``, for one that has not).
The molecules are grouped into the size buckets training uses; for each chosen bucket,
on the exact batch its first training step takes (same padded shapes), median seconds
after compilation of:

  step     the jitted training step (forward, backward, optimizer), as ``train`` runs it;
  network  the network's forward + backward alone (gradient of Σ ΔH² w.r.t. the parameters);
  energy   everything of the step that is not the network, forward + backward in H:
           eigensolver, density, energy and Fock (DF Coulomb/exchange, XC on the grid),
           self-consistency (``MoleculeTask.hamiltonian_terms``);
  load     assembling the batch on the device (what the loader thread does while the
           previous step runs): the first time (records read from disk and padded) and
           again (padded records held on the device where the budget allows,
           ``vardft.stream.ResidentRecords``; ``--resident-gb 0``: read every batch);

and the bytes XLA's memory analysis gives the compiled step and network (temporaries,
arguments and outputs). ``--network-dtype float64 float32`` profiles each precision of
the network's parameters and activations (``vardft train --network-dtype``; H, energies and
losses stay float64) and reports how far the single-precision ΔH is from the double one
with the same (cast) parameters. With ``--train-steps N`` an end-to-end ``train`` of N steps (records built by the
workers first; s/step is the median of the steps after the first pass through the
buckets, which compiles). Runs on whatever device JAX uses (CPU here; a GPU where one
is present), so the same command gives both columns of "steps per second against this
CPU". Each row is printed to stderr as soon as it is measured.

Usage (from the repository root; nothing else should be running):
    .venv/bin/python benchmarks/step_profile.py --buckets largest          # table
    .venv/bin/python benchmarks/step_profile.py --train-steps 12 --json
    .venv/bin/python benchmarks/step_profile.py --buckets largest --network-dtype float64 float32
    .venv/bin/python benchmarks/step_profile.py --write-molecules qm9_16.xyz  # for a machine without qm9pack
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _machine import machine_info  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from vardft.config import NETWORK_DTYPES, make_config  # noqa: E402
from vardft.data import Dataset, IntegralCache, load_dataset, read_systems, size_buckets  # noqa: E402
from vardft.parallel import data_mesh, replicate  # noqa: E402
from vardft.stream import worker_pool  # noqa: E402
from vardft.tasks import model_config_for, task_for  # noqa: E402
from vardft.train import compiled_bytes, compiled_step, initial_params, make_optimizer, sharded_batch, step_batch, train  # noqa: E402


def _median_time(fn, repeats: int) -> tuple[float, float]:
    """(first call incl. compilation, median of ``repeats`` further calls), seconds."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return first, float(np.median(times))


def molecules(args) -> Dataset:
    if args.molecules:
        systems = tuple(read_systems(args.molecules))
        return Dataset(Path(args.molecules).name, systems, ())
    data = load_dataset("qm9", seed=0, n_train=args.n_train, n_validation=0)
    return Dataset(data.name, data.train, ())


def _cache(cache_dir: str, args) -> IntegralCache:
    memory = None if args.resident_gb is None else int(args.resident_gb * 1e9)
    return IntegralCache(cache_dir, memory_bytes=memory)


def config_for(args, steps: int, network_dtype: str = "float64"):
    # the minao baseline's label-free step, as measured for issue 12 (one network, no distillation)
    return make_config("molecule", dataset="qm9", steps=steps, eval_every=None, backend="jax", baseline="minao",
                       batch_size=args.batch, workers=args.workers, network_dtype=network_dtype)


def profile_buckets(dataset: Dataset, args, cache_dir: str, network_dtype: str = "float64") -> tuple[list[dict], dict]:
    """One row per chosen bucket: step / network / energy seconds on its first batch and
    the compiled step's and network's bytes; and each bucket's ΔH of that batch."""
    config = config_for(args, steps=1, network_dtype=network_dtype)
    elements = sorted({s for m in dataset.train for s in m.symbols})
    task = task_for(config)
    config = task.resolve(dataset.train)
    task = task_for(config)
    model_config = model_config_for(config, elements)
    mesh = data_mesh(config.devices)
    cache = _cache(cache_dir, args)
    with worker_pool(config.workers or 0) as pool:
        t0 = time.perf_counter()
        sets = task.prepare(dataset.train, model_config, cache, progress=False, min_bucket=config.batch_size or 1,
                            pool=pool)
        records_s = time.perf_counter() - t0
    sizes = [len(s) for s in sets]
    params = initial_params(config, model_config)
    opt_state = make_optimizer(config).init(params)
    params, opt_state = replicate((params, opt_state), mesh)
    step_fn, _ = compiled_step(config, mesh)

    @jax.jit
    def network(params, data):
        return jax.grad(lambda p: jnp.sum(task.network_hamiltonian(p, data.batch) ** 2))(params)

    @jax.jit
    def energy(H, data):
        return jax.grad(lambda h: jnp.sum(task.hamiltonian_terms(h, data)[0]))(H)

    chosen = range(len(sets)) if args.buckets == "all" else [len(sets) - 1]
    rows, deltas = [], {}
    for b in chosen:
        # the first step that training draws from bucket b: the first pass visits the costliest first
        s = len(sets) - 1 - b
        bucket, idx = step_batch(config.seed, s, sizes, config.batch_size)
        assert bucket == b
        load_first, load_s = _median_time(lambda: sharded_batch(sets[b], idx, mesh), args.repeats)
        data, weights = sharded_batch(sets[b], idx, mesh)
        deltas[b] = np.asarray(task.network_hamiltonian(params, data.batch))
        H = data.h_base + deltas[b]
        compile_step, step_s = _median_time(lambda: step_fn(params, opt_state, data, weights), args.repeats)
        compile_net, net_s = _median_time(lambda: network(params, data), args.repeats)
        compile_energy, energy_s = _median_time(lambda: energy(H, data), args.repeats)
        rows.append(dict(
            network_dtype=network_dtype, bucket=b, molecules_in_bucket=sizes[b], batch=len(idx), padded_aos=int(H.shape[-1]),
            atoms=[int(n) for n in np.asarray(data.batch.atom_mask).sum(axis=1)],
            grid_points=int(data.ints.weights.shape[-1]),
            load_first_s=round(load_first, 3), load_s=round(load_s, 3),
            resident_records=len(sets[b].resident) if sets[b].resident is not None else 0,
            step_s=round(step_s, 3), network_s=round(net_s, 3), energy_s=round(energy_s, 3),
            network_share=round(net_s / step_s, 3), energy_share=round(energy_s / step_s, 3),
            compile_step_s=round(compile_step, 1), compile_network_s=round(compile_net, 1),
            compile_energy_s=round(compile_energy, 1), records_s=round(records_s, 1),
            step_gb=round(compiled_bytes(step_fn, params, opt_state, data, weights) / 1e9, 2),
            network_gb=round(compiled_bytes(network, params, data) / 1e9, 2),
        ))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows, deltas


def end_to_end(dataset: Dataset, args, cache_dir: str) -> dict:
    """``train`` for ``--train-steps`` steps: s/step after the first pass through the buckets."""
    times = []
    config = config_for(args, args.train_steps, args.network_dtype[0])
    result = train(dataset, None, config, cache=_cache(cache_dir, args),
                   progress=False, on_step=lambda r: times.append(r["time"]))
    n_buckets = len(size_buckets(dataset.train, config.basis, config.bucket_aos, min_size=config.batch_size or 1))
    durations = np.diff(times)  # step 1 is in times[0] (with the records and its compilation)
    first_pass = min(n_buckets - 1, len(durations))
    warm = durations[first_pass:]
    row = dict(train_steps=result.step, buckets=n_buckets, until_first_step_s=round(times[0], 1),
               first_pass_s=round(float(np.sum(durations[:first_pass])), 1),
               s_per_step=round(float(np.median(warm)), 3) if len(warm) else None,
               warm_steps=int(len(warm)), total_s=round(result.seconds, 1))
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-train", type=int, default=16, help="QM9 training molecules (seed 0)")
    p.add_argument("--molecules", help="a structure file of the molecules instead of qm9")
    p.add_argument("--write-molecules", metavar="FILE", help="write the --n-train molecules to FILE (extxyz) and stop")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--workers", type=int, default=None, help="record workers (default: one per core)")
    p.add_argument("--buckets", choices=("all", "largest"), default="all")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train-steps", type=int, default=0, help="also train end to end for N steps")
    p.add_argument("--resident-gb", type=float, default=None,
                   help="budget for padded records held on the device, GB (default: vardft train's, a quarter of the memory)")
    p.add_argument("--network-dtype", nargs="+", choices=NETWORK_DTYPES, default=["float64"],
                   help="precisions of the network to profile (default float64; the end-to-end run uses the first)")
    p.add_argument("--cache", default=None,
                   help="integral cache directory to use and keep (default: a temporary one, ~1.7 GB for 16 QM9 molecules)")
    p.add_argument("--skip-profile", action="store_true", help="only the end-to-end run")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    dataset = molecules(args)
    if args.write_molecules:
        from ase.io import write

        write(args.write_molecules, [m.to_atoms() for m in dataset.train], format="extxyz")
        print(f"wrote {len(dataset.train)} molecules to {args.write_molecules}", file=sys.stderr)
        return 0
    rows, deltas = [], {}
    with tempfile.TemporaryDirectory(prefix="vardft-step-profile-") as scratch:
        cache_dir = args.cache or scratch
        for dtype in ([] if args.skip_profile else args.network_dtype):
            got, deltas[dtype] = profile_buckets(dataset, args, cache_dir, dtype)
            rows += got
        e2e = end_to_end(dataset, args, cache_dir) if args.train_steps else None
    if "float64" in deltas:
        for r in rows:
            ref = deltas["float64"][r["bucket"]]
            r["delta_h_max_diff_eh"] = float(np.abs(deltas[r["network_dtype"]][r["bucket"]] - ref).max())
    out = {"machine": machine_info(), "device": str(jax.devices()[0]), "molecules": len(dataset.train),
           "buckets": rows, "end_to_end": e2e}
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"{out['device']} ({out['machine']['jax_backend']}), {len(dataset.train)} molecules, batch {args.batch}")
    print("| network | bucket | padded AOs | step s | network s (share) | energy s (share) | load s first / again "
          "| compile step s | step GB | network GB | max ΔH diff vs float64, Eh |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        diff = r.get("delta_h_max_diff_eh")
        print(f"| {r['network_dtype']} | {r['bucket']} | {r['padded_aos']} | {r['step_s']} "
              f"| {r['network_s']} ({r['network_share']:.0%}) | {r['energy_s']} ({r['energy_share']:.0%}) "
              f"| {r['load_first_s']} / {r['load_s']} | {r['compile_step_s']} | {r['step_gb']} | {r['network_gb']} "
              f"| {'' if diff is None else f'{diff:.1e}'} |")
    if e2e:
        print(f"end to end: {e2e['s_per_step']} s/step (median of {e2e['warm_steps']} warm steps), "
              f"first step after {e2e['until_first_step_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
