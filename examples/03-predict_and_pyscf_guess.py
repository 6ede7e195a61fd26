"""Predict a water molecule and use the prediction as PySCF's initial guess.

``vardft.load`` reads a run directory; ``model.predict`` returns the predicted
Kohn-Sham matrix H (nao, nao), the overlap S, orbitals, the closed-shell density P
and its variational energy, all in PySCF's AO order and Hartree.
``vardft.initial_guess(model, mol)`` is that P for ``mf.kernel(dm0=...)``: compare
the number of SCF cycles PySCF needs from its default minao guess and from the model.

Usage:
    python 03-predict_and_pyscf_guess.py [RUN_DIR]     # e.g. the run of example 02
    VARDFT_EXAMPLE_SMOKE=1 python 03-predict_and_pyscf_guess.py   # seconds
Without RUN_DIR a small model is trained first, in a temporary directory (in the
smoke run an untrained one, ``steps=0``: the minao-Fock baseline plus the initial
network, enough to show the API).
"""

import os
import sys
import tempfile

from pyscf import dft

import vardft
from vardft.config import make_config
from vardft.data import load_dataset
from vardft.train import train

SMOKE = os.environ.get("VARDFT_EXAMPLE_SMOKE") == "1"

if len(sys.argv) > 1:
    run_dir = sys.argv[1]
else:
    run_dir = os.path.join(tempfile.mkdtemp(prefix="vardft-ex03-"), "water")
    steps, basis = (0, "sto-3g") if SMOKE else (200, "def2-svp")
    config = make_config("molecule", "water", steps=steps, preset="S", basis=basis, batch_size=4)
    train(load_dataset("water", n_train=4 if SMOKE else 16, n_validation=0), run_dir, config, progress=not SMOKE)

model = vardft.load(run_dir)  # a MoleculeModel
print(f"model: {model.xc}/{model.basis}, trained {model.step} steps")

# A water conformation the model was not trained on (built-in held-out frames).
water = load_dataset("water", n_train=0, n_validation=1).validation[0]
pred = model.predict(water, energy=True)  # the energy needs a DF factor and an XC grid: only when asked
print(f"predicted E = {pred.energy:.8f} Eh, HOMO = {pred.homo:.5f} Eh, LUMO = {pred.lumo:.5f} Eh")
print(f"H {pred.hamiltonian.shape}, S {pred.overlap.shape}, P {pred.density_matrix.shape}")

# PySCF's density-fitted RKS, same functional and basis, from two starting densities.
mol = water.to_mole(model.basis)

mf_minao = dft.RKS(mol, xc=model.xc).density_fit()
mf_minao.kernel()                      # PySCF's default guess: minao

mf_model = dft.RKS(mol, xc=model.xc).density_fit()
mf_model.kernel(dm0=vardft.initial_guess(model, mol))

print(f"PySCF from minao:      {mf_minao.cycles:2d} cycles, E = {mf_minao.e_tot:.8f} Eh")
print(f"PySCF from prediction: {mf_model.cycles:2d} cycles, E = {mf_model.e_tot:.8f} Eh")
print(f"prediction - converged energy: {pred.energy - mf_minao.e_tot:.2e} Eh (>= 0: variational)")
