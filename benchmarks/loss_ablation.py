"""Loss ablation on water: which loss variant gives which Hamiltonian.

Trains the same model with the same data, steps and seed under several loss
variants and validates each on held-out water conformations against PySCF.

Usage:
    python benchmarks/loss_ablation.py --steps 300 [--frames 8] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time

VARIANTS = {
    # name: (energy weight, self-consistency weight, baseline)
    "default (E + 300·SC, minao baseline)": (1.0, 300.0, "minao"),
    "energy only (no SC term)": (1.0, 0.0, "minao"),
    "SC only (no energy term)": (0.0, 300.0, "minao"),
    "E + 30·SC": (1.0, 30.0, "minao"),
    "E + 300·SC, no baseline": (1.0, 300.0, "none"),
}
SHOWN = [("energy_error", 1e3, "mEh"), ("hamiltonian_mae", 1e6, "μEh"), ("occupied_energy_mae", 1e3, "mEh"),
         ("lumo_error", 1e3, "mEh"), ("orbital_cosine", 1.0, ""), ("scf_cycles_ratio", 1.0, "")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--only", default=None, help="comma-separated variant indices (0-based)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    from vardft.config import LossWeights, TrainConfig
    from vardft.data import IntegralCache, default_cache_dir, load_dataset
    from vardft.train import train
    from vardft.validate import validate_run

    dataset = load_dataset("water")
    names = list(VARIANTS)
    if args.only:
        names = [names[int(i)] for i in args.only.split(",")]
    rows = []
    for name in names:
        we, wsc, baseline = VARIANTS[name]
        config = dataclasses.replace(TrainConfig(), steps=args.steps, loss=LossWeights(we, wsc, 0.0), baseline=baseline)
        run_dir = tempfile.mkdtemp(prefix="vardft-ablation-")
        t0 = time.perf_counter()
        train(dataset, run_dir, config, cache=IntegralCache(default_cache_dir()), progress=False)
        minutes = (time.perf_counter() - t0) / 60
        mean = validate_run(run_dir, "water", max_frames=args.frames, progress=False)["mean"]
        rows.append({"variant": name, "train_minutes": minutes, **{k: mean[k] for k, _, _ in SHOWN}})
        if not args.json:
            print(f"{name}: done in {minutes:.1f} min", file=sys.stderr)
    if args.json:
        json.dump({"steps": args.steps, "frames": args.frames, "rows": rows}, sys.stdout)
        print()
        return 0
    head = f"{'variant':<40}" + "".join(f"{k[:18] + (' ' + u if u else ''):>24}" for k, _, u in SHOWN)
    print(f"water PBE/def2-SVP, {args.steps} steps each, {args.frames} held-out frames")
    print(head)
    for r in rows:
        print(f"{r['variant']:<40}" + "".join(f"{r[k] * s:>24.4f}" for k, s, _ in SHOWN))
    return 0


if __name__ == "__main__":
    sys.exit(main())
