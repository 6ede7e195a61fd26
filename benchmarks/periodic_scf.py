"""JAX periodic SCF vs PySCF KRKS: accuracy and time, side by side in one run.

For each crystal / basis / functional, build the integrals
(:func:`basis.pbc_integrals.build_periodic_integrals`), run vardft's JAX
k-point SCF (compile time measured apart from the SCF itself), then
``pyscf.pbc.dft.KRKS(cell, kpts, xc=xc)`` (default FFT density fitting) with
the same convergence threshold, and report:

- energy difference per cell (Eh) and largest eigenvalue difference at the
  SCF k-points (Eh),
- seconds: vardft integrals, compile, SCF; PySCF ``run()``,
- ratios: PySCF / vardft SCF, and PySCF / vardft end to end (integrals +
  compile + SCF).

Usage:
    python benchmarks/periodic_scf.py                       # Si gth-szv LDA+PBE, 2x2x2
    python benchmarks/periodic_scf.py --systems si diamond --basis gth-szv gth-dzvp \\
        --xc lda,vwn pbe --kmesh 2 2 2 --json
    python benchmarks/periodic_scf.py --systems hbn --kmesh 3 3 1

The machine's load changes timings; both codes run in the same process, one
after the other, so the ratio is the number to read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)


def run_case(system_name: str, basis: str, xc: str, kmesh, conv_tol: float, pseudo: str | None = None) -> dict:
    from basis.crystal import read_crystal
    from basis.pbc_integrals import make_periodic_mean_field, periodic_integrals_from_mean_field
    from solvers.periodic import run_periodic_scf

    system = read_crystal(system_name)
    t0 = time.perf_counter()
    mf = make_periodic_mean_field(system, xc=xc, basis=basis, pseudo=pseudo, kmesh=kmesh)
    ints = periodic_integrals_from_mean_field(mf)
    jax.block_until_ready(ints.ao)
    t_ints = time.perf_counter() - t0

    result = run_periodic_scf(ints, conv_tol=conv_tol)

    mf.conv_tol = conv_tol
    t0 = time.perf_counter()
    mf.run()
    t_pyscf = time.perf_counter() - t0

    mo_ref = np.asarray(mf.mo_energy, dtype=np.float64)
    mo = np.asarray(result.mo_energy)
    t_jax_total = t_ints + result.timings["compile"] + result.timings["scf"]
    return {
        "system": system_name,
        "basis": basis,
        "xc": ints.functional.name,
        "pseudo": ints.pseudo,
        "kmesh": list(ints.kmesh),
        "nao": ints.nao,
        "mesh": list(ints.mesh),
        "bloch_ao_gib": round(ints.ao.nbytes / 2**30, 3),
        "energy_eh": float(result.energy),
        "pyscf_energy_eh": float(mf.e_tot),
        "energy_diff_eh": float(result.energy) - float(mf.e_tot),
        "max_eig_diff_eh": float(np.abs(mo - mo_ref).max()),
        "converged": bool(result.converged),
        "pyscf_converged": bool(mf.converged),
        "n_iter": int(result.n_iter),
        "time_integrals_s": t_ints,
        "time_compile_s": result.timings["compile"],
        "time_scf_s": result.timings["scf"],
        "time_pyscf_s": t_pyscf,
        "ratio_scf": t_pyscf / result.timings["scf"],
        "ratio_end_to_end": t_pyscf / t_jax_total,
    }


def _table(rows: list[dict]) -> str:
    head = (
        f"{'system':8s} {'basis':9s} {'xc':8s} {'kmesh':6s} {'nao':>4s} {'dE (Eh)':>9s} {'max dε (Eh)':>11s} "
        f"{'ints s':>7s} {'compile s':>9s} {'scf s':>7s} {'pyscf s':>8s} {'pyscf/scf':>9s} {'pyscf/all':>9s}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['system']:8s} {r['basis']:9s} {r['xc']:8s} {'x'.join(map(str, r['kmesh'])):6s} {r['nao']:4d} "
            f"{r['energy_diff_eh']:9.1e} {r['max_eig_diff_eh']:11.1e} {r['time_integrals_s']:7.1f} "
            f"{r['time_compile_s']:9.1f} {r['time_scf_s']:7.2f} {r['time_pyscf_s']:8.1f} "
            f"{r['ratio_scf']:9.1f} {r['ratio_end_to_end']:9.2f}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--systems", nargs="+", default=["si"], help="built-in crystals or files (default si)")
    p.add_argument("--basis", nargs="+", default=["gth-szv"])
    p.add_argument("--xc", nargs="+", default=["lda,vwn", "pbe"])
    p.add_argument("--kmesh", nargs=3, type=int, default=None, help="default 2 2 2 (1 along vacuum)")
    p.add_argument("--conv-tol", type=float, default=1e-10, help="energy threshold for both codes, Eh")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = p.parse_args(argv)

    from basis.crystal import read_crystal, vacuum_directions

    rows = []
    for name in args.systems:
        kmesh = args.kmesh
        if kmesh is None:
            kmesh = [1 if v else 2 for v in vacuum_directions(read_crystal(name))]
        for basis in args.basis:
            for xc in args.xc:
                row = run_case(name, basis, xc, kmesh, args.conv_tol)
                rows.append(row)
                if not args.json:
                    print(_table([row]).splitlines()[-1], flush=True)
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print()
        print(_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
