"""Forward-pass time and parameter count of the Hamiltonian model per preset.

Molecules at def2-SVP (elements H, C, N, O, F): water, ethanol and biphenyl
(22 atoms; ASE's G2 set has no 20-atom molecule of these elements, so the
closest one of ASE's built-in molecules is used). For each preset and molecule
it reports the compile time, the forward time of one molecule, and forward +
backward (gradient of sum(H**2) w.r.t. the parameters) for a batch of
``--batch`` copies. Times are wall-clock medians after compilation.

Usage:
    python benchmarks/model_forward.py [--presets S M L] [--batch 16] [--repeat 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from ase.build import molecule  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from basis.system import System  # noqa: E402
from vardft.hamiltonian import prepare_batch  # noqa: E402
from vardft.model import ModelConfig, count_params, init_params, predict_hamiltonian  # noqa: E402

MOLECULES = {"water": "H2O", "ethanol": "CH3CH2OH", "biphenyl": "biphenyl"}
ELEMENTS = ("H", "C", "N", "O", "F")


def _median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def run(presets, batch_size: int, repeat: int, basis: str = "def2-svp") -> list[dict]:
    rows = []
    for preset in presets:
        cfg = ModelConfig.preset(preset, basis=basis, elements=ELEMENTS)
        params = init_params(jax.random.PRNGKey(0), cfg)
        n_params = count_params(params)
        grad = jax.jit(jax.grad(lambda p, b: jnp.sum(predict_hamiltonian(p, b) ** 2)))
        for name, ase_name in MOLECULES.items():
            system = System.from_atoms(molecule(ase_name))
            one = prepare_batch([system], cfg)
            many = prepare_batch([system] * batch_size, cfg)
            t0 = time.perf_counter()
            jax.block_until_ready(predict_hamiltonian(params, one))
            compile_fwd = time.perf_counter() - t0
            t0 = time.perf_counter()
            jax.block_until_ready(grad(params, many))
            compile_grad = time.perf_counter() - t0
            rows.append(
                dict(
                    preset=preset,
                    molecule=name,
                    natom=system.natom,
                    nao=int(one.nao[0]),
                    params=n_params,
                    compile_forward_s=round(compile_fwd, 2),
                    compile_grad_s=round(compile_grad, 2),
                    forward_ms=round(1e3 * _median_time(lambda: predict_hamiltonian(params, one), repeat), 2),
                    batch=batch_size,
                    forward_backward_batch_ms=round(1e3 * _median_time(lambda: grad(params, many), repeat), 1),
                )
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["S", "M", "L"])
    ap.add_argument("--batch", type=int, default=16, help="molecules per batch for forward+backward")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--basis", default="def2-svp")
    ap.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    args = ap.parse_args(argv)
    rows = run(args.presets, args.batch, args.repeat, args.basis)
    if args.json:
        print(json.dumps(dict(device=str(jax.devices()[0]), basis=args.basis, rows=rows), indent=1))
        return 0
    print(f"basis {args.basis}, device {jax.devices()[0]}, float64, medians of {args.repeat}")
    head = f"{'preset':6} {'molecule':9} {'atoms':>5} {'nao':>4} {'params':>8} {'compile s':>9} " \
           f"{'forward ms':>10} {'fwd+bwd ms (batch)':>19}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['preset']:6} {r['molecule']:9} {r['natom']:5d} {r['nao']:4d} {r['params']:8d} "
            f"{r['compile_forward_s']:9.1f} {r['forward_ms']:10.1f} "
            f"{r['forward_backward_batch_ms']:12.1f} ({r['batch']})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
