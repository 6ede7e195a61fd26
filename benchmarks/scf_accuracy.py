"""Accuracy matrix: vardft's JAX SCF against PySCF's own SCF (issue 2, point 7).

For each molecule × functional × basis it runs

    ours : solvers.scf.scf_from_integrals(basis.integrals.build_integrals(system, xc, basis))
    PySCF: pyscf.dft.RKS(mol, xc=xc).density_fit().run()
           (pyscf.scf.RHF(mol).density_fit().run() for xc = hf)

with PySCF's default settings on both sides, and reports |ΔE|, the largest
|Δε| over the occupied orbitals and |ΔLUMO|. A case PASSes when both SCFs
converged, |ΔE| ≤ 1e-6 Eh and max |Δε_occ| ≤ 1e-5 Eh (the issue's criteria);
the LUMO is judged against 1e-5 Eh in its own column.

Molecules come from ASE's G2 collection (``ase.build.molecule``). The default
is a modest subset that runs in a few minutes on two cores; ``--all`` runs the
full matrix.

Usage (from the repository root):
    .venv/bin/python benchmarks/scf_accuracy.py              # default subset, table
    .venv/bin/python benchmarks/scf_accuracy.py --all --json
    .venv/bin/python benchmarks/scf_accuracy.py --molecules HCN,CO2 --xc pbe lda,vwn --basis def2-tzvp
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _machine import machine_info  # noqa: E402  (benchmarks/ is sys.path[0] when run as a script)

import ase.build  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)

from basis.integrals import build_integrals  # noqa: E402
from basis.system import System  # noqa: E402
from solvers.scf import scf_from_integrals  # noqa: E402

ENERGY_TOL = 1e-6
"""Largest allowed |ΔE|, Hartree (issue 2, point 7)."""
ORBITAL_TOL = 1e-5
"""Largest allowed |Δε| of any occupied orbital (and of the LUMO), Hartree."""

ALL_MOLECULES = ("H2O", "NH3", "HF", "CH4", "CO2", "HCN", "H2CO", "CH3OH", "H2CF2", "N2", "C2H4")
"""G2 molecules of H, C, N, O, F (ASE has no CH3F; CH2F2 stands in as the fluorocarbon)."""
DEFAULT_MOLECULES = ("H2O", "HF", "HCN", "H2CO")
FUNCTIONALS = ("hf", "lda,vwn", "pbe", "b3lyp")
BASES = ("def2-svp", "def2-tzvp", "cc-pvdz")
DEFAULT_BASES = BASES


TIGHT_CONV_TOL = 1e-12
"""PySCF energy threshold with ``--tight-reference`` (its default is 1e-9)."""
TIGHT_CONV_TOL_GRAD = 1e-8
"""PySCF gradient threshold with ``--tight-reference`` (its default is sqrt(conv_tol) ≈ 3e-5)."""


def pyscf_reference(system: System, xc: str, basis: str, tight: bool = False) -> dict:
    """PySCF's own density-fitted SCF, default settings unless ``tight``."""
    from pyscf import dft, scf

    mol = system.to_mole(basis)
    t0 = time.perf_counter()
    if xc == "hf":
        mf = scf.RHF(mol).density_fit()
    else:
        mf = dft.RKS(mol, xc=xc).density_fit()
    mf.verbose = 0
    if tight:
        mf.conv_tol, mf.conv_tol_grad = TIGHT_CONV_TOL, TIGHT_CONV_TOL_GRAD
    mf.run()
    wall = time.perf_counter() - t0
    order = np.argsort(mf.mo_energy, kind="stable")
    return {
        "energy": float(mf.e_tot),
        "mo_energy": np.asarray(mf.mo_energy)[order],
        "converged": bool(mf.converged),
        "n_occupied": int(mol.nelectron // 2),
        "nao": int(mol.nao_nr()),
        "wall_s": wall,
    }


def compare(molecule: str, xc: str, basis: str, tight: bool = False) -> dict:
    system = System.from_atoms(ase.build.molecule(molecule))
    t0 = time.perf_counter()
    ours = scf_from_integrals(build_integrals(system, xc=xc, basis=basis))
    wall = time.perf_counter() - t0
    ref = pyscf_reference(system, xc, basis, tight)
    nocc = ref["n_occupied"]
    eps, eps_ref = np.asarray(ours.mo_energy), ref["mo_energy"]
    d_e = abs(ours.energy - ref["energy"])
    d_occ = float(np.abs(eps[:nocc] - eps_ref[:nocc]).max())
    d_lumo = float(abs(eps[nocc] - eps_ref[nocc])) if nocc < min(len(eps), len(eps_ref)) else float("nan")
    converged = bool(ours.converged and ref["converged"])
    passed = converged and d_e <= ENERGY_TOL and d_occ <= ORBITAL_TOL
    return {
        "molecule": molecule,
        "xc": xc,
        "basis": basis,
        "nao": ref["nao"],
        "energy": ours.energy,
        "energy_pyscf": ref["energy"],
        "abs_delta_energy": d_e,
        "max_abs_delta_occupied": d_occ,
        "abs_delta_lumo": d_lumo,
        "lumo_status": "PASS" if d_lumo <= ORBITAL_TOL else "FAIL",
        "converged": ours.converged,
        "converged_pyscf": ref["converged"],
        "iterations": ours.iterations,
        "wall_s": wall,
        "wall_pyscf_s": ref["wall_s"],
        "status": "PASS" if passed else "FAIL",
    }


def print_table(result: dict) -> None:
    m = result["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, jax {m['jax']}, pyscf {m['pyscf']}, {m['date']}")
    ref = (f"conv_tol={TIGHT_CONV_TOL:g}, conv_tol_grad={TIGHT_CONV_TOL_GRAD:g}" if result["tight_reference"]
           else "PySCF's default thresholds")
    print(f"ours: build_integrals + scf_from_integrals  vs  PySCF: RKS(mol, xc).density_fit().run() (RHF for hf), {ref}")
    print(f"PASS: |dE| <= {ENERGY_TOL:g} and max|d eps_occ| <= {ORBITAL_TOL:g} Eh, both converged")
    print("it: our Fock builds; ours s / PySCF s: wall time of the whole call (integrals, compilation, SCF)")
    print()
    hdr = (f"{'molecule':<9}{'xc':<9}{'basis':<11}{'nao':>5}{'E (Eh)':>17}{'|dE|':>10}{'max|docc|':>11}"
           f"{'|dLUMO|':>10} {'LUMO':<5}{'it':>4}{'ours s':>8}{'PySCF s':>8}  status")
    print(hdr)
    print("-" * len(hdr))
    for r in result["cases"]:
        conv = "" if (r["converged"] and r["converged_pyscf"]) else " (not converged)"
        print(f"{r['molecule']:<9}{r['xc']:<9}{r['basis']:<11}{r['nao']:>5}{r['energy']:>17.9f}"
              f"{r['abs_delta_energy']:>10.1e}{r['max_abs_delta_occupied']:>11.1e}{r['abs_delta_lumo']:>10.1e}"
              f" {r['lumo_status']:<5}{r['iterations']:>4}{r['wall_s']:>8.2f}{r['wall_pyscf_s']:>8.2f}"
              f"  {r['status']}{conv}")
    s = result["summary"]
    print()
    print(f"{s['passed']}/{s['cases']} PASS (energy and occupied orbitals); LUMO within "
          f"{ORBITAL_TOL:g} Eh in {s['lumo_passed']}/{s['cases']}; "
          f"largest |dE| {s['max_abs_delta_energy']:.1e}, largest max|d eps_occ| "
          f"{s['max_abs_delta_occupied']:.1e}, largest |dLUMO| {s['max_abs_delta_lumo']:.1e} Eh")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--all", action="store_true", help="the full matrix: all molecules, functionals, bases")
    parser.add_argument("--molecules", help=f"comma-separated G2 names (default {','.join(DEFAULT_MOLECULES)})")
    parser.add_argument("--xc", nargs="+",
                        help=f"functionals, space-separated (default: {' '.join(FUNCTIONALS)}); "
                             "PySCF names, so lda,vwn is one name")
    parser.add_argument("--basis", help=f"comma-separated bases (default {','.join(DEFAULT_BASES)})")
    parser.add_argument("--tight-reference", action="store_true",
                        help=f"converge PySCF to conv_tol={TIGHT_CONV_TOL:g}, conv_tol_grad={TIGHT_CONV_TOL_GRAD:g} "
                             "instead of its defaults (separates PySCF's own convergence error from ours)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)

    molecules = ALL_MOLECULES if args.all else DEFAULT_MOLECULES
    bases = BASES if args.all else DEFAULT_BASES
    if args.molecules:
        molecules = tuple(m.strip() for m in args.molecules.split(",") if m.strip())
    if args.basis:
        bases = tuple(b.strip().lower() for b in args.basis.split(",") if b.strip())
    xcs = tuple(x.strip().lower() for x in args.xc) if args.xc else FUNCTIONALS
    for molecule in molecules:
        try:
            ase.build.molecule(molecule)
        except KeyError:
            parser.error(f"ase.build.molecule does not know {molecule!r} (use G2 names such as H2O, CH3OH)")

    cases = []
    for molecule in molecules:
        for basis in bases:
            for xc in xcs:
                print(f"[scf_accuracy] {molecule} {xc} {basis}", file=sys.stderr, flush=True)
                cases.append(compare(molecule, xc, basis, args.tight_reference))
    summary = {
        "cases": len(cases),
        "passed": sum(c["status"] == "PASS" for c in cases),
        "lumo_passed": sum(c["lumo_status"] == "PASS" for c in cases),
        "max_abs_delta_energy": max(c["abs_delta_energy"] for c in cases),
        "max_abs_delta_occupied": max(c["max_abs_delta_occupied"] for c in cases),
        "max_abs_delta_lumo": max(c["abs_delta_lumo"] for c in cases),
        "energy_tol": ENERGY_TOL,
        "orbital_tol": ORBITAL_TOL,
    }
    result = {"benchmark": "scf_accuracy", "machine": machine_info(), "tight_reference": args.tight_reference,
              "summary": summary, "cases": cases}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print_table(result)
    return 0 if summary["passed"] == summary["cases"] else 1


if __name__ == "__main__":
    sys.exit(main())
