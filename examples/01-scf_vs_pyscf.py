"""vardft's JAX SCF reproduces PySCF's density-fitted Kohn-Sham SCF.

``vardft.scf`` builds the integrals with PySCF (same grid, auxiliary basis and minao
guess as ``pyscf.dft.RKS(mol, xc).density_fit()``) and then iterates in float64 JAX.
This script runs both on one water molecule and prints the two total energies
(Hartree) and their difference, and the largest difference of the occupied orbital
energies.

Usage:
    python 01-scf_vs_pyscf.py                    # PBE / def2-SVP
    VARDFT_EXAMPLE_SMOKE=1 python 01-scf_vs_pyscf.py  # seconds: LDA / STO-3G
"""

import os

import numpy as np
from pyscf import dft

import vardft

SMOKE = os.environ.get("VARDFT_EXAMPLE_SMOKE") == "1"
XC, BASIS = ("lda,vwn", "sto-3g") if SMOKE else ("pbe", "def2-svp")

# A water molecule; positions in Angstrom.
water = vardft.System(("O", "H", "H"), [[0.0, 0.0, 0.0], [0.0, 0.0, 0.96], [0.93, 0.0, -0.24]])

# vardft: integrals from PySCF, the SCF itself in JAX.
ours = vardft.scf(water, xc=XC, basis=BASIS)

# PySCF's own density-fitted RKS on the same molecule.
mol = water.to_mole(BASIS)
mf = dft.RKS(mol, xc=XC).density_fit()
mf.kernel()

n_occ = mol.nelectron // 2
print(f"water {XC}/{BASIS}")
print(f"vardft.scf  E = {ours.energy:.10f} Eh  ({ours.iterations} Fock builds, converged={ours.converged})")
print(f"PySCF RKS   E = {mf.e_tot:.10f} Eh  (converged={mf.converged})")
print(f"|dE|          = {abs(ours.energy - mf.e_tot):.1e} Eh")
print(f"max |d eps_occ| = {np.max(np.abs(ours.mo_energy[:n_occ] - mf.mo_energy[:n_occ])):.1e} Eh")
