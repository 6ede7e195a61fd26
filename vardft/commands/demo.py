"""``vardft demo``: the main job on built-in data, start to finish.

``--out`` is a new path, an empty directory, or a run made by an earlier ``demo``;
only then is it (re)used, and only vardft's own files are removed from it
(:func:`vardft.rundir.claim_run_directory` with ``replace=True``). Any other content
is a one-line refusal: demo never deletes what it did not write.
"""

from __future__ import annotations

import argparse
from fractions import Fraction

from basis.errors import InputError
from vardft.commands._common import print_json
from vardft.config import DEMO, DISTILL_FRACTION, make_config
from vardft.data import IntegralCache, default_cache_dir, load_dataset
from vardft.rundir import claim_run_directory
from vardft.train import train
from vardft.validate import format_table, validate_run


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="train label-free on built-in water, then validate against PySCF",
        description=(
            "Train the equivariant Hamiltonian network label-free on the built-in water "
            "conformations (PBE/def2-SVP) for a few minutes on the CPU, then validate on "
            "held-out conformations against PySCF's own SCF and print the metrics table."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", default=DEMO["out"],
                   help="run directory: new, empty, or an earlier demo run (replaced); anything else is refused")
    p.add_argument("--minutes", type=float, default=DEMO["minutes"], help="training wall-time cap")
    p.add_argument("--steps", type=int, default=DEMO["steps"], help=f"label-free training steps, after {Fraction(DISTILL_FRACTION).limit_denominator(12)} as many "
                        "distillation steps of the sap baseline "
                        "(the full water defaults use 3000)")
    p.add_argument("--frames", type=int, default=DEMO["frames"], help="held-out conformations to validate")
    p.add_argument("--json", action="store_true", help="print the validation result as JSON")
    p.set_defaults(func=run)


def _check_args(args) -> None:

    if not args.minutes > 0:
        raise InputError(f"--minutes must be positive, not {args.minutes:g}")
    if args.steps < 1:
        raise InputError(f"--steps must be at least 1, not {args.steps}")
    if args.frames < 1:
        raise InputError(f"--frames must be at least 1, not {args.frames}")


def run(args) -> int:

    _check_args(args)
    with claim_run_directory(args.out, "molecule", resume=False, created_by="demo", replace=True):
        return _demo(args)


def _demo(args) -> int:

    config = make_config("molecule", "water", max_minutes=args.minutes, steps=args.steps)
    dataset = load_dataset("water", seed=config.seed)
    print(f"vardft demo: label-free training on {len(dataset.train)} water conformations "
          f"({config.xc}/{config.basis}) for at most {args.minutes:g} min -> {args.out}")
    result = train(dataset, args.out, config, cache=IntegralCache(default_cache_dir()), progress=not args.json)
    print(f"trained {result.step} of {config.total_steps} steps ({config.n_distill} distillation, {config.steps} "
          f"label-free) in {result.seconds / 60:.1f} min; validating on "
          f"{args.frames} held-out conformations against PySCF ...")
    out = validate_run(args.out, "water", max_frames=args.frames, progress=not args.json)
    if args.json:
        print_json(out)
    else:
        print(format_table(out["mean"], f"label-free model vs PySCF ({out['xc']}/{out['basis']}), held-out water"))
    return 0
