"""Large cells from a small-cell model (issue 13): time and memory of H(R) and of bands near the gap.

For each ``--sizes n`` a displaced n×n×n supercell of the 2-atom Si cell (2n³ atoms,
Gaussian displacements of ``--sigma`` Å, seed 0) goes through a crystal model on the sap
baseline in a fresh process (so each peak memory is its own):

- ``baseline_s``: S(R), H_base(R) blocks (:func:`basis.pbc_sap.lattice_blocks`);
- ``network_s``: the network's blocks (one forward pass, ``predict_blocks``) and their sum;
- ``bands_s``: H(k), S(k) at ``--kpoints`` k-points along Γ–X and the ``--nbands`` bands
  nearest the gap at each (``--solver dense``: LAPACK's subset solver; ``sparse``: sparse
  matrices and shift-invert Lanczos);
- ``peak_gb``: the process's peak resident memory.

``--model RUN`` uses a trained sap run (elements must cover Si); without it an untrained
preset-S network of the crystal defaults (same cost, not the same bands). Targets (issue 13,
this 2-core CPU): 1,000 atoms in ≤ 10 min and ≤ 8 GB.

Usage (nothing else running):
    .venv/bin/python benchmarks/supercell_bands.py --sizes 1 2 3 4 --json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TARGET_MINUTES = 10.0
TARGET_GB = 8.0
TARGET_ATOMS = 1000


def displaced_supercell(n: int, sigma: float):
    """The n×n×n supercell of the 2-atom Si cell with Gaussian displacements (Å, seed 0), ASE Atoms."""
    import numpy as np
    from ase.build import bulk

    from basis.crystal import SI_LATTICE_ANGSTROM

    atoms = bulk("Si", "diamond", a=SI_LATTICE_ANGSTROM) * (n, n, n)
    atoms.positions += np.random.default_rng(0).normal(0.0, sigma, atoms.positions.shape)
    return atoms


def measure(n: int, model_dir: str | None, sigma: float, kpoints: int, nbands: int, solver: str = "dense") -> list[dict]:
    """One size, in this process: a row per solver (``"both"``: dense, then sparse on the same
    blocks; ``peak_gb`` of the sparse row is then the peak of the two)."""
    import jax
    import numpy as np
    from basis.system import System
    from basis.units import BOHR_ANGSTROM
    from vardft.api import _sparse_window_bands, _window_eigenvalues, band_window
    from vardft.config import make_config
    from vardft.hamiltonian import prepare_batch, real_space_blocks
    from vardft.model import init_params, predict_blocks
    from vardft.tasks import REAL_SPACE_EDGE_CHUNK, CrystalTask, model_config_for

    system = System.from_atoms(displaced_supercell(n, sigma))
    if model_dir:
        from vardft.api import load

        model = load(model_dir, kind="crystal")
        task, model_cfg, params = model.task, model.model_config, model.params
    else:
        cfg = make_config("crystal", baseline="sap", xc="pbe", pseudo="gth-pbe", kmesh=(2, 2, 2))
        task, model_cfg = CrystalTask(cfg), model_config_for(cfg, ("Si",))
        params = init_params(jax.random.PRNGKey(0), model_cfg)
    t0 = time.perf_counter()
    base = task.sap_blocks(system)
    t1 = time.perf_counter()
    batch = prepare_batch([system], model_cfg, gather=False)
    diag, edge = predict_blocks(params, batch, edge_chunk=REAL_SPACE_EDGE_CHUNK)  # as CrystalTask.real_space
    pairs, shifts, blocks = real_space_blocks(diag, edge, batch, 0)
    full = base.plus(pairs, shifts, task.config.delta_scale * blocks)
    t2 = time.perf_counter()
    recip = 2 * np.pi * np.linalg.inv(np.asarray(system.cell) / BOHR_ANGSTROM).T
    x_point = 0.5 * (recip[0] + recip[1])  # the supercell zone's X (the primitive X folded by n)
    kpts = np.linspace(0.0, 1.0, kpoints)[:, None] * x_point[None, :]
    n_occ = 2 * len(system.symbols)  # 4 valence electrons per Si: 2 per atom occupied bands
    lo, hi = band_window(full.nao, n_occ, nbands)
    common = {
        "cells": n, "atoms": len(system.symbols), "nao": full.nao, "blocks": len(full.pairs),
        "pair_fraction": len(full.pairs) / len(system.symbols) ** 2, "baseline_s": t1 - t0, "network_s": t2 - t1,
        "kpoints": kpoints, "nbands": hi - lo + 1,
    }
    rows, first = [], None
    for one in (("dense", "sparse") if solver == "both" else (solver,)):
        t2 = time.perf_counter()
        if one == "sparse":  # as CrystalModel.bands(solver="sparse")
            bands = _sparse_window_bands(full, kpts, (lo, hi))
        else:  # as CrystalModel.bands: one H(k), S(k) at a time, real arithmetic at Γ and X
            bands = np.stack([_window_eigenvalues(*full.bloch_pair(k), (lo, hi)) for k in kpts])
        t3 = time.perf_counter()
        first = bands if first is None else first
        gap = bands[:, n_occ - lo] - bands[:, n_occ - lo - 1]
        rows.append(dict(common, solver=one, bands_s=t3 - t2, bands_per_k_s=(t3 - t2) / kpoints,
                         total_s=common["baseline_s"] + common["network_s"] + t3 - t2,
                         min_gap_ev=float(min(gap)) * 27.211386, max_diff_to_first_eh=float(np.abs(bands - first).max()),
                         peak_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6))
    return rows


def table(rows: list[dict]) -> str:
    head = ("| atoms | AOs | blocks | solver | baseline s | network s | bands s | s per k-point | total min | peak GB "
            "| min gap eV |")
    lines = [head, "| " + " | ".join("---" for _ in head.split("|")[1:-1]) + " |"]
    for r in rows:
        lines.append(
            f"| {r['atoms']} | {r['nao']} | {r['blocks']} | {r['solver']} | {r['baseline_s']:.1f} | {r['network_s']:.1f} | "
            f"{r['bands_s']:.1f} | {r['bands_per_k_s']:.1f} | {r['total_s'] / 60:.2f} | {r['peak_gb']:.2f} | {r['min_gap_ev']:.3f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 3], help="supercells n×n×n of the 2-atom Si cell")
    p.add_argument("--model", default=None, help="a crystal run on the sap baseline (default: untrained network)")
    p.add_argument("--sigma", type=float, default=0.04, help="displacement width, Å")
    p.add_argument("--kpoints", type=int, default=20)
    p.add_argument("--nbands", type=int, default=16, help="bands nearest the gap kept per k-point")
    p.add_argument("--solver", default="dense", choices=["dense", "sparse", "both"],
                   help="the band solver: dense H(k), S(k) and LAPACK's subset solver, or sparse ones and "
                        "shift-invert Lanczos (solvers/sparse_bands.py); both: each on the same blocks (the "
                        "crossover that sets vardft.api.SPARSE_MIN_AOS)")
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # a single size, in this process
    p.add_argument("--write-cell", metavar="FILE", default=None,
                   help="write the cell of the first --sizes (extxyz) for `vardft bands FILE --model RUN` and stop")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.write_cell:
        import ase.io

        ase.io.write(args.write_cell, displaced_supercell(args.sizes[0], args.sigma), format="extxyz")
        return 0
    if args.one is not None:
        print(json.dumps(measure(args.one, args.model, args.sigma, args.kpoints, args.nbands, args.solver)))
        return 0
    rows = []
    for n in args.sizes:
        cmd = [sys.executable, os.path.abspath(__file__), "--one", str(n), "--sigma", str(args.sigma),
               "--kpoints", str(args.kpoints), "--nbands", str(args.nbands), "--solver", args.solver]
        if args.model:
            cmd += ["--model", args.model]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(done.stderr[-2000:], file=sys.stderr)
            return done.returncode
        for row in json.loads(done.stdout.strip().splitlines()[-1]):
            rows.append(row)
            print(f"{row['atoms']} atoms, {row['solver']}: {row['total_s']:.1f} s, {row['peak_gb']:.2f} GB", file=sys.stderr)
    if args.json:
        print(json.dumps({"rows": rows, "targets": {"atoms": TARGET_ATOMS, "minutes": TARGET_MINUTES, "gb": TARGET_GB}}))
    else:
        print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
