"""``vardft scf INPUT``: JAX SCF that reproduces PySCF's density-fitted RKS/RHF."""

from __future__ import annotations

import argparse
import sys

from basis.errors import InputError
from basis.functional import parse_functional
from basis.integrals import BACKENDS, build_compact_integrals, build_integrals
from basis.units import HARTREE_TO_EV
from solvers.scf import scf_from_integrals
from vardft.commands._common import print_json, read_input
from vardft.config import DEFAULT_SCF_BACKEND, DEFAULT_XC, MAX_SCF_CYCLES, MOLECULE_BASIS


def register(sub) -> None:
    p = sub.add_parser(
        "scf",
        help="self-consistent field of a molecule in JAX (reproduces PySCF)",
        description=(
            "Run a closed-shell SCF in JAX with PySCF's default settings: "
            "pyscf.dft.RKS(mol, xc).density_fit() (pyscf.scf.RHF for --xc hf), "
            "grid level 3, PySCF's default auxiliary basis, minao guess. "
            "INPUT is an xyz/extxyz file (every frame is computed) or a built-in molecule name."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("input", metavar="INPUT", help="structure file (xyz, extxyz, ...) or built-in name")
    p.add_argument("--xc", default=DEFAULT_XC, help="functional, PySCF names: hf, lda,vwn, pbe, blyp, b3lyp, pbe0, ...")
    p.add_argument("--basis", default=MOLECULE_BASIS, help="any basis set PySCF knows")
    p.add_argument("--charge", type=int, default=None, help="total charge (default: from the file, else 0)")
    p.add_argument(
        "--backend", choices=BACKENDS, default=DEFAULT_SCF_BACKEND,
        help="where the XC term runs: host (libxc through PySCF in a host callback, AO values stored) or "
             "jax (XC and AO values in JAX, computed block by block from the basis set; no callback)",
    )
    p.add_argument("--max-cycle", type=int, default=MAX_SCF_CYCLES, help="largest number of SCF cycles")
    p.add_argument("--json", action="store_true", help="print one JSON object per frame instead of a table")
    p.set_defaults(func=run)


def _summary(system, res, xc, basis, backend) -> dict:
    return {
        "formula": system.formula,
        "energy": res.energy,
        "converged": res.converged,
        "iterations": res.iterations,
        "mo_energy": res.mo_energy,
        "homo": res.homo,
        "lumo": res.lumo,
        "gap": res.lumo - res.homo,
        "components": res.components,
        "nao": int(res.mo_coeff.shape[0]),
        "n_electrons": res.n_electrons,
        "xc": xc,
        "basis": basis,
        "backend": backend,
        "wall_time_s": res.wall_time,
    }


def run(args) -> int:
    functional = parse_functional(args.xc)
    if args.max_cycle < 1:
        raise InputError(f"--max-cycle must be at least 1, got {args.max_cycle}")
    systems = read_input(args.input, charge=args.charge)
    status = 0
    for k, system in enumerate(systems):
        build = build_integrals if args.backend == "host" else build_compact_integrals
        ints = build(system, xc=functional.name, basis=args.basis)
        res = scf_from_integrals(ints, max_cycle=args.max_cycle)
        out = _summary(system, res, functional.name, args.basis, args.backend)
        if args.json:
            print_json(out)
        else:
            tag = f" frame {k}" if len(systems) > 1 else ""
            print(f"{system.formula}{tag}  {functional.name}/{args.basis}  nao={out['nao']}")
            print(f"  total energy   {res.energy:20.10f} Eh   ({'converged' if res.converged else 'NOT converged'} in {res.iterations} cycles, {res.wall_time:.1f} s)")
            for name, value in res.components.items():
                if name != "total":
                    print(f"  {name:<14} {value:20.10f} Eh")
            print(f"  HOMO {res.homo:.6f} Eh ({res.homo * HARTREE_TO_EV:.3f} eV)   LUMO {res.lumo:.6f} Eh ({res.lumo * HARTREE_TO_EV:.3f} eV)")
        if not res.converged:
            print(f"vardft scf: warning: {system.formula} did not converge in {res.iterations} cycles", file=sys.stderr)
            status = 1
    return status
