"""Where a SAP model's label-free steps start (issue 14): the distilled network alone
against F[P_minao], the minao baseline it stands in for.

For each held-out molecule of ``--data`` (the frames ``vardft validate --max-frames N``
uses), each H below is compared with PySCF's converged Kohn–Sham matrix by
:func:`vardft.validate.frame_metrics` (B3LYP or the run's functional, grid level 3):

- ``minao``: F[P_minao], PySCF's Kohn–Sham matrix of its minao guess density at the run's
  training grid level (what a minao model is at step 0);
- ``distilled``: H_SAP + the frozen distilled network (through the run's overlap filter),
  the correction network scaled to zero (what the label-free steps start from);
- ``model``: the SAP run's model as ``predict`` returns it;
- ``minao-model``: with ``--minao RUN``, that minao run's model.

Then the distilled network's error against F[P_minao] in the orthonormal basis of S's
eigenvectors, by bands of S's eigenvalue s: the RMS of the diagonal (orbital-energy-like)
and of whole rows. An AO-basis error δ along an eigenvector of eigenvalue s shows there as
~δ/s.

Usage (nothing else running; ~5 min per molecule at QM9 size):
    .venv/bin/python benchmarks/distilled_start.py runs/qm9/qm9-sap-f32-filter \\
        --minao runs/qm9/qm9-minao-n100-f32 --data qm9 --frames 3 --json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

S_BANDS = (0.0, 0.03, 0.1, 0.3, 1.0, np.inf)
"""Edges of the overlap-eigenvalue bands the distilled error is reported in."""

METRICS = ("hamiltonian_mae", "occupied_energy_mae", "homo_error", "lumo_error", "energy_error",
           "scf_cycles_ratio")


def band_errors(error: np.ndarray, overlap: np.ndarray) -> list[dict]:
    """``error`` (nao, nao) Hartree, in S's orthonormal eigenbasis Xᵀ·error·X (X = U s^-½),
    by bands of s (:data:`S_BANDS`): count, diagonal RMS and row RMS, Hartree."""
    s, U = np.linalg.eigh(overlap)
    X = U / np.sqrt(s)
    d = X.T @ error @ X
    rows = []
    for lo, hi in zip(S_BANDS[:-1], S_BANDS[1:]):
        m = (s >= lo) & (s < hi)
        if m.any():
            rows.append({"s_min": lo, "s_max": hi, "count": int(m.sum()),
                         "diagonal_rms": float(np.sqrt(np.mean(np.diag(d)[m] ** 2))),
                         "row_rms": float(np.sqrt(np.mean(d[m] ** 2)))})
    return rows


def run(sap_dir: str, minao_dir: str | None, data: str, frames: int) -> dict:
    from basis.integrals import make_mean_field
    from vardft.api import load
    from vardft.stream import minao_fock
    from vardft.tasks import MoleculeTask
    from vardft.validate import frame_metrics, held_out_structures, pyscf_reference

    sap = load(sap_dir, kind="molecule")
    if not sap.config.frozen_distilled:
        raise SystemExit(f"error: {sap_dir} has no frozen distilled network (a --baseline sap run with distillation)")
    minao = load(minao_dir, kind="molecule") if minao_dir else None
    distilled_only = MoleculeTask(dataclasses.replace(sap.config, output_scale=0.0))
    out = []
    for system in held_out_structures(sap, data, frames):
        inside = sap.task.to_frame(system)[0]
        variants = {
            "minao": minao_fock(make_mean_field(inside, sap.xc, sap.basis, sap.config.grid_level)),
            "distilled": distilled_only.hamiltonian(sap.params, sap.model_config, inside),
            "model": sap.task.hamiltonian(sap.params, sap.model_config, inside),
        }
        if minao is not None:
            variants["minao-model"] = minao.task.hamiltonian(minao.params, minao.model_config, inside)
        row = {"formula": system.formula, "nao": int(variants["minao"].shape[0])}
        reference = pyscf_reference(inside, sap.xc, sap.basis)
        for name, H in variants.items():
            m = frame_metrics(inside, H, sap.xc, sap.basis, reference=reference)
            row[name] = {k: m[k] for k in METRICS}
            print(f"{system.formula} {name}: " + ", ".join(f"{k} {m[k]:.4g}" for k in METRICS), file=sys.stderr)
        overlap = np.asarray(reference[2].overlap)
        row["distilled_error_by_overlap_eigenvalue"] = band_errors(variants["distilled"] - variants["minao"], overlap)
        out.append(row)
    return {"sap_run": sap_dir, "minao_run": minao_dir, "data": data, "xc": sap.xc, "basis": sap.basis,
            "overlap_filter": sap.config.overlap_filter, "distill_basis": sap.config.distill_basis, "frames": out}


def format_table(result: dict) -> str:
    names = [n for n in ("minao", "distilled", "model", "minao-model") if n in result["frames"][0]]
    lines = [f"{result['sap_run']} ({result['xc']}/{result['basis']}, filter {result['overlap_filter']:g}, "
             f"distillation loss {result['distill_basis']})",
             "| molecule | H | H MAE μEh | occ ε MAE mEh | HOMO err mEh | LUMO err mEh | energy err mEh | SCF ratio |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for f in result["frames"]:
        for n in names:
            m = f[n]
            lines.append(f"| {f['formula']} | {n} | {m['hamiltonian_mae'] * 1e6:,.0f} | "
                         f"{m['occupied_energy_mae'] * 1e3:.1f} | {m['homo_error'] * 1e3:.1f} | "
                         f"{m['lumo_error'] * 1e3:.1f} | {m['energy_error'] * 1e3:.1f} | {m['scf_cycles_ratio']:.2f} |")
    lines += ["", "distilled − F[P_minao] in S's orthonormal eigenbasis (mEh; diagonal RMS / row RMS)",
              "| molecule | " + " | ".join(f"s {lo:g}–{hi:g}" for lo, hi in zip(S_BANDS[:-1], S_BANDS[1:])) + " |",
              "| --- |" + " --- |" * (len(S_BANDS) - 1)]
    for f in result["frames"]:
        cells = {(b["s_min"], b["s_max"]): b for b in f["distilled_error_by_overlap_eigenvalue"]}
        row = []
        for lo, hi in zip(S_BANDS[:-1], S_BANDS[1:]):
            b = cells.get((lo, hi))
            row.append("" if b is None else f"{b['count']}: {b['diagonal_rms'] * 1e3:.0f} / {b['row_rms'] * 1e3:.0f}")
        lines.append(f"| {f['formula']} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sap_run", help="run directory of a --baseline sap model with distillation steps")
    p.add_argument("--minao", default=None, metavar="RUN", help="also a minao-baseline model, on the same molecules")
    p.add_argument("--data", default="qm9", help="built-in dataset or structure file of the held-out molecules (qm9)")
    p.add_argument("--frames", type=int, default=3, help="held-out molecules (3, as the QM9 tables in docs/results.md)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout instead of the table")
    args = p.parse_args(argv)
    if args.frames < 1:
        p.error("--frames must be >= 1")
    from _machine import machine_info

    result = {**run(args.sap_run, args.minao, args.data, args.frames), "machine": machine_info()}
    print(json.dumps(result) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
