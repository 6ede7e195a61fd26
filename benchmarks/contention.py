"""Training step time alone and beside one other CPU-bound process (issue 11 target: ≤ 2.5×).

Runs ``benchmarks/train_streaming.py``'s child (water, the default model, batch 8) for
each backend, once alone and once while a competitor runs:

- ``pyscf``: PySCF density-fitted PBE SCFs of benzene in a loop, with PySCF's default
  threads (what ``vardft validate`` does beside a training run);
- ``spin``: one pure-Python busy loop (one core).

Optional ``--xla-flags`` runs every case again with that ``XLA_FLAGS`` value (e.g.
``--xla_cpu_multi_thread_eigen=false``) to see what the XLA thread pool contributes.

Usage (nothing else running):
    .venv/bin/python benchmarks/contention.py --steps 30
    .venv/bin/python benchmarks/contention.py --competitor spin --json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = 2.5

COMPETITORS = {
    "pyscf": (
        "from pyscf import gto, dft\n"
        "from ase.build import molecule\n"
        "a = molecule('C6H6')\n"
        "mol = gto.M(atom=[(s, p) for s, p in zip(a.get_chemical_symbols(), a.positions)], basis='def2-svp', verbose=0)\n"
        "while True:\n"
        "    dft.RKS(mol, xc='pbe').density_fit().run()\n"
    ),
    "spin": "x = 0\nwhile True:\n    x += 1\n",
}


def _train(backend: str, steps: int, cache: str, env: dict) -> dict:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "train_streaming.py"), "--child", "water", backend, str(steps), cache]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", nargs="+", default=["host", "jax"])
    p.add_argument("--competitor", choices=sorted(COMPETITORS), default="pyscf")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--xla-flags", default=None, help="also run every case with this XLA_FLAGS value")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vardft-contention-") as cache:  # records of every case
        settings = [("default", os.environ.copy())]
        if args.xla_flags:
            settings.append((args.xla_flags, {**os.environ, "XLA_FLAGS": args.xla_flags}))
        rows = []
        for label, env in settings:
            for backend in args.backends:
                print(f"{backend} [{label}]: alone", file=sys.stderr, flush=True)
                alone = _train(backend, args.steps, cache, env)
                print(f"{backend} [{label}]: with a {args.competitor} competitor", file=sys.stderr, flush=True)
                rival = subprocess.Popen([sys.executable, "-c", COMPETITORS[args.competitor]], cwd=ROOT)
                try:
                    time.sleep(2.0)
                    shared = _train(backend, args.steps, cache, env)
                finally:
                    rival.kill()
                    rival.wait()
                rows.append({"backend": backend, "xla_flags": label, "competitor": args.competitor,
                             "alone_s": alone["seconds_per_step"], "shared_s": shared["seconds_per_step"],
                             "slowdown": shared["seconds_per_step"] / alone["seconds_per_step"]})
    if args.json:
        print(json.dumps({"rows": rows, "target": TARGET}, indent=1))
        return 0
    print(f"| backend | XLA_FLAGS | s/step alone | s/step beside {args.competitor} | slowdown (target <= {TARGET}) |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['backend']} | {r['xla_flags']} | {r['alone_s']:.3f} | {r['shared_s']:.3f} | {r['slowdown']:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
