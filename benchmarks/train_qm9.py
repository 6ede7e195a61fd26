"""Label-free training on QM9 (B3LYP/def2-SVP): learning curve and transfer to held-out molecules (issue 12).

Two phases, each resumable across sessions:

- **train** (``--minutes M``): one run per ``--n-train N`` in ``RUNS/<data>-n<N>``, made by
  the command line itself (``vardft train <data> --n-train N --out ... --minutes M``, so
  with the defaults of ``vardft train qm9``); a run that exists is resumed and gets M more
  minutes, until its ``--steps``. Equal ``--minutes`` per run: a learning curve at equal
  wall time.
- **evaluate** (``--evaluate K``): every metric of ``vardft validate`` against PySCF's own
  SCF (grid level 3) on the first K held-out molecules of ``<data>`` (never trained on:
  the split is by molecule; ``qm9-ood`` holds out QM9's 8–9 heavy-atom molecules from
  runs trained on ≤ 7), and on ``--file`` (e.g. molecules larger than any in QM9). Each
  evaluation is appended to ``RUNS/curve.jsonl`` with the run's steps and training wall
  time, so the sessions of a long run build a curve against wall time; the table shows
  the latest per run, and with two or more training sizes a power-law fit of the
  Hamiltonian MAE against N, extrapolated to QM9's size and to the 300 μEh target; with
  two or more evaluations on the same held-out molecules, a power-law fit against
  training wall time (every evaluation, every N), extrapolated to the 300 μEh target.

``--supervised`` trains and evaluates the comparison of issue 12 instead: the same model,
baseline and schedule trained on PySCF's converged Kohn–Sham matrices of the same training
molecules (an SCF each, stored in their records) for ``--steps`` steps, which tells the
model's limits from the label-free loss's.

Usage (nothing else running; the record cache is shared between runs):
    .venv/bin/python benchmarks/train_qm9.py --runs runs/qm9 --n-train 100 400 --minutes 30
    .venv/bin/python benchmarks/train_qm9.py --runs runs/qm9 --n-train 100 400 --evaluate 20 --json
    .venv/bin/python benchmarks/train_qm9.py --runs runs/qm9 --data qm9-ood --n-train 400 --minutes 30 --evaluate 20
    .venv/bin/python benchmarks/train_qm9.py --runs runs/qm9 --n-train 100 --supervised --steps 50 --minutes 40 --evaluate 3
    .venv/bin/python benchmarks/train_qm9.py --runs runs/qm9 --n-train 1000 --evaluate 3 --file benchmarks/data/beyond_qm9.xyz
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QM9_SIZE = 130_831
"""Closed-shell molecules of QM9 in qm9pack (vardft.qm9)."""

TARGET_MAE = 300e-6
"""Held-out Hamiltonian MAE target of issue 12, Hartree."""

PUBLISHED = {"QHNet": 69.7e-6, "SPHNet": 43.3e-6, "QHFlow": 20.0e-6}
"""Supervised Hamiltonian MAE on QH9-stable-ood (~130k molecules, GPU-days), Hartree."""


LABEL_FREE, SUPERVISED = "label-free", "supervised"


def run_dir(runs: str, data: str, n: int, mode: str = LABEL_FREE) -> str:
    return os.path.join(runs, f"{data}-n{n}" + ("" if mode == LABEL_FREE else f"-{mode}"))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def train_run(runs: str, data: str, n: int, minutes: float, steps: int | None, cache: str | None,
              mode: str = LABEL_FREE) -> None:
    """``vardft train`` for M more minutes (a new run, or ``--resume``). ``supervised``: the
    same model and baseline trained on PySCF's converged Kohn–Sham matrices for ``steps``
    steps (``--steps 0 --distill-steps S --distill-target scf``)."""
    from vardft.config import QM9_PRESET

    out = run_dir(runs, data, n, mode)
    cmd = [sys.executable, "-m", "vardft", "train", data, "--n-train", str(n), "--out", out, "--minutes", str(minutes),
           "--quiet"]
    if os.path.exists(os.path.join(out, "config.json")):
        cmd.append("--resume")
    elif mode == SUPERVISED:
        cmd += ["--steps", "0", "--distill-target", "scf", "--distill-steps", str(steps or QM9_PRESET["steps"])]
    elif steps is not None:
        cmd += ["--steps", str(steps)]
    if cache is not None:
        cmd += ["--cache", cache]
    log(" ".join(cmd[1:]))
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, check=False)
    if done.returncode not in (0, 130):
        raise SystemExit(f"training {out} failed (exit {done.returncode})")
    log(f"{out}: {time.perf_counter() - t0:.0f} s")


def progress_of(out: str) -> dict:
    """Steps done and training wall time (the log's clock, summed over sessions) of a run."""
    from vardft import checkpoint as ckpt

    records = ckpt.read_log(out)
    last = records[-1] if records else {}
    val = [r for r in records if "val_energy" in r]
    return {"steps": int(last.get("step", 0)), "train_minutes": float(last.get("time", 0.0)) / 60.0,
            "val_energy": val[-1]["val_energy"] if val else None}


def evaluate_run(runs: str, data: str, n: int, k: int, file: str | None, mode: str = LABEL_FREE) -> dict:
    from vardft.validate import validate_run

    out = run_dir(runs, data, n, mode)
    row = {"data": data, "n_train": n, "mode": mode, **progress_of(out), "evaluated": time.strftime("%Y-%m-%d %H:%M")}
    log(f"{out}: validating on {k} held-out {data} molecules (PySCF B3LYP reference, grid level 3)")
    t0 = time.perf_counter()
    row["held_out"] = validate_run(out, data, max_frames=k, progress=False)["mean"]
    row["validate_s"] = time.perf_counter() - t0
    if file:
        row["file"] = {"path": file, **validate_run(out, file, progress=False)["mean"]}
    with open(os.path.join(runs, "curve.jsonl"), "a") as fh:
        fh.write(json.dumps(row) + "\n")
    return row


def all_rows(runs: str) -> list[dict]:
    """Every evaluation in ``RUNS/curve.jsonl``, oldest first."""
    path = os.path.join(runs, "curve.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def latest_rows(runs: str) -> list[dict]:
    latest = {(r["data"], r["n_train"], r.get("mode", LABEL_FREE)): r for r in all_rows(runs)}
    return [latest[k] for k in sorted(latest)]


def label_free(rows: list[dict], data: str) -> list[dict]:
    return [r for r in rows if r["data"] == data and r.get("mode", LABEL_FREE) == LABEL_FREE]


def power_law(rows: list[dict]) -> dict | None:
    """MAE ≈ a · N^(−b) through the latest rows of one dataset (least squares in log–log)."""
    points = [(r["n_train"], r["held_out"]["hamiltonian_mae"]) for r in rows]
    if len({n for n, _ in points}) < 2:
        return None
    x, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    slope, intercept = np.polyfit(x, y, 1)
    b, a = -float(slope), float(math.exp(intercept))
    fit = {"a": a, "b": b, "mae_at_qm9_size": a * QM9_SIZE ** (-b)}
    fit["molecules_for_target"] = (a / TARGET_MAE) ** (1.0 / b) if b > 0 else float("inf")
    return fit


def time_law(rows: list[dict]) -> dict | None:
    """MAE ≈ c · t^(−d) against training wall time t (minutes) through every label-free
    evaluation of one dataset with t > 0 and the same held-out molecules (least squares in
    log–log): the curve against wall time, whatever the number of training molecules."""
    points = [(r["train_minutes"], r["held_out"]["hamiltonian_mae"]) for r in rows if r["train_minutes"] > 0]
    frames = {r["held_out"]["frames"] for r in rows}
    if len({round(t, 3) for t, _ in points}) < 2 or len(frames) != 1:
        return None
    slope, intercept = np.polyfit(np.log([t for t, _ in points]), np.log([m for _, m in points]), 1)
    d, c = -float(slope), float(math.exp(intercept))
    return {"c": c, "d": d, "points": len(points),
            "minutes_for_target": (c / TARGET_MAE) ** (1.0 / d) if d > 0 else float("inf")}


def table(rows: list[dict], history: list[dict] | None = None) -> str:
    head = (f"{'data':<8}{'mode':>11}{'N':>6}{'steps':>7}{'min':>7}{'H MAE':>9}{'on':>9}{'off':>9}{'occ ε':>8}{'gap':>8}"
            f"{'cos':>7}{'ΔE':>8}{'cyc':>6}{'mol':>5}")
    units = f"{'':<8}{'':>11}{'':>6}{'':>7}{'':>7}{'μEh':>9}{'μEh':>9}{'μEh':>9}{'mEh':>8}{'mEh':>8}{'':>7}{'mEh':>8}{'':>6}{'':>5}"
    lines = [head, units]
    for r in rows:
        for label, m in (("", r["held_out"]), ("file", r.get("file"))):
            if m is None:
                continue
            lines.append(
                f"{r['data'] if not label else '  ' + os.path.basename(m['path'])[:6]:<8}"
                f"{r.get('mode', LABEL_FREE):>11}{r['n_train']:>6}"
                f"{r['steps']:>7}{r['train_minutes']:>7.0f}{m['hamiltonian_mae'] * 1e6:>9.0f}"
                f"{m['hamiltonian_mae_diagonal'] * 1e6:>9.0f}{m['hamiltonian_mae_offdiagonal'] * 1e6:>9.0f}"
                f"{m['occupied_energy_mae'] * 1e3:>8.2f}{m['gap_error'] * 1e3:>8.2f}{m['orbital_cosine']:>7.3f}"
                f"{m['energy_error'] * 1e3:>8.2f}{m['scf_cycles_ratio']:>6.2f}{m['frames']:>5}"
            )
    for data in sorted({r["data"] for r in rows}):
        fit = power_law(label_free(rows, data))
        if fit:
            lines.append(f"{data}: H MAE ≈ {fit['a'] * 1e6:.0f} μEh · N^-{fit['b']:.2f}; at N = {QM9_SIZE:,}: "
                         f"{fit['mae_at_qm9_size'] * 1e6:.0f} μEh; {TARGET_MAE * 1e6:.0f} μEh needs N ≈ "
                         f"{fit['molecules_for_target']:,.0f} (same minutes per run)")
        timed = time_law(label_free(history or [], data))
        if timed:
            lines.append(f"{data}: H MAE ≈ {timed['c'] * 1e6:.0f} μEh · (minutes)^-{timed['d']:.3f} through "
                         f"{timed['points']} evaluations; {TARGET_MAE * 1e6:.0f} μEh after "
                         f"{timed['minutes_for_target']:,.3g} minutes of training at this rate")
    lines.append("published, supervised on QH9-stable-ood: " + ", ".join(f"{k} {v * 1e6:.1f} μEh" for k, v in PUBLISHED.items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", required=True, help="folder of the runs and of curve.jsonl")
    p.add_argument("--data", default="qm9", choices=["qm9", "qm9-ood"])
    p.add_argument("--n-train", type=int, nargs="+", default=[100, 400])
    p.add_argument("--minutes", type=float, default=None, help="train each run this many more minutes")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps of new runs (default: vardft train's)")
    p.add_argument("--cache", default=None, help="record cache (default: vardft train's)")
    p.add_argument("--supervised", action="store_true",
                   help="the supervised comparison instead: the same model and baseline trained on PySCF's converged "
                        "Kohn-Sham matrices (an SCF per training molecule) for --steps steps, in RUNS/<data>-n<N>-supervised")
    p.add_argument("--evaluate", type=int, default=None, metavar="K", help="validate on K held-out molecules")
    p.add_argument("--file", default=None, help="also validate on the molecules of this structure file")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    os.makedirs(args.runs, exist_ok=True)
    mode = SUPERVISED if args.supervised else LABEL_FREE
    if args.minutes:
        for n in args.n_train:
            train_run(args.runs, args.data, n, args.minutes, args.steps, args.cache, mode)
    if args.evaluate:
        for n in args.n_train:
            evaluate_run(args.runs, args.data, n, args.evaluate, args.file, mode)
    rows, history = latest_rows(args.runs), all_rows(args.runs)
    if args.json:
        from _machine import machine_info

        datasets = {r["data"] for r in rows}
        fits = {d: power_law(label_free(rows, d)) for d in datasets}
        timed = {d: time_law(label_free(history, d)) for d in datasets}
        print(json.dumps({"machine": machine_info(), "rows": rows, "power_law": fits, "time_law": timed}, indent=1))
    else:
        print(table(rows, history))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
