"""``vardft validate RUN_DIR DATA``: metrics against PySCF's own SCF."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "validate",
        help="compare a model's Hamiltonians with PySCF SCF",
        description=(
            "For every frame (the validation split of a built-in dataset, or every frame of a "
            "file), run PySCF's SCF with the run's xc, basis, auxiliary basis and grid and "
            "compare: energy error of the variational energy, Hamiltonian MAE (all, on-site, "
            "off-site), occupied orbital energies, HOMO/LUMO/gap, orbital cosine, and PySCF's "
            "SCF cycles from the predicted density relative to its minao guess."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("data", metavar="DATA", help="built-in dataset (its validation split) or structure file (all frames)")
    p.add_argument("--max-frames", type=int, default=None, help="validate at most this many frames")
    p.add_argument("--json", action="store_true", help="print JSON (means and per-frame values)")
    p.add_argument("--path", default=None,
                   help="crystals: also compare bands along this path with PySCF's get_bands (e.g. GXWKGL)")
    p.set_defaults(func=run)


def validate_run(run_dir: str, data: str, max_frames: int | None = None, progress: bool = True) -> dict:
    import json
    import os

    from tqdm.auto import tqdm

    from vardft.api import load
    from vardft.checkpoint import atomic_write_bytes
    from vardft.data import BUILTIN_DATASETS, load_dataset
    from vardft.validate import frame_metrics, summarize

    model = load(run_dir)
    if data in BUILTIN_DATASETS:
        systems = list(load_dataset(data, seed=model.config.seed).validation)
    else:
        from vardft.commands._common import read_input

        systems = read_input(data)
    systems = systems[:max_frames] if max_frames else systems
    frames = []
    for system in tqdm(systems, desc="validate", unit="frame", disable=not progress, leave=False):
        H = model.hamiltonians([system])[0]
        m = frame_metrics(system, H, model.xc, model.basis)
        m["formula"] = system.formula
        frames.append(m)
    result = {"run_dir": run_dir, "data": data, "xc": model.xc, "basis": model.basis,
              "mean": summarize(frames), "frames": frames}
    atomic_write_bytes(os.path.join(run_dir, "validation.json"), json.dumps(result, indent=1).encode())
    return result


def run(args) -> int:
    from vardft.commands._common import print_json
    from vardft.validate import format_table

    from basis.errors import CheckpointError
    from vardft.checkpoint import load_config
    from vardft.commands._crystal import is_crystal_data, run_validate

    if load_config(args.run_dir).get("kind") == "crystal":
        return run_validate(args)
    if is_crystal_data(args.data):
        raise CheckpointError(f"{args.run_dir} holds a molecular model; validating on crystal {args.data} needs "
                              "a crystal model (vardft train si --out RUN)")

    result = validate_run(args.run_dir, args.data, args.max_frames, progress=not args.json)
    if args.json:
        print_json(result)
    else:
        print(format_table(result["mean"], f"{args.run_dir} on {args.data} ({result['xc']}/{result['basis']}) vs PySCF"))
    return 0
