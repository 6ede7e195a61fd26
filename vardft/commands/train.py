"""``vardft train DATA --out RUN_DIR``: label-free training, molecules or crystals.

Every default lives in :mod:`vardft.config`; a flag that is not given leaves the
default (or, with ``--resume``, the run's own value) in place, and a flag that does
not apply to the kind of DATA is a one-line error.
"""

from __future__ import annotations

import argparse
import os
from fractions import Fraction

from basis.crystal import check_kmesh
from basis.errors import InputError
from basis.functional import parse_functional
from basis.integrals import BACKENDS
from basis.pbc_integrals import check_periodic_functional
from basis.system import check_basis
from vardft.config import (BASELINES, CORRECTION_BASES, DISTILL_BASES, DISTILL_FRACTION, DISTILL_TARGETS,
                           DISTILL_WINDOW, NETWORK_DTYPES, NEW_CRYSTAL_CORRECTION_BASIS, QM9_PRESET, QM9_SAP_RECIPE,
                           SAP_DATASET_RECIPES, SAP_MOLECULE_RECIPE, SELF_CONSISTENCY_BASES, SELF_CONSISTENCY_TARGETS,
                           default_config, make_config, with_overrides)
from vardft.data import IntegralCache, default_cache_dir, load_dataset
from vardft.parallel import data_mesh, start_distributed
from vardft.train import check_stop_after_distillation, read_run, train

FLAGS = {
    # flag attribute: TrainConfig field
    "xc": "xc",
    "basis": "basis",
    "preset": "preset",
    "network_dtype": "network_dtype",
    "steps": "steps",
    "batch_size": "batch_size",
    "lr": "learning_rate",
    "sc_weight": "self_consistency",
    "sc_basis": "self_consistency_basis",
    "sc_target": "self_consistency_target",
    "band_weight": "band_energy",
    "overlap_filter": "overlap_filter",
    "correction_basis": "correction_basis",
    "cells_per_pass": "cells_per_pass",
    "baseline": "baseline",
    "distill_steps": "distill_steps",
    "distill_lr": "distill_learning_rate",
    "distill_displaced": "distill_displaced",
    "distill_target": "distill_target",
    "distill_basis": "distill_basis",
    "distill_filtered": "distill_filtered",
    "distill_tolerance": "distill_tolerance",
    "distilled_lr_fraction": "distilled_lr_fraction",
    "unfiltered_correction": "unfiltered_correction",
    "grid_level": "grid_level",
    "backend": "backend",
    "workers": "workers",
    "devices": "devices",
    "seed": "seed",
    "minutes": "max_minutes",
    "checkpoint_every": "checkpoint_every",
    "eval_every": "eval_every",
    "kmesh": "kmesh",
    "pseudo": "pseudo",
    "mesh": "mesh",
}


