"""``vardft demo``: the main job on built-in data, start to finish."""

from __future__ import annotations

import argparse


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
    p.add_argument("--out", default="runs/demo", help="run directory (replaced if it exists)")
    p.add_argument("--minutes", type=float, default=8.0, help="training wall-time cap")
    p.add_argument("--steps", type=int, default=500, help="training steps (the full water defaults use 3000)")
    p.add_argument("--frames", type=int, default=8, help="held-out conformations to validate")
    p.add_argument("--json", action="store_true", help="print the validation result as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    import dataclasses
    import os
    import shutil

    from vardft.commands._common import print_json
    from vardft.commands.validate import validate_run
    from vardft.data import IntegralCache, default_cache_dir, load_dataset
    from vardft.train import TrainConfig, train
    from vardft.validate import format_table

    config = dataclasses.replace(TrainConfig(), max_minutes=args.minutes, steps=args.steps)
    if os.path.isdir(args.out) and os.path.exists(os.path.join(args.out, "config.json")):
        shutil.rmtree(args.out)
    dataset = load_dataset("water", seed=config.seed)
    print(f"vardft demo: label-free training on {len(dataset.train)} water conformations "
          f"({config.xc}/{config.basis}) for at most {args.minutes:g} min -> {args.out}")
    result = train(dataset, args.out, config, cache=IntegralCache(default_cache_dir()), progress=not args.json)
    print(f"trained {result.step} steps in {result.wall_time / 60:.1f} min; validating on "
          f"{args.frames} held-out conformations against PySCF ...")
    out = validate_run(args.out, "water", max_frames=args.frames, progress=not args.json)
    if args.json:
        print_json(out)
    else:
        print(format_table(out["mean"], f"label-free model vs PySCF ({out['xc']}/{out['basis']}), held-out water"))
    return 0
