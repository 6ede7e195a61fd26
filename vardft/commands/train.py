"""``vardft train DATA --out RUN_DIR``: label-free training."""

from __future__ import annotations

import argparse
import dataclasses


def add_level_arguments(p) -> None:
    p.add_argument("--xc", default="pbe", help="functional (PySCF name)")
    p.add_argument("--basis", default=None, help="basis set (PySCF name; default def2-svp, gth-szv for crystals)")


def register(sub) -> None:
    from vardft.train import TrainConfig

    d = TrainConfig()
    p = sub.add_parser(
        "train",
        help="train the Hamiltonian network without labels",
        description=(
            "Train the equivariant Hamiltonian network label-free: minimise the variational "
            "energy E[P(H)] of the density built from the predicted H, plus a self-consistency "
            "term |H - F[P(H)]|^2 that fixes the virtual spectrum. DATA is a built-in dataset "
            "(water, ethanol, g2-small) or a multi-frame xyz/extxyz file or ASE database. "
            "Crystals (si, diamond, hbn, or a file whose frames have a cell) train on the periodic "
            "energy at a k-mesh (--kmesh, --pseudo; defaults in parentheses are for crystals). "
            "--steps 0 writes an untrained model directory."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("data", metavar="DATA", help="built-in dataset name or structure file")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (config, checkpoint, log)")
    add_level_arguments(p)
    from vardft.commands._crystal import CRYSTAL_DEFAULT_N_TRAIN
    from vardft.train_crystal import CrystalTrainConfig

    c = CrystalTrainConfig()
    p.add_argument("--preset", default=None, choices=["S", "M", "L"], help=f"model size (default {d.preset}; {c.preset})")
    p.add_argument("--steps", type=int, default=None, help=f"optimizer steps (default {d.steps}; {c.steps})")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"molecules (crystals) per step (default {d.batch_size}; {c.batch_size})")
    p.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default {d.learning_rate}; {c.learning_rate})")
    p.add_argument("--sc-weight", type=float, default=None,
                   help=f"weight of the self-consistency term, 1/Eh (default {d.loss.self_consistency}; {c.self_consistency_weight})")
    p.add_argument("--baseline", default=d.baseline, choices=["minao", "none"], help="H = F[P_minao] + network (minao) or network only (none)")
    p.add_argument("--grid-level", type=int, default=d.grid_level, help="PySCF grid level of the training energy")
    p.add_argument("--seed", type=int, default=d.seed, help="initialisation and data-order seed")
    p.add_argument("--n-train", type=int, default=None,
                   help=f"training conformations / structures of a built-in set (default: the set's own; {CRYSTAL_DEFAULT_N_TRAIN})")
    p.add_argument("--minutes", type=float, default=None, help="stop after this much wall time (checkpoint kept)")
    p.add_argument("--checkpoint-every", type=int, default=None,
                   help=f"steps between checkpoints (default {d.checkpoint_every}; {c.checkpoint_every})")
    p.add_argument("--kmesh", nargs=3, type=int, metavar=("N1", "N2", "N3"), default=None,
                   help="crystals: training k-mesh (default 2 per periodic direction, 1 along vacuum)")
    p.add_argument("--pseudo", default=None, help="crystals: GTH pseudopotential (default: matches --xc)")
    p.add_argument("--mesh", nargs=3, type=int, metavar=("M1", "M2", "M3"), default=None,
                   help="crystals: FFT mesh of the energy (default PySCF's for the first structure)")
    p.add_argument("--cache", default=None, help="integral cache directory (default: $VARDFT_CACHE or ~/.cache/vardft; 'none' disables)")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def config_from_args(args):
    from basis.functional import parse_functional
    from vardft.losses import LossWeights
    from vardft.train import TrainConfig

    d = TrainConfig()
    pick = lambda value, default: default if value is None else value  # noqa: E731
    steps = pick(args.steps, d.steps)
    if steps < 0:
        from basis.errors import InputError

        raise InputError("--steps must be >= 0")
    return dataclasses.replace(
        d,
        xc=parse_functional(args.xc).name,
        basis=pick(args.basis, d.basis),
        preset=pick(args.preset, d.preset),
        steps=steps,
        batch_size=pick(args.batch_size, d.batch_size),
        learning_rate=pick(args.lr, d.learning_rate),
        loss=LossWeights(energy=d.loss.energy, self_consistency=pick(args.sc_weight, d.loss.self_consistency), supervised=0.0),
        baseline=args.baseline,
        grid_level=args.grid_level,
        seed=args.seed,
        checkpoint_every=pick(args.checkpoint_every, d.checkpoint_every),
        max_minutes=args.minutes,
    )


def make_cache(arg):
    from vardft.data import IntegralCache, default_cache_dir

    if arg is not None and arg.lower() == "none":
        return IntegralCache(None)
    return IntegralCache(arg or default_cache_dir())


def run(args) -> int:
    from basis.system import check_basis
    from vardft.data import load_dataset
    from vardft.train import train

    from vardft.commands._crystal import is_crystal_data, run_train

    if is_crystal_data(args.data):
        return run_train(args)
    config = config_from_args(args)
    dataset = load_dataset(args.data, seed=config.seed, n_train=args.n_train)
    check_basis(config.basis, {s for m in dataset.train + dataset.validation for s in m.symbols})
    print(f"training on {dataset.name}: {len(dataset.train)} train / {len(dataset.validation)} validation, "
          f"{config.xc}/{config.basis}, preset {config.preset}, {config.steps} steps -> {args.out}")
    result = train(dataset, args.out, config, resume=args.resume, cache=make_cache(args.cache), progress=not args.quiet)
    last = result.history[-1] if result.history else {}
    msg = f"step {result.step}, {result.wall_time / 60:.1f} min"
    if last:
        msg += f", energy {last['energy']:.6f} Eh, self-consistency rmse {last['sc_rmse'] * 1e6:.0f} μEh"
    if result.skipped_steps:
        msg += f", {result.skipped_steps} non-finite steps skipped"
    print(("interrupted, checkpoint saved: " if result.interrupted else "done: ") + msg)
    return 130 if result.interrupted else 0