def register(sub) -> None:
    m, c = default_config("molecule"), default_config("crystal")
    p = sub.add_parser(
        "train",
        help="train the Hamiltonian network without labels",
        description=(
            "Train the equivariant Hamiltonian network label-free: minimise the variational "
            "energy E[P(H)] of the density built from the predicted H, plus a self-consistency "
            "term |H - F[P(H)]|^2 that fixes the virtual spectrum. DATA is a built-in dataset "
            "(molecules: water, ethanol, g2-small, qm9 [QM9 from the qm9pack wheel, B3LYP], qm9-ood [trained on <= 7 "
            "heavy atoms, held out 8-9]; crystals: si, diamond, "
            "hbn) or a multi-frame "
            "xyz/extxyz file or ASE database; frames with a cell train a crystal model on the periodic "
            "energy at a k-mesh. Defaults are given as (molecules; crystals). --steps 0 writes an "
            "untrained model directory."
        ),
    )
    p.add_argument("data", metavar="DATA", help="built-in dataset name or structure file")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (config, checkpoint, log)")
    p.add_argument("--xc", default=None, help=f"functional, PySCF name ({m.xc})")
    p.add_argument("--basis", default=None, help=f"basis set, PySCF name ({m.basis}; {c.basis})")
    p.add_argument("--preset", default=None, choices=["S", "M", "L"], help=f"model size ({m.preset}; {c.preset})")
    p.add_argument("--network-dtype", default=None, choices=list(NETWORK_DTYPES),
                   help="precision of the network's parameters and activations; H, energies and losses stay "
                        f"float64 (float32: half the network's memory, faster where single precision is) ({m.network_dtype}; "
                        f"qm9 on sap: {QM9_SAP_RECIPE['network_dtype']})")
    p.add_argument("--steps", type=int, default=None, help=f"label-free optimizer steps, after any distillation steps ({m.steps}; {c.steps})")
    p.add_argument("--batch-size", type=int, default=None, help=f"structures per step ({m.batch_size}; {c.batch_size})")
    p.add_argument("--lr", type=float, default=None, help=f"peak learning rate ({m.learning_rate}; {c.learning_rate})")
    p.add_argument("--sc-weight", type=float, default=None,
                   help=f"weight of the self-consistency term, 1/Eh ({m.loss.self_consistency}; {c.loss.self_consistency})")
    p.add_argument("--sc-basis", default=None, choices=list(SELF_CONSISTENCY_BASES),
                   help="basis of the self-consistency residual H - F[P(H)]: ao (AO matrix elements), orthonormal "
                        "(an orthonormal basis of each S(k), every direction alike; with --overlap-filter, the "
                        "filtered residual), window (crystals: among H's occupied and lowest empty Bloch states, for "
                        "nearly dependent bases such as gth-dzvp) "
                        f"({m.self_consistency_basis}; {c.self_consistency_basis})")
    p.add_argument("--sc-target", default=None, choices=list(SELF_CONSISTENCY_TARGETS),
                   help="crystals with --overlap-filter: compare H with F[P(H)] (fock) or with the filtered Fock "
                        "matrix H_base + G (F - H_base) G (filtered-fock), whose fixed point a bounded correction "
                        f"reaches ({c.self_consistency_target})")
    p.add_argument("--band-weight", type=float, default=None,
                   help="crystals: weight, 1/Eh, of the band-energy residual (the first-order band-energy errors of "
                        "the window bands, which the mean over pairs dilutes) "
                        f"({c.loss.band_energy})")
    p.add_argument("--overlap-filter", type=float, default=None, metavar="TAU",
                   help="confine the network's correction to the well-conditioned directions of the overlap S, "
                        "G dH G with G = S^2 (S^2 + TAU^2)^-1, in training and prediction. Crystals: at each k, and "
                        "the self-consistency residual too, for nearly linearly dependent bases such as gth-dzvp "
                        "(1e-3 there; predictions are then H(k), not H(R) blocks). Molecules: for bases whose S has "
                        f"eigenvalues near 1e-3, such as def2-SVP on QM9 ({SAP_MOLECULE_RECIPE['overlap_filter']:g} for molecules on "
                        f"the sap baseline, else {c.overlap_filter:g}: off)")
    p.add_argument("--correction-basis", default=None, choices=list(CORRECTION_BASES),
                   help="crystals with --overlap-filter: the network's correction as G dH G (ao) or S^1/2 G dH G S^1/2 "
                        "(lowdin: dH in the Loewdin-orthogonalised basis, so that every well-conditioned direction "
                        f"moves the orthonormal residual alike; gth-dzvp Si: 15 meV held out against 44-46 with ao) "
                        f"(default: {NEW_CRYSTAL_CORRECTION_BASIS}, or ao with --sc-target filtered-fock)")
    p.add_argument("--cells-per-pass", type=int, default=None, metavar="K",
                   help="crystals: evaluate the loss K cells at a time, recomputing each pass in the backward pass: "
                        "memory of K cells instead of the whole batch, for one more forward evaluation per step "
                        "(large meshes, e.g. hBN) (default: the whole batch at once)")
    p.add_argument("--baseline", default=None, choices=list(BASELINES),
                   help="H = baseline + network. minao: the Kohn-Sham matrix of the minao guess density (prediction "
                        "then builds a DF factor and an XC grid); sap: superposed atomic potentials, one-electron "
                        "integrals only (prediction is a forward pass, S and one diagonalisation); for crystals sap is the "
                        "Kohn-Sham matrix of superposed atomic densities built atom by atom (linear cost; supercells "
                        "consistent with their primitive cell; vardft predict --real-space); none: "
                        f"network only ({m.baseline}; {c.baseline})")
    p.add_argument("--distill-lr", type=float, default=None, metavar="LR",
                   help="molecules, --baseline sap (or --distill-target scf): peak learning rate of the distillation "
                        f"steps ({m.distill_learning_rate})")
    p.add_argument("--distill-steps", type=int, default=None,
                   help="molecules, --baseline sap: steps, before the label-free ones, that teach a network of their own "
                        "the minao Kohn-Sham matrix (no SCF, no labels); it is frozen and a second network trains "
                        f"label-free on top; at most this many, fewer once --distill-tolerance is met (default: "
                        f"{Fraction(DISTILL_FRACTION).limit_denominator(12)} x --steps with sap, "
                        f"{QM9_SAP_RECIPE['distill_fraction']:g} x for qm9, 0 otherwise)")
    p.add_argument("--distill-tolerance", type=float, default=None, metavar="EH",
                   help="molecules, --baseline sap: distillation ends before --distill-steps once the mean absolute "
                        f"error to the minao Kohn-Sham matrix over the last {DISTILL_WINDOW} batches is at most EH "
                        f"Hartree; 0 runs every distillation step ({SAP_MOLECULE_RECIPE['distill_tolerance']:g})")
    p.add_argument("--distill-target", default=None, choices=list(DISTILL_TARGETS),
                   help="molecules: what the distillation steps learn. minao: the minao Kohn-Sham matrix (label-free); "
                        "scf: PySCF's converged Kohn-Sham matrix of each training molecule, an SCF each -- supervised, "
                        "for comparing with label-free training: --steps 0 --distill-steps S trains the same model "
                        f"and baseline on labels ({m.distill_target})")
    p.add_argument("--distill-basis", default=None, choices=list(DISTILL_BASES),
                   help="molecules, distillation: where its loss measures H minus the target. ao: mean square over "
                        "AO pairs; orthonormal: over orthonormal orbitals, which bounds the error of H's orbital "
                        "energies (an AO error along a nearly dependent direction moves them by error/overlap "
                        f"eigenvalue); both: the sum of the two ({SAP_MOLECULE_RECIPE['distill_basis']})")
    p.add_argument("--distill-filtered", action=argparse.BooleanOptionalAction, default=None,
                   help="molecules, distillation with --overlap-filter: its loss measures the filtered difference "
                        "G (H - target) G, leaving out the part of the target that the filtered correction cannot "
                        "reach (along overlap eigenvalues far below the filter's scale); the logged distill_* "
                        "metrics stay unfiltered (on with sap and an overlap filter; --no-distill-filtered: off)")
    p.add_argument("--distilled-lr-fraction", type=float, default=None, metavar="F",
                   help="molecules, --baseline sap: the label-free steps also train the distilled network, at F times "
                        "their learning rate (0.1 moves H as fast through it as through the correction network; "
                        f"0 keeps it frozen) ({SAP_MOLECULE_RECIPE['distilled_lr_fraction']:g})")
    p.add_argument("--unfiltered-correction", action="store_const", const=True, default=None,
                   help="molecules, --baseline sap with --overlap-filter: the filter acts on the distilled network "
                        "only, and the label-free correction network's output enters H unfiltered, as in a minao "
                        "run (off: both filtered)")
    p.add_argument("--distill-displaced", type=int, default=None, metavar="K",
                   help="--baseline sap: K thermally displaced copies of each training structure join the "
                        "distillation steps (more geometries for the distilled network; the label-free steps "
                        f"use the training structures only) ({m.distill_displaced}; ethanol: "
                        f"{SAP_DATASET_RECIPES['ethanol']['distill_displaced']})")
    p.add_argument("--seed", type=int, default=None, help=f"initialisation and data-order seed ({m.seed})")
    p.add_argument("--n-train", type=int, default=None,
                   help="training structures of a built-in set (default: the set's own)")
    p.add_argument("--minutes", type=float, default=None, help="stop after this much wall time (checkpoint kept)")
    p.add_argument("--stop-after-distillation", action="store_true",
                   help="--baseline sap: stop where the distillation ends, before the first label-free step "
                        "(checkpoint kept; benchmarks/distilled_start.py scores the distilled network alone); "
                        "--resume continues with the label-free steps")
    p.add_argument("--checkpoint-every", type=int, default=None,
                   help=f"steps between checkpoints ({m.checkpoint_every}; {c.checkpoint_every})")
    p.add_argument("--eval-every", type=int, default=None,
                   help=f"steps between label-free evaluations of the held-out structures, logged as val_* "
                        f"({m.eval_every}; qm9: {QM9_PRESET['eval_every']}; none for crystals); may change on --resume")
    p.add_argument("--grid-level", type=int, default=None, help=f"molecules: PySCF grid level of the training energy ({m.grid_level})")
    p.add_argument("--backend", default=None, choices=BACKENDS,
                   help="molecules: where the energy's XC term runs. host = libxc in a host callback on AO values "
                        "held in memory for every molecule; jax = AO values and XC in JAX, data streamed from compact "
                        "per-molecule records on disk (memory independent of the number of molecules). Default: jax on "
                        "a GPU; on a CPU host while the molecules' integrals fit in a quarter of the memory, else jax")
    p.add_argument("--workers", type=int, default=None,
                   help="molecules, --backend jax: processes that build the records (default: one per core)")
    p.add_argument("--devices", type=int, default=None,
                   help="devices each step's batch is split over (data parallel, parameters replicated; default: "
                        "all of them). On a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N makes N")
    p.add_argument("--distributed", action="store_true",
                   help="several hosts: call jax.distributed.initialize() first (coordinator, process count and "
                        "index from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID or the cluster "
                        "scheduler); start the same command on every host, RUN_DIR on a shared file system")
    p.add_argument("--cache", default=None,
                   help="cache directory of integrals (molecules) and of Bloch AO values (crystals: held in memory "
                        "up to a quarter of it, the rest read back one batch at a time, so memory does not grow "
                        "with the number of cells) (default: $VARDFT_CACHE or ~/.cache/vardft; 'none': keep "
                        "nothing on disk, crystals' Bloch AOs all in memory)")
    p.add_argument("--cache-gb", type=float, default=None,
                   help="molecules with --backend jax, and crystals: most disk the cache may take, GB; past it "
                        "records are recomputed when needed (default: what it holds plus half the disk space free when "
                        "training starts; 5 GB of disk are always left free)")
    p.add_argument("--hold-gb", type=float, default=None,
                   help="training records held in memory once read, GB: padded molecule records (on the GPU "
                        "when there is one) and crystals' Bloch AOs; the rest are read per batch. Default: a quarter "
                        "of the memory (of the GPU's on a GPU); molecules: at most what the memory available leaves "
                        "beside the compiled training step, its next batch and 15%% of the memory (printed at the "
                        "start), none with several devices; 0: read every batch, memory independent of the number "
                        "of structures")
    p.add_argument("--kmesh", nargs=3, type=int, metavar=("N1", "N2", "N3"), default=None,
                   help="crystals: training k-mesh (default 2 per periodic direction, 1 along vacuum)")
    p.add_argument("--pseudo", default=None, help="crystals: GTH pseudopotential (default: matches --xc)")
    p.add_argument("--mesh", nargs=3, type=int, metavar=("M1", "M2", "M3"), default=None,
                   help="crystals: FFT mesh of the energy (default PySCF's for the first structure)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in RUN_DIR from its last checkpoint (flags given must agree with the run)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def given_settings(args) -> dict:
    """The TrainConfig fields the user set on the command line (checked, normalised)."""
    out = {field: getattr(args, flag) for flag, field in FLAGS.items() if getattr(args, flag) is not None}
    if "xc" in out:
        out["xc"] = parse_functional(out["xc"]).name
    if "kmesh" in out:
        out["kmesh"] = check_kmesh(out["kmesh"])
    if "mesh" in out:
        if min(out["mesh"]) < 1:
            raise InputError(f"--mesh {' '.join(map(str, out['mesh']))} must be three positive integers")
        out["mesh"] = tuple(int(v) for v in out["mesh"])
    return out


def make_cache(arg, gigabytes: float | None = None, hold_gigabytes: float | None = None):
    """The integral cache of ``--cache`` (``none``: no disk cache), bounded by ``--cache-gb``,
    holding ``--hold-gb`` of records in memory."""
    if gigabytes is not None and not gigabytes > 0:
        raise InputError(f"--cache-gb must be > 0, got {gigabytes}")
    if hold_gigabytes is not None and not (0 <= hold_gigabytes < float("inf")):
        raise InputError(f"--hold-gb must be a number >= 0, got {hold_gigabytes}")
    memory = None if hold_gigabytes is None else int(hold_gigabytes * 1e9)
    if arg is not None and arg.lower() == "none":
        if gigabytes is not None:
            raise InputError("--cache-gb bounds the disk cache; it does not apply with --cache none")
        return IntegralCache(None, memory_bytes=memory)
    directory = arg or default_cache_dir()
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise InputError(f"--cache {directory} is a file; the integral cache is a directory")
    return IntegralCache(directory, max_bytes=None if gigabytes is None else int(gigabytes * 1e9), memory_bytes=memory)


def run(args) -> int:
    given = given_settings(args)
    if args.distributed:
        start_distributed()
    seed = given.get("seed")
    if args.resume:
        _, saved, _ = read_run(args.out)
        seed = saved.seed
    dataset = load_dataset(args.data, seed=seed or 0, n_train=args.n_train)
    cache = make_cache(args.cache, args.cache_gb, args.hold_gb)
    if args.resume:
        config = with_overrides(saved, **given)
    else:
        config = make_config(dataset.kind, dataset=args.data.strip().lower(), **given)
    check_stop_after_distillation(config, args.stop_after_distillation)
    if dataset.kind == "crystal":
        check_periodic_functional(config.xc)
    check_basis(config.basis, {s for m in dataset.train + dataset.validation for s in m.symbols})
    data_mesh(config.devices)
    print(f"training on {dataset.name}: {len(dataset.train)} train / {len(dataset.validation)} held-out "
          f"{dataset.kind}s, {config.xc}/{config.basis}, preset {config.preset}, {config.baseline} baseline, "
          + (f"up to {config.n_distill} distillation + " if config.n_distill else "") + f"{config.steps} steps -> {args.out}")
    result = train(dataset, args.out, config, resume=args.resume, cache=cache, progress=not args.quiet,
                   stop_after_distillation=args.stop_after_distillation)
    last = result.history[-1] if result.history else {}
    msg = f"step {result.step}, {result.seconds / 60:.1f} min"
    if "distill_mae" in last:
        msg += f", distillation MAE {last['distill_mae'] * 1e6:.0f} μEh"
    elif last:
        per = " per cell" if dataset.kind == "crystal" else ""
        msg += f", energy {last['energy']:.6f} Eh{per}, self-consistency rmse {last['sc_rmse'] * 1e6:.0f} μEh"
    if result.skipped_steps:
        msg += f", {result.skipped_steps} non-finite steps skipped"
    if result.interrupted:
        status = "interrupted, checkpoint saved: "
    elif args.stop_after_distillation and "distill_mae" in last:
        status = "distillation done, checkpoint saved (--resume continues with the label-free steps): "
    else:
        status = "done: "
    print(status + msg)
    return 130 if result.interrupted else 0
