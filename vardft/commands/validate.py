"""``vardft validate RUN_DIR DATA``: metrics against PySCF's own SCF (molecules) or KRKS (crystals)."""

from __future__ import annotations

import argparse
import json
import os

from vardft.checkpoint import atomic_write_bytes
from vardft.commands._common import print_json
from vardft.validate import format_result, validate_run

VALIDATION_FILE = "validation.json"


def register(sub) -> None:
    p = sub.add_parser(
        "validate",
        help="compare a model's Hamiltonians with PySCF SCF",
        description=(
            "For every held-out structure (the validation split of a built-in dataset, or every "
            "frame of a file), run PySCF with the run's settings and compare. Molecules: energy "
            "error of the variational energy, Hamiltonian MAE (all, on-site, off-site), occupied "
            "orbital energies, HOMO/LUMO/gap, orbital cosine, and PySCF's SCF cycles from the "
            "predicted density relative to its minao guess. Crystals: energy error per cell and "
            "band MAE (valence + 4 conduction bands) against KRKS at the run's k-mesh, and "
            "optionally along a band path (--path). The result is also written to "
            f"RUN_DIR/{VALIDATION_FILE}."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("data", metavar="DATA", help="built-in dataset (its held-out split) or structure file (all frames)")
    p.add_argument("--max-frames", type=int, default=None, help="validate at most this many structures")
    p.add_argument("--json", action="store_true", help="print JSON (means and per-structure values)")
    p.add_argument("--path", default=None,
                   help="crystals: also compare bands along this path with PySCF's get_bands (e.g. GXWKGL)")
    p.set_defaults(func=run)


def run(args) -> int:
    result = validate_run(args.run_dir, args.data, args.max_frames, path=args.path, progress=not args.json)
    atomic_write_bytes(os.path.join(args.run_dir, VALIDATION_FILE), json.dumps(result, indent=1).encode())
    if args.json:
        print_json(result)
    else:
        print(format_result(result))
    return 0
