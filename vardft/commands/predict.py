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


def run(args) -> int:
    from vardft.api import load
    from vardft.commands._common import print_json, read_input

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
