"""Write predictions with ``vardft predict`` and read ``pred.h5`` with h5py.

``vardft predict RUN_DIR INPUT --out pred.h5 --energy`` writes one HDF5 group per frame of
INPUT ('0', '1', ...) holding the datasets hamiltonian (nao, nao), overlap (nao, nao),
density_matrix (nao, nao), mo_energy (nmo,), mo_coeff (nao, nmo) and energy (scalar; only with --energy),
in PySCF's AO order and Hartree, and the attributes basis, xc, symbols and
positions_angstrom. Nothing in the file needs vardft to be read: the orbital energies
are the generalized eigenvalues of H C = S C eps, which scipy recomputes here.

Usage:
    python 05-read_pred_h5.py [RUN_DIR]     # e.g. the run of example 02
    VARDFT_EXAMPLE_SMOKE=1 python 05-read_pred_h5.py   # seconds
Without RUN_DIR a small model is trained first (in the smoke run an untrained one,
``steps=0``). Everything is written to a temporary directory.
"""

import os
import sys
import tempfile

import ase.io
import h5py
import numpy as np
import scipy.linalg

from vardft.cli import main as vardft_cli
from vardft.config import make_config
from vardft.data import load_dataset
from vardft.train import train

SMOKE = os.environ.get("VARDFT_EXAMPLE_SMOKE") == "1"
work = tempfile.mkdtemp(prefix="vardft-ex05-")

if len(sys.argv) > 1:
    run_dir = sys.argv[1]
else:
    run_dir = os.path.join(work, "water")
    steps, basis = (0, "sto-3g") if SMOKE else (200, "def2-svp")
    config = make_config("molecule", "water", steps=steps, preset="S", basis=basis, batch_size=4)
    train(load_dataset("water", n_train=4 if SMOKE else 16, n_validation=0), run_dir, config, progress=not SMOKE)

# Two held-out water conformations in a multi-frame xyz file.
frames = load_dataset("water", n_train=0, n_validation=2).validation
xyz = os.path.join(work, "water.xyz")
ase.io.write(xyz, [s.to_atoms() for s in frames])

# The command line, called from Python (the same as `vardft predict RUN_DIR water.xyz --out pred.h5 --energy`).
pred_h5 = os.path.join(work, "pred.h5")
status = vardft_cli(["predict", run_dir, xyz, "--out", pred_h5, "--energy"])
assert status == 0, f"vardft predict exited with {status}"

with h5py.File(pred_h5, "r") as f:
    for name in sorted(f, key=int):
        g = f[name]
        H = g["hamiltonian"][()]
        S = g["overlap"][()]
        eps = g["mo_energy"][()]
        print(f"frame {name}: {''.join(g.attrs['symbols'])} {g.attrs['xc']}/{g.attrs['basis']}, "
              f"nao = {H.shape[0]}, E = {g['energy'][()]:.8f} Eh")

        # H C = S C eps with scipy; the stored orbital energies are these eigenvalues.
        eps_scipy = scipy.linalg.eigh(H, S, eigvals_only=True)
        print(f"  max |eps(scipy) - mo_energy| = {np.max(np.abs(eps_scipy - eps)):.1e} Eh")

        # The density matrix is 2 C_occ C_occ^T; its trace with S counts the electrons.
        n_electrons = np.trace(g["density_matrix"][()] @ S)
        n_occ = int(round(n_electrons)) // 2
        print(f"  tr(P S) = {n_electrons:.6f} electrons, HOMO-LUMO gap = {eps[n_occ] - eps[n_occ - 1]:.5f} Eh")
