"""Energy + Fock on the host and JAX backends against PySCF, and what each keeps in memory (issue 11).

For each molecule (water, ethanol, benzene, an 18-atom molecule of QM9's elements, a
41-atom alkane C13H28) at ``--xc`` / def2-SVP on the training grid (level 1), one
energy+Fock evaluation for the same density matrix P (minao guess + a small symmetric
perturbation), side by side in one run, calls interleaved so all see the same load:

  host      : ``jax.jit(energy_and_fock)`` on :class:`Integrals` (AO values stored, libxc
              in a host callback) — today's training path;
  jax-dense : the same integrals with ``backend="jax"`` (XC in JAX on stored AO values);
  jax       : :class:`CompactIntegrals` (AO values computed from the basis set block by
              block on the device, packed DF factor) — the streamed training path;
  PySCF     : ``veff = mf.get_veff(dm=P); mf.energy_tot(dm=P, vhf=veff)`` with its DF
              factor and grids built before timing.

Reported: median seconds, ratio to PySCF (target ≤ 1.0, moonshot 0.5), the largest
|ΔE| and |ΔF| of each backend against the host path, compile time, and the bytes per
molecule each representation holds (host: AO values + unpacked DF factor; jax: the
compact record).

Usage (from the repository root; nothing else should be running):
    .venv/bin/python benchmarks/backends.py                     # table
    .venv/bin/python benchmarks/backends.py --molecules water --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _machine import machine_info  # noqa: E402  (benchmarks/ is sys.path[0] when run as a script)
from solver_core import _interleaved_times  # noqa: E402

import ase.build  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from basis.integrals import build_compact_integrals, build_integrals, make_mean_field  # noqa: E402
from basis.system import System  # noqa: E402
from solvers.energy import energy_and_fock  # noqa: E402

BASIS = "def2-svp"
GRID_LEVEL = 1  # vardft.config.TRAIN_GRID_LEVEL: what a training step evaluates
TARGET_RATIO = 1.0
MOONSHOT_RATIO = 0.5
PERTURBATION = 1e-3
SEED = 0


def alkane(n_carbon: int) -> System:
    """A straight-chain alkane CnH2n+2 in an all-anti zigzag (C–C 1.54 Å, C–H 1.09 Å)."""
    symbols, pos = [], []
    for i in range(n_carbon):
        s = 1.0 if i % 2 == 0 else -1.0
        c = np.array([1.258 * i, 0.444 * s, 0.0])
        symbols.append("C")
        pos.append(c)
        for z in (0.89, -0.89):
            symbols.append("H")
            pos.append(c + [0.0, 0.63 * s, z])
        if i in (0, n_carbon - 1):
            symbols.append("H")
            pos.append(c + [1.03 * (1 if i else -1), -0.36 * s, 0.0])
    return System(tuple(symbols), np.array(pos))


def qm9_sized() -> tuple[str, System]:
    """``(name, system)``: the largest closed-shell molecule of ASE's G2 set made of QM9's
    elements (C, H, N, O, F) with at most 18 atoms (QM9's median molecule has 18)."""
    from ase.collections import g2

    best = None
    for name in g2.names:
        atoms = ase.build.molecule(name)
        sym = set(atoms.get_chemical_symbols())
        if sym <= set("CHNOF") and len(atoms) <= 18 and sum(atoms.get_atomic_numbers()) % 2 == 0:
            if best is None or len(atoms) > len(best[1]):
                best = (name, atoms)
    return best[0], System.from_atoms(best[1])


def _nbytes(tree) -> int:
    return int(sum(np.asarray(a).nbytes for a in jax.tree.leaves(tree)))


def run_case(name: str, system: System, xc: str, repeats: int) -> dict:
    dense = build_integrals(system, xc, BASIS, GRID_LEVEL)
    compact = build_compact_integrals(system, xc, BASIS, GRID_LEVEL)
    rng = np.random.default_rng(SEED)
    d = rng.standard_normal((dense.nao, dense.nao)) * PERTURBATION
    P = jnp.asarray(np.asarray(dense.dm_guess) + 0.5 * (d + d.T))
    mf = make_mean_field(system, xc, BASIS, GRID_LEVEL)
    mf.with_df.build()
    mf.grids.build(with_non0tab=True)
    Pn = np.asarray(P)

    variants = {"host": dense, "jax-dense": dense.replace(backend="jax"), "jax": compact}
    compiled, compile_s, results = {}, {}, {}
    for key, ints in variants.items():
        t0 = time.perf_counter()
        compiled[key] = jax.jit(energy_and_fock).lower(P, ints).compile()
        compile_s[key] = time.perf_counter() - t0
        results[key] = jax.block_until_ready(compiled[key](P, ints))

    def pyscf():
        veff = mf.get_veff(mf.mol, Pn)
        return mf.energy_tot(dm=Pn, vhf=veff)

    fns = {k: (lambda k=k: jax.block_until_ready(compiled[k](P, variants[k]))) for k in variants}
    fns["pyscf"] = pyscf
    t = {k: median for k, (median, _) in _interleaved_times(fns, repeats).items()}
    e_host, _, F_host = results["host"]
    row = {
        "molecule": name, "atoms": len(system.symbols), "nao": dense.nao, "ngrid": int(dense.weights.shape[0]),
        "naux": int(dense.cderi.shape[0]), "xc": xc,
        "seconds": t, "ratio": {k: t[k] / t["pyscf"] for k in variants},
        "compile_s": compile_s,
        "max_dE": {k: abs(float(results[k][0] - e_host)) for k in variants},
        "max_dF": {k: float(jnp.abs(results[k][2] - F_host).max()) for k in variants},
        "bytes_per_molecule": {"host": _nbytes((dense.ao, dense.cderi)),
                               "jax": _nbytes((compact.cderi_packed, compact.coords, compact.weights))},
    }
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--xc", default="pbe")
    p.add_argument("--molecules", nargs="*", default=None, help="subset of: water ethanol benzene qm9 alkane")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    qname, qsys = qm9_sized()
    cases = {"water": System.from_atoms(ase.build.molecule("H2O")),
             "ethanol": System.from_atoms(ase.build.molecule("CH3CH2OH")),
             "benzene": System.from_atoms(ase.build.molecule("C6H6")),
             "qm9": qsys, "alkane": alkane(13)}
    labels = {"qm9": f"{qname} ({len(qsys.symbols)} atoms)", "alkane": "C13H28 (41 atoms)"}
    chosen = args.molecules or list(cases)
    rows = []
    for key in chosen:
        print(f"{key}: building and compiling", file=sys.stderr, flush=True)
        rows.append(run_case(labels.get(key, key), cases[key], args.xc, args.repeats))
    out = {"machine": machine_info(), "basis": BASIS, "grid_level": GRID_LEVEL, "rows": rows,
           "target_ratio": TARGET_RATIO}
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"energy + Fock, {args.xc}/{BASIS}, grid level {GRID_LEVEL}; seconds (ratio to PySCF)")
    print("| molecule | nao | ngrid | PySCF s | host | jax-dense | jax (streamed) | max abs dE / dF vs host, jax | MB/mol host -> jax |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        s, q = r["seconds"], r["ratio"]
        cell = lambda k: f"{s[k]:.3f} ({q[k]:.2f})"  # noqa: E731
        mb = r["bytes_per_molecule"]
        print(f"| {r['molecule']} | {r['nao']} | {r['ngrid']} | {s['pyscf']:.3f} | {cell('host')} | {cell('jax-dense')} "
              f"| {cell('jax')} | {r['max_dE']['jax']:.1e} / {r['max_dF']['jax']:.1e} "
              f"| {mb['host'] / 1e6:.1f} -> {mb['jax'] / 1e6:.1f} |")
    print(f"machine: {out['machine']['cpu']}, {out['machine']['cores']} cores, jax {out['machine']['jax_backend']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
