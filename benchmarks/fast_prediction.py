"""Prediction against the SCF it replaces (issue 14): PySCF from minao, ``vardft.initial_guess``,
PySCF from that guess, and the predicted Hamiltonian's accuracy — per molecule and model.

Rows: held-out water conformations (models trained on water), ethanol, benzene, an 18-atom
QM9 molecule and a 41-atom alkane (models whose elements cover them); every model given
with ``--model`` is run on every row it covers. Then ``predict_many`` throughput on
``--throughput N`` QM9 molecules (first call with compilation, then warm).

Timings are wall seconds on this machine, mean of ``--repeats`` (after one warm-up call of
``initial_guess``, whose time with compilation is reported as ``guess_first_s``).
PySCF runs its default SCF (grid level 3, ``conv_tol`` 1e-9, density fitting) with the
model's functional and basis. ``initial_guess`` of a ``"sap"``-baseline model builds no DF
factor and no XC grid; ``build_integrals_calls`` counts how often vardft's integral
builder ran inside it (0 on the fast path). Accuracy: the predicted H against PySCF's
converged Fock matrix (MAE over all elements), occupied orbital energies (MAE),
SCF cycles from the guess / from minao. A model with 0 steps (untrained: the cost of a
trained one of its size, not its guess) gets the timing columns only.

The ceiling: PySCF's SCF started from its own converged density, the best any guess can
do. It still builds its grid and DF factor, evaluates the Fock matrix at least once and
checks convergence, so ``ceiling_speedup`` (SCF from minao / SCF from the converged
density) bounds the end-to-end speed-up of every model on that molecule.

Usage (nothing else running):
    .venv/bin/python benchmarks/fast_prediction.py --model water-sap=runs/water-sap \\
        --model water-minao=runs/water-minao --frames 5 --throughput 100 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

TARGET_GUESS_SPEEDUP = 20.0
"""``initial_guess`` at least this many times faster than PySCF's SCF (issue 14)."""


def alkane(n_carbon: int):
    """An all-anti n-alkane C_nH_(2n+2) (ideal tetrahedral angles, C–C 1.53 Å, C–H 1.09 Å)."""
    from basis.system import System

    cc, ch = 1.53, 1.09
    half = np.deg2rad(109.47 / 2)
    carbons = [np.array([k * cc * np.sin(half), (k % 2) * cc * np.cos(half), 0.0]) for k in range(n_carbon)]
    symbols, positions = [], []
    for k, c in enumerate(carbons):
        symbols.append("C")
        positions.append(c)
        up = 1.0 if k % 2 else -1.0  # hydrogens point away from the zigzag's neighbours
        for z in (1.0, -1.0):
            positions.append(c + ch * np.array([0.0, up * np.cos(np.deg2rad(54.75)), z * np.sin(np.deg2rad(54.75))]))
            symbols.append("H")
    for end, sign in ((carbons[0], -1.0), (carbons[-1], 1.0)):
        symbols.append("H")
        positions.append(end + ch * np.array([sign, 0.0, 0.0]))
    return System(tuple(symbols), np.array(positions))


def molecules(frames: int) -> list[tuple[str, list]]:
    """``[(row name, [systems])]``."""
    from ase.build import molecule

    from basis.system import System
    from vardft.data import load_dataset
    from vardft.qm9 import qm9_split

    water = load_dataset("water", seed=0).validation[:frames]
    held_out = qm9_split(seed=0, n_train=1, n_validation=100).validation  # never trained on by `train qm9`
    qm9 = [m for m in held_out if len(m.system().symbols) == 18]
    return [
        ("water", list(water)),
        ("ethanol", [System.from_atoms(molecule("CH3CH2OH"))]),
        ("benzene", [System.from_atoms(molecule("C6H6"))]),
        ("qm9-18-atoms", [qm9[0].system()]),
        ("alkane-41-atoms", [alkane(13)]),
    ]


def covers(model, systems) -> bool:
    return set(s for sys_ in systems for s in sys_.symbols) <= set(model.model_config.elements)


def time_scf(system, xc: str, basis: str, dm0=None) -> tuple[float, int, object]:
    from pyscf import dft

    mf = dft.RKS(system.to_mole(basis), xc=xc).density_fit()
    mf.verbose = 0
    cycles = []
    mf.callback = lambda env: cycles.append(1)
    t0 = time.perf_counter()
    mf.kernel(dm0=dm0)
    return time.perf_counter() - t0, len(cycles), mf


