"""``vardft predict RUN_DIR INPUT --out pred.h5``: Hamiltonians of new structures."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="predict Hamiltonians with a trained model",
        description=(
            "Predict H for every frame of INPUT with the model in RUN_DIR and write pred.h5: "
            "one group per frame ('0', '1', ...) with datasets hamiltonian, overlap, "
            "density_matrix, mo_energy, mo_coeff, energy (PySCF AO order, Hartree) and "
            "attributes basis, xc, symbols, positions_angstrom."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("input", metavar="INPUT", help="structure file or built-in molecule name")
    p.add_argument("--out", default="pred.h5", help="output HDF5 file")
    p.add_argument("--json", action="store_true", help="also print a JSON summary per frame")
    p.set_defaults(func=run)


def write_predictions(path: str, predictions, xc: str, basis: str) -> None:
    import h5py
    import numpy as np

    from vardft.checkpoint import atomic_output

    with atomic_output(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for k, pred in enumerate(predictions):
                g = f.create_group(str(k))
                g.create_dataset("hamiltonian", data=pred.hamiltonian)
                g.create_dataset("overlap", data=pred.overlap)
                g.create_dataset("density_matrix", data=pred.density_matrix)
                g.create_dataset("mo_energy", data=pred.mo_energy)
                g.create_dataset("mo_coeff", data=pred.mo_coeff)
                g.create_dataset("energy", data=np.float64(pred.energy))
                g.attrs["basis"] = basis
                g.attrs["xc"] = xc
                g.attrs["symbols"] = list(pred.system.symbols)
                g.attrs["positions_angstrom"] = np.asarray(pred.system.positions)


def check_output_path(out: str, run_dir: str, inputs: tuple[str, ...] = ()) -> None:
    """Refuse an ``--out`` that would destroy something: a directory, a file inside a
    vardft run directory (``RUN_DIR``'s checkpoint or config, or another run's), or a
    file the command reads.

    Raises:
        OutputPathError: one line naming ``--out`` and what it would overwrite.
    """
    import os

    from basis.errors import OutputPathError
    from vardft.rundir import run_containing

    if not out or not os.path.basename(out):
        raise OutputPathError(f"--out {out!r} is not a file name; give one such as pred.h5")
    if os.path.isdir(out):
        raise OutputPathError(f"--out {out} is a directory; give a file name such as {os.path.join(out, 'pred.h5')}")
    run = run_containing(os.path.dirname(os.path.realpath(out)))
    if run is not None:
        what = "the run" if os.path.realpath(run) == os.path.realpath(run_dir) else "the vardft run"
        raise OutputPathError(f"--out {out} lies inside {what} {run}; write predictions outside run directories")
    for path in inputs:
        if os.path.exists(out) and os.path.exists(path) and os.path.samefile(out, path):
            raise OutputPathError(f"--out {out} is the input file {path}; choose another name")


def run(args) -> int:
    from basis.errors import CheckpointError
    from vardft.api import load
    from vardft.commands._common import print_json, read_input
    from vardft.rundir import run_kind

    check_output_path(args.out, args.run_dir, (args.input,))
    if run_kind(args.run_dir) != "molecule":
        raise CheckpointError(
            f"{args.run_dir} holds a crystal model; predict takes molecular runs "
            f"(for crystals: vardft bands INPUT --model {args.run_dir})"
        )
    model = load(args.run_dir)
    systems = read_input(args.input)
    preds = [model.predict(s) for s in systems]
    write_predictions(args.out, preds, model.xc, model.basis)
    for k, pred in enumerate(preds):
        summary = {"frame": k, "formula": pred.system.formula, "energy": pred.energy, "homo": pred.homo,
                   "lumo": pred.lumo, "nao": int(pred.hamiltonian.shape[0])}
        if args.json:
            print_json(summary)
        else:
            print(f"frame {k} {pred.system.formula}: E = {pred.energy:.8f} Eh, HOMO {pred.homo:.5f}, LUMO {pred.lumo:.5f} Eh")
    if not args.json:
        print(f"wrote {len(preds)} frame(s) to {args.out}")
    return 0
