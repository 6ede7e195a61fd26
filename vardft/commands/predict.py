"""``vardft predict RUN_DIR INPUT --out pred.h5``: Hamiltonians of new structures."""

from __future__ import annotations

import argparse
import os

import h5py
import numpy as np

from basis.errors import InputError, OutputPathError
from vardft.api import load
from vardft.checkpoint import atomic_output
from vardft.commands._common import print_json, read_input
from vardft.rundir import run_containing, run_kind


def register(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="predict Hamiltonians with a trained model",
        description=(
            "Predict H for every frame of INPUT with the model in RUN_DIR and write pred.h5: "
            "one group per frame ('0', '1', ...) with datasets hamiltonian, overlap, "
            "density_matrix, mo_energy, mo_coeff (PySCF AO order, Hartree), energy (with --energy) and "
            "attributes kind, basis, xc, symbols, positions_angstrom. Molecules go through the network "
            "in batches padded to at most 4 sizes (4 compilations per call); a model trained on the "
            "sap baseline (the default for molecules) needs no density fitting or XC grid, so prediction costs two forward passes (the "
            "frozen distilled network and the correction), S and one "
            "diagonalisation. With a crystal model INPUT "
            "holds cells, and the datasets are at the run's k-mesh: kpts (nk, 3) 1/Bohr, "
            "hamiltonian, overlap and density_matrix (nk, nao, nao) complex H(k), S(k), P(k), "
            "mo_energy (nk, nmo) and the energy per cell; attributes also pseudo, kmesh, "
            "cell_angstrom. --real-space (crystal models on the sap baseline) writes instead the "
            "real-space matrices as atom-pair blocks, at a cost linear in the atoms (large supercells): "
            "pairs (P, 2) atoms (i, j), shifts (P, 3) integer lattice shifts n of atom j, "
            "hamiltonian and overlap (P, m, m) blocks <phi_i | O | phi_j(r - n.L)> (m the largest "
            "AO count of an element, PySCF AO order within each atom, zero beyond an atom's AOs), "
            "ao_offsets (natom + 1,) and lattice_bohr (3, 3) rows; H(k) = sum_P exp(i k.(n.L)) block."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("input", metavar="INPUT", help="structure file or built-in molecule name")
    p.add_argument("--out", default="pred.h5", help="output HDF5 file")
    p.add_argument("--energy", action="store_true",
                   help="molecules: also the variational energy E[P] of the predicted density, on PySCF's grid "
                        "level 3 (builds a DF factor and an XC grid per molecule; crystals always have it)")
    p.add_argument("--real-space", action="store_true",
                   help="crystals (sap runs): write H(R), S(R) as atom-pair blocks instead of the k-mesh "
                        "quantities and energy (any cell size: no whole-cell build)")
    p.add_argument("--json", action="store_true", help="also print a JSON summary per frame")
    p.set_defaults(func=run)


def write_real_space(path: str, systems, blocks, model) -> None:
    """pred.h5 of ``--real-space``: one group per cell with its atom-pair blocks."""
    with atomic_output(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for k, (system, b) in enumerate(zip(systems, blocks)):
                g = f.create_group(str(k))
                g.create_dataset("pairs", data=b.pairs)
                g.create_dataset("shifts", data=b.shifts)
                g.create_dataset("hamiltonian", data=b.hamiltonian, compression="gzip")
                g.create_dataset("overlap", data=b.overlap, compression="gzip")
                g.create_dataset("ao_offsets", data=b.ao_offsets)
                g.create_dataset("lattice_bohr", data=b.lattice)
                g.attrs["kind"] = "crystal"
                g.attrs["basis"] = model.basis
                g.attrs["xc"] = model.xc
                g.attrs["pseudo"] = model.pseudo
                g.attrs["symbols"] = list(system.symbols)
                g.attrs["positions_angstrom"] = np.asarray(system.positions)
                g.attrs["cell_angstrom"] = np.asarray(system.cell)


def write_predictions(path: str, predictions, model) -> None:
    """pred.h5: one group per prediction (molecules or crystals, see ``vardft predict --help``)."""
    with atomic_output(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for k, pred in enumerate(predictions):
                g = f.create_group(str(k))
                for name in ("kpts", "hamiltonian", "overlap", "density_matrix", "mo_energy", "mo_coeff"):
                    if hasattr(pred, name):
                        g.create_dataset(name, data=np.asarray(getattr(pred, name)))
                if pred.energy is not None:
                    g.create_dataset("energy", data=np.float64(pred.energy))
                g.attrs["kind"] = model.kind
                g.attrs["basis"] = model.basis
                g.attrs["xc"] = model.xc
                g.attrs["symbols"] = list(pred.system.symbols)
                g.attrs["positions_angstrom"] = np.asarray(pred.system.positions)
                if model.kind == "crystal":
                    g.attrs["pseudo"] = model.pseudo
                    g.attrs["kmesh"] = list(model.config.kmesh)
                    g.attrs["cell_angstrom"] = np.asarray(pred.system.cell)


def check_output_path(out: str, run_dir: str, inputs: tuple[str, ...] = ()) -> None:
    """Refuse an ``--out`` that would destroy something: a directory, a file inside a
    vardft run directory (``RUN_DIR``'s checkpoint or config, or another run's), or a
    file the command reads.

    Raises:
        OutputPathError: one line naming ``--out`` and what it would overwrite.
    """
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
    check_output_path(args.out, args.run_dir, (args.input,))
    run_kind(args.run_dir)  # a one-line error for anything but a vardft run
    model = load(args.run_dir)
    systems = read_input(args.input)
    if args.real_space:
        if model.kind != "crystal":
            raise InputError("--real-space is for crystal models; a molecule's H is one matrix (drop --real-space)")
        blocks = [model.real_space(s) for s in systems]
        write_real_space(args.out, systems, blocks, model)
        for k, (system, b) in enumerate(zip(systems, blocks)):
            summary = {"frame": k, "formula": system.formula, "atoms": len(system.symbols), "nao": b.nao,
                       "pairs": len(b.pairs)}
            if args.json:
                print_json(summary)
            else:
                print(f"frame {k} {system.formula}: {b.nao} AOs, {len(b.pairs)} atom-pair blocks")
        if not args.json:
            print(f"wrote {len(blocks)} cell(s) to {args.out}")
        return 0
    if model.kind == "molecule":
        preds = model.predict_many(systems, energy=args.energy)
    else:
        preds = [model.predict(s) for s in systems]
    write_predictions(args.out, preds, model)
    per = " per cell" if model.kind == "crystal" else ""
    for k, pred in enumerate(preds):
        summary = {"frame": k, "formula": pred.system.formula, "energy": pred.energy, "homo": pred.homo,
                   "lumo": pred.lumo, "nao": int(pred.hamiltonian.shape[-1])}
        if args.json:
            print_json(summary)
        else:
            energy = "" if pred.energy is None else f"E = {pred.energy:.8f} Eh{per}, "
            print(f"frame {k} {pred.system.formula}: {energy}HOMO {pred.homo:.5f}, LUMO {pred.lumo:.5f} Eh")
    if not args.json:
        print(f"wrote {len(preds)} frame(s) to {args.out}")
    return 0