def measure(model, system, repeats: int) -> dict:
    import scipy.linalg

    import vardft.tasks as tasks
    from vardft.api import initial_guess

    mol = system.to_mole(model.basis)
    t0 = time.perf_counter()
    initial_guess(model, mol)
    first = time.perf_counter() - t0
    calls = [0]
    real = tasks.build_integrals

    def counted(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    tasks.build_integrals = counted
    try:
        guess_times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            dm0 = initial_guess(model, mol)
            guess_times.append(time.perf_counter() - t0)
    finally:
        tasks.build_integrals = real
    scf_minao = [time_scf(system, model.xc, model.basis) for _ in range(repeats)]
    t_scf, t_guess = float(np.mean([r[0] for r in scf_minao])), float(np.mean(guess_times))
    converged = scf_minao[0][2].make_rdm1()
    scf_exact = [time_scf(system, model.xc, model.basis, converged) for _ in range(repeats)]
    t_exact = float(np.mean([r[0] for r in scf_exact]))
    timing = {
        "atoms": len(system.symbols),
        "nao": int(mol.nao),
        "scf_minao_s": t_scf,
        "scf_minao_cycles": float(np.mean([r[1] for r in scf_minao])),
        "guess_first_s": first,
        "guess_s": t_guess,
        "build_integrals_calls": calls[0] / repeats,
        "guess_speedup": t_scf / t_guess,
        "scf_from_converged_s": t_exact,
        "scf_from_converged_cycles": float(np.mean([r[1] for r in scf_exact])),
        "ceiling_speedup": t_scf / t_exact,
    }
    if model.step == 0:  # an untrained model: its cost is a trained one's, its guess is not
        return timing
    scf_guess = [time_scf(system, model.xc, model.basis, dm0) for _ in range(repeats)]
    mf = scf_minao[0][2]
    F, S = mf.get_fock(), mf.get_ovlp()
    H = model.hamiltonian(system)
    n_occ = mol.nelectron // 2
    e_pred = scipy.linalg.eigh(H, S, eigvals_only=True)[:n_occ]
    e_ref = scipy.linalg.eigh(F, S, eigvals_only=True)[:n_occ]
    t_from = float(np.mean([r[0] for r in scf_guess]))
    return {
        **timing,
        "scf_from_guess_s": t_from,
        "scf_from_guess_cycles": float(np.mean([r[1] for r in scf_guess])),
        "guess_plus_scf_s": t_guess + t_from,
        "end_to_end_speedup": t_scf / (t_guess + t_from),
        "hamiltonian_mae": float(np.abs(H - F).mean()),
        "occupied_energy_mae": float(np.abs(e_pred - e_ref).mean()),
        "scf_cycles_ratio": float(np.mean([r[1] for r in scf_guess]) / np.mean([r[1] for r in scf_minao])),
    }


def throughput(model, n: int) -> dict:
    from vardft.qm9 import qm9_split

    systems = [m.system() for m in qm9_split(seed=0, n_train=1, n_validation=n).validation]  # held out up to 100
    t0 = time.perf_counter()
    model.predict_many(systems[:1])
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.predict_many(systems)
    total = time.perf_counter() - t0
    return {"molecules": n, "first_call_s": first, "total_s": total, "per_molecule_s": total / n}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, metavar="NAME=RUN", help="a model to run (repeatable)")
    p.add_argument("--frames", type=int, default=5, help="held-out water conformations")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--throughput", type=int, default=0, metavar="N",
                   help="predict_many on N QM9 molecules with each model that covers QM9's elements")
    p.add_argument("--throughput-models", nargs="+", default=None, metavar="NAME",
                   help="only these models in the throughput measurement")
    p.add_argument("--rows", nargs="+", default=None, metavar="ROW", help="only these molecule rows")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    from _machine import machine_info

    from vardft.api import load

    models = {}
    for spec in args.model:
        name, _, run = spec.partition("=")
        models[name] = load(run, "molecule")
    rows = []
    for row, systems in molecules(args.frames):
        if args.rows is not None and row not in args.rows:
            continue
        for name, model in models.items():
            if not covers(model, systems):
                continue
            per = [measure(model, s, args.repeats) for s in systems]
            mean = {k: float(np.mean([m[k] for m in per])) for k in per[0]}
            rows.append({"molecule": row, "model": name, "baseline": model.config.baseline,
                         "steps": model.step, "xc": model.xc, "basis": model.basis, "frames": len(per), **mean})
            print(f"{row} / {name}: done", file=sys.stderr, flush=True)
    through = {}
    if args.throughput:
        for name, model in models.items():
            wanted = args.throughput_models is None or name in args.throughput_models
            if wanted and {"C", "H", "N", "O", "F"} <= set(model.model_config.elements):
                through[name] = throughput(model, args.throughput)
    out = {"machine": machine_info(), "rows": rows, "throughput": through,
           "target_guess_speedup": TARGET_GUESS_SPEEDUP}
    if args.json:
        print(json.dumps(out))
        return 0
    head = ("molecule", "model", "atoms", "SCF s", "cyc", "guess s", "(1st)", "ints", "SCF←g s", "cyc",
            "g+SCF s", "g ×", "e2e ×", "ceil ×", "H MAE μEh", "occ ε mEh", "ratio")
    print(" | ".join(head))
    def fmt(r, key, spec, scale=1.0):
        return "n/a" if key not in r else format(r[key] * scale, spec)

    for r in rows:
        print(" | ".join([
            r["molecule"], f"{r['model']} ({r['baseline']}, {r['steps']} steps)", f"{r['atoms']:.0f}",
            fmt(r, "scf_minao_s", ".3f"), fmt(r, "scf_minao_cycles", ".1f"), fmt(r, "guess_s", ".3f"),
            fmt(r, "guess_first_s", ".1f"), fmt(r, "build_integrals_calls", ".0f"), fmt(r, "scf_from_guess_s", ".3f"),
            fmt(r, "scf_from_guess_cycles", ".1f"), fmt(r, "guess_plus_scf_s", ".3f"), fmt(r, "guess_speedup", ".1f"),
            fmt(r, "end_to_end_speedup", ".2f"), fmt(r, "ceiling_speedup", ".2f"), fmt(r, "hamiltonian_mae", ".0f", 1e6),
            fmt(r, "occupied_energy_mae", ".2f", 1e3), fmt(r, "scf_cycles_ratio", ".2f"),
        ]))
    for name, t in through.items():
        print(f"predict_many, {t['molecules']} QM9 molecules, {name}: first call {t['first_call_s']:.1f} s, "
              f"then {t['total_s']:.1f} s ({t['per_molecule_s'] * 1e3:.0f} ms per molecule)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
