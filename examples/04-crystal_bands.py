"""A label-free Si model and its band structure, compared with PySCF.

A crystal model predicts real-space blocks H(R) on top of a baseline (the Kohn-Sham
potential of PySCF's minao guess density); H(k) at any k follows by Bloch sums, so
``model.bands(si, kpts)`` gives bands (nk, nmo), Hartree, along any path. PySCF's
reference is ``KRKS(...).get_bands`` on the same cell (functional, GTH basis and
pseudopotential, k-mesh and FFT mesh from the run's config).

Usage:
    python 04-crystal_bands.py [bands.png]               # optional plot file
    VARDFT_EXAMPLE_SMOKE=1 python 04-crystal_bands.py     # seconds
The full run trains 4 displaced/strained Si cells for 100 steps on a 15^3 FFT mesh
(minutes); the smoke run takes an untrained model (``steps=0``: baseline plus the
initial network) on a 9^3 mesh. The run directory is a temporary one.
"""

import os
import sys
import tempfile

import numpy as np
from pyscf.pbc import dft as pbcdft

import vardft
from basis.crystal import absolute_kpts, band_path, make_kpts, read_crystal, to_cell
from basis.units import HARTREE_TO_EV
from vardft.config import make_config
from vardft.data import load_dataset
from vardft.train import train

SMOKE = os.environ.get("VARDFT_EXAMPLE_SMOKE") == "1"
plot_file = sys.argv[1] if len(sys.argv) > 1 else None

# Train on displaced and strained Si cells (built-in, deterministic); PBE / gth-szv.
n_train, steps, mesh = (1, 0, (9, 9, 9)) if SMOKE else (4, 100, (15, 15, 15))
config = make_config("crystal", "si", steps=steps, mesh=mesh, batch_size=min(4, n_train))
run_dir = os.path.join(tempfile.mkdtemp(prefix="vardft-ex04-"), "si")
train(load_dataset("si", n_train=n_train, n_validation=0), run_dir, config, progress=not SMOKE)
model = vardft.load(run_dir)  # a CrystalModel
c = model.config
print(f"Si model: {c.xc}/{c.basis}/{c.pseudo}, k-mesh {c.kmesh}, FFT mesh {c.mesh}, {model.step} steps")

# The perfect Si cell (never trained on) and a path through its Brillouin zone.
si = read_crystal("si")
path = band_path(si, "GXWKGL", npoints=12 if SMOKE else 60)
cell = to_cell(si, basis=c.basis, pseudo=c.pseudo, mesh=c.mesh)
kpts = absolute_kpts(cell, path.kpts_frac)  # (nk, 3) Cartesian, 1/Bohr

bands_model = model.bands(si, kpts)  # (nk, nmo), Hartree

# PySCF: KRKS on the run's k-mesh, then the converged potential taken to the path.
mf = pbcdft.KRKS(cell, make_kpts(cell, c.kmesh), xc=c.xc)
mf.kernel()
bands_pyscf = np.asarray(mf.get_bands(kpts)[0])

# Compare the valence bands and the 4 lowest conduction bands, in eV.
n_bands = cell.nelectron // 2 + 4
err = np.abs(bands_model[:, :n_bands] - bands_pyscf[:, :n_bands]) * HARTREE_TO_EV
print(f"{len(kpts)} k-points, {n_bands} bands: MAE {1000 * err.mean():.1f} meV, max {1000 * err.max():.1f} meV")
for label, i in zip(path.labels, path.label_indices):
    print(f"  {label}: model {np.round(bands_model[i, :n_bands] * HARTREE_TO_EV, 2)} eV")
    print(f"  {label}: PySCF {np.round(bands_pyscf[i, :n_bands] * HARTREE_TO_EV, 2)} eV")

if plot_file:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(path.x, bands_pyscf[:, :n_bands] * HARTREE_TO_EV, "k-", lw=1)
    ax.plot(path.x, bands_model[:, :n_bands] * HARTREE_TO_EV, "r--", lw=1)
    ax.plot([], [], "k-", label="PySCF KRKS")
    ax.plot([], [], "r--", label="vardft model")
    ax.set_xticks([path.x[i] for i in path.label_indices], ["Γ" if s == "G" else s for s in path.labels])
    ax.set_xlim(path.x[0], path.x[-1])
    ax.set_ylabel("energy (eV)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(plot_file, dpi=120)
    print(f"wrote {plot_file}")
