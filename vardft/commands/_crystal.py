"""The crystal branches of ``vardft train`` and ``vardft validate``.

``vardft train si --out RUN`` (also ``diamond``, ``hbn``, or a structure file whose
frames have a cell) trains label-free on crystals (:mod:`vardft.train_crystal`);
``vardft validate RUN si`` compares the model with PySCF's KRKS on held-out
structures (:mod:`vardft.validate_crystal`).
"""

from __future__ import annotations

import os

CRYSTAL_DEFAULT_BASIS = "gth-szv"
CRYSTAL_KPOINTS_PER_DIRECTION = 2
"""Default training k-mesh: 2 per periodic direction, 1 along vacuum."""
CRYSTAL_DEFAULT_N_TRAIN = 16


def is_crystal_data(data: str) -> bool:
    """True for a built-in crystal name, or a structure file whose first frame has a cell."""
    from basis.crystal import BUILTIN_CRYSTALS

    if not os.path.exists(data):
        return data.strip().lower() in BUILTIN_CRYSTALS
    if os.path.isdir(data):
        return False
    try:
        from basis.system import read_systems

        frames = read_systems(data)
    except Exception:  # the molecular path reports unreadable files
        return False
    return bool(frames) and frames[0].cell is not None


def crystal_training_set(data: str, n_train: int | None, seed: int):
    """``(name or None, systems)``: a built-in crystal set or every frame of a file."""
    from basis.crystal import BUILTIN_CRYSTALS, read_crystal
    from basis.system import read_systems
    from vardft.train_crystal import crystal_dataset

    name = data.strip().lower()
    if name in BUILTIN_CRYSTALS and not os.path.exists(data):
        return name, crystal_dataset(name, n_train or CRYSTAL_DEFAULT_N_TRAIN, seed=seed)
    n = len(read_systems(data))
    systems = [read_crystal(data, index=i) for i in range(n)]
    return None, systems[:n_train] if n_train else systems


def crystal_config_from_args(args, name, systems):
    """:class:`CrystalTrainConfig` from the ``vardft train`` arguments (crystal defaults where unset)."""
    from basis.crystal import default_kmesh, default_pseudo, check_kmesh
    from basis.errors import InputError
    from basis.pbc_integrals import check_periodic_functional
    from vardft.train_crystal import CrystalTrainConfig

    d = CrystalTrainConfig()
    functional = check_periodic_functional(args.xc)
    if args.steps is not None and args.steps < 0:
        raise InputError("--steps must be >= 0")
    kmesh = check_kmesh(args.kmesh) if args.kmesh else default_kmesh(systems[0], CRYSTAL_KPOINTS_PER_DIRECTION)
    pick = lambda value, default: default if value is None else value  # noqa: E731
    return CrystalTrainConfig(
        xc=functional.name,
        basis=args.basis or CRYSTAL_DEFAULT_BASIS,
        pseudo=args.pseudo or default_pseudo(functional),
        kmesh=kmesh,
        mesh=_mesh(args.mesh),
        preset=pick(args.preset, d.preset),
        steps=pick(args.steps, d.steps),
        batch_size=pick(getattr(args, "batch_size", None), d.batch_size),
        learning_rate=pick(args.lr, d.learning_rate),
        self_consistency_weight=pick(args.sc_weight, d.self_consistency_weight),
        baseline=args.baseline,
        seed=args.seed,
        dataset=name,
        n_train=len(systems),
        checkpoint_every=pick(args.checkpoint_every, d.checkpoint_every),
        max_minutes=args.minutes,
    )


def _mesh(mesh):
    from basis.errors import InputError

    if mesh is None:
        return None
    if len(mesh) != 3 or min(mesh) < 1:
        raise InputError(f"--mesh {mesh} must be three positive integers")
    return tuple(int(m) for m in mesh)


def run_train(args) -> int:
    """``vardft train CRYSTAL --out RUN``."""
    from vardft.train_crystal import train_crystal

    name, systems = crystal_training_set(args.data, args.n_train, args.seed)
    cfg = crystal_config_from_args(args, name, systems)
    print(f"training on {name or args.data}: {len(systems)} crystals, {cfg.xc}/{cfg.basis}/{cfg.pseudo}, "
          f"k-mesh {'x'.join(map(str, cfg.kmesh))}, baseline {cfg.baseline}, preset {cfg.preset}, "
          f"{cfg.steps} steps -> {args.out}")
    result = train_crystal(systems, cfg, run_dir=args.out, resume=args.resume, progress=not args.quiet)
    last = result.history[-1] if result.history else {}
    msg = f"step {result.step}, {result.seconds / 60:.1f} min"
    if last:
        msg += f", energy {last['energy']:.6f} Eh per cell, self-consistency rmse {last['sc_rmse'] * 1e6:.0f} μEh"
    print(("interrupted, checkpoint saved: " if result.interrupted else "done: ") + msg)
    return 130 if result.interrupted else 0


def run_validate(args) -> int:
    """``vardft validate CRYSTAL_RUN DATA [--json]``."""
    import json

    from vardft.checkpoint import atomic_write_bytes
    from vardft.commands._common import print_json
    from vardft.validate_crystal import format_crystal_table, validate_crystal_run

    path = getattr(args, "path", None)
    result = validate_crystal_run(args.run_dir, args.data, args.max_frames, path=path, progress=not args.json)
    atomic_write_bytes(os.path.join(args.run_dir, "validation.json"), json.dumps(result, indent=1).encode())
    if args.json:
        print_json(result)
    else:
        print(format_crystal_table(result, f"{args.run_dir} on held-out {args.data} vs PySCF KRKS"))
    return 0
