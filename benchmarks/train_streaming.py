"""Training step time and peak memory of the host (in-memory) and JAX (streamed) backends (issue 11).

Each configuration trains in a fresh subprocess (``vardft.train.train``, no run
directory) and reports:

- seconds per step after the first pass (median over the steps after every bucket
  has compiled), and molecules per second (batch size / step time);
- peak resident memory of the training process (``ru_maxrss``) and of its record
  workers (``RUSAGE_CHILDREN``, the largest one), in GB;
- the first losses, so both backends can be compared.

Datasets: ``water`` and ``g2-small`` (built-in), and ``alkane:N``: N thermal
conformations of n-butane (14 atoms, 106 AOs at def2-SVP, a QM9-sized molecule) —
for memory against the number of molecules.

Usage (nothing else running; the record cache is ``--cache``, reused between runs):
    .venv/bin/python benchmarks/train_streaming.py --data water --steps 60
    .venv/bin/python benchmarks/train_streaming.py --data alkane:50 alkane:500 --backends jax --steps 20 --json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _dataset(spec: str):
    from ase.build import molecule

    from basis.system import System
    from vardft.data import Dataset, load_dataset, thermal_conformations

    if spec.startswith("alkane:"):
        import numpy as np

        n = int(spec.split(":")[1])
        base = System.from_atoms(molecule("trans-butane"))
        return Dataset(spec, tuple(thermal_conformations(base, n, np.random.default_rng(0))), ())
    return load_dataset(spec)


def _child(spec: str, backend: str, steps: int, batch: int, cache: str, workers: int | None,
           hold_gb: float | None = None) -> dict:
    from vardft.config import make_config
    from vardft.data import IntegralCache
    from vardft.train import train

    dataset = _dataset(spec)
    config = make_config("molecule", steps=steps, batch_size=batch, backend=backend, eval_every=None,  # label-free
                         workers=workers, checkpoint_every=10**6, baseline="minao")  # steps only, as for issue 11
    stamps = []
    t0 = time.perf_counter()
    result = train(dataset, None, config, cache=IntegralCache(cache, memory_bytes=None if hold_gb is None else int(hold_gb * 1e9)),
                   progress=False,
                   on_step=lambda r: stamps.append(time.perf_counter()))
    total = time.perf_counter() - t0
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    warm = gaps[len(gaps) // 2:] if gaps else [float("nan")]  # the second half: every bucket compiled
    step_s = statistics.median(warm)
    return {
        "data": spec, "backend": backend, "n_molecules": len(dataset.train), "steps": steps, "batch": batch,
        "seconds_per_step": step_s, "molecules_per_second": batch / step_s,
        "first_step_s": stamps[0] - t0 if stamps else float("nan"), "total_s": total,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "peak_worker_rss_gb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6,
        "losses": [h["loss"] for h in result.history[:20]],
    }


def record_cost(spec: str, n: int, directory: str) -> dict:
    """Seconds per molecule to build a record (one process, PySCF) and to read it back, and its size."""
    from vardft.config import make_config
    from vardft.stream import RecordSettings, build_record, load_record, save_record
    from vardft.tasks import MoleculeTask

    config = make_config("molecule", baseline="minao")  # records with the minao baseline, as for issue 11
    systems = [MoleculeTask.to_frame(s)[0] for s in _dataset(spec).train[:n]]
    settings = RecordSettings(config.xc, config.basis, config.grid_level, config.baseline)
    build, read, size = [], [], []
    for k, system in enumerate(systems):
        t0 = time.perf_counter()
        record = build_record(system, settings)
        build.append(time.perf_counter() - t0)
        path = os.path.join(directory, f"cost-{k}.h5")
        save_record(path, record)
        size.append(os.path.getsize(path))
        t0 = time.perf_counter()
        load_record(path)
        read.append(time.perf_counter() - t0)
        os.remove(path)
    return {"data": spec, "n": n, "build_s": statistics.median(build), "read_s": statistics.median(read),
            "record_mb": statistics.median(size) / 1e6}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", default=["water"])
    p.add_argument("--backends", nargs="+", default=["host", "jax"])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--cache", default=None, help="record/integral cache directory (default: a temporary one)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--record-cost", type=int, default=None, metavar="N",
                   help="instead: time building and reading N records of each --data (read vs recompute)")
    p.add_argument("--hold-gb", type=float, default=None,
                   help="records held in memory once read, GB (vardft train --hold-gb; default: a quarter of it)")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        spec, backend, steps, cache = args.child
        print(json.dumps(_child(spec, backend, int(steps), args.batch, cache, args.workers, args.hold_gb)))
        return 0
    if args.cache:
        return measure(args, args.cache)
    with tempfile.TemporaryDirectory(prefix="vardft-bench-cache-") as cache:
        return measure(args, cache)


def measure(args, cache: str) -> int:
    """Run what ``args`` ask for with the record cache ``cache``; print; exit status."""
    if args.record_cost:
        costs = [record_cost(spec, args.record_cost, cache) for spec in args.data]
        print(json.dumps(costs, indent=1) if args.json else "\n".join(
            f"{c['data']}: build {c['build_s']:.2f} s, read {c['read_s']:.3f} s, {c['record_mb']:.1f} MB per record"
            for c in costs))
        return 0
    rows = []
    for spec in args.data:
        for backend in args.backends:
            print(f"{spec} {backend}: training {args.steps} steps", file=sys.stderr, flush=True)
            cmd = [sys.executable, __file__, "--child", spec, backend, str(args.steps), cache, "--batch", str(args.batch)]
            if args.workers is not None:
                cmd += ["--workers", str(args.workers)]
            if args.hold_gb is not None:
                cmd += ["--hold-gb", str(args.hold_gb)]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=os.environ.copy())
            if out.returncode:
                print(out.stderr[-3000:], file=sys.stderr)
                return 1
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)  # each row as soon as it is measured
    if args.json:
        print(json.dumps({"rows": rows}, indent=1))
        return 0
    print("| data | molecules | backend | s/step | molecules/s | first step s | peak RSS GB (workers) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['data']} | {r['n_molecules']} | {r['backend']} | {r['seconds_per_step']:.3f} | "
              f"{r['molecules_per_second']:.1f} | {r['first_step_s']:.0f} | {r['peak_rss_gb']:.2f} ({r['peak_worker_rss_gb']:.2f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
