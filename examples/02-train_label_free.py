"""Label-free training on a few water conformations, then a check against PySCF.

No reference energies or Hamiltonians are used to train: the loss of each molecule is
the variational energy of the density built from the predicted H plus the
self-consistency residual |H - F[P(H)]|^2. Both can be watched during training
(``history``: ``energy`` in Eh, ``sc_rmse`` in Eh) without running PySCF's SCF.
Only afterwards does ``vardft.validate.validate_run`` run PySCF's own SCF on one
held-out conformation and compare.

Usage:
    python 02-train_label_free.py [RUN_DIR]           # a new or empty directory
    VARDFT_EXAMPLE_SMOKE=1 python 02-train_label_free.py  # seconds: 2 steps, STO-3G
Without RUN_DIR the run goes to a new temporary directory (its path is printed);
example 03 can load it.
"""

import os
import sys
import tempfile

from vardft.config import make_config
from vardft.data import load_dataset
from vardft.train import train
from vardft.validate import validate_run

SMOKE = os.environ.get("VARDFT_EXAMPLE_SMOKE") == "1"
run_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(tempfile.mkdtemp(prefix="vardft-ex02-"), "water")

# Built-in water conformations (thermal-like displacements, deterministic for a seed).
# The held-out frames are drawn from their own random stream: never trained on.
# (The smoke run holds none out during training: evaluating them costs a compilation.)
dataset = load_dataset("water", seed=0, n_train=2 if SMOKE else 16, n_validation=0 if SMOKE else 4)

# One config object: the molecule defaults, overridden where a short run needs it.
if SMOKE:
    config = make_config("molecule", "water", steps=2, preset="S", basis="sto-3g", batch_size=2)
else:
    config = make_config("molecule", "water", steps=200, preset="S", batch_size=4, eval_every=50)

result = train(dataset, run_dir, config, progress=not SMOKE)
print(f"trained {result.step} steps on {len(dataset.train)} conformations in {result.seconds:.0f} s -> {run_dir}")

# The default (sap) baseline first distils the minao Kohn-Sham matrix into a network of its
# own (rows with distill_mae, Eh), then trains label-free: energy of P(H) (lower is better,
# variational) and the self-consistency residual (0 at an SCF solution); val_* are held out.
distilled = [r for r in result.history if "distill_mae" in r]
if distilled:
    print(f"{len(distilled)} distillation steps: MAE to F[P_minao] {distilled[0]['distill_mae']:.2e} -> "
          f"{distilled[-1]['distill_mae']:.2e} Eh")
label_free = [r for r in result.history if "energy" in r]
first, last = label_free[0], label_free[-1]
print(f"step {first['step']:4d}: E = {first['energy']:.6f} Eh, sc_rmse = {first['sc_rmse']:.2e} Eh")
print(f"step {last['step']:4d}: E = {last['energy']:.6f} Eh, sc_rmse = {last['sc_rmse']:.2e} Eh")
if "val_sc_rmse" in last:
    print(f"held out: E = {last['val_energy']:.6f} Eh, sc_rmse = {last['val_sc_rmse']:.2e} Eh")

# Now, and only now, PySCF: its own SCF on one held-out conformation.
check = validate_run(run_dir, "water", max_frames=1, progress=False)
for key in ("energy_error", "hamiltonian_mae", "occupied_energy_mae", "orbital_cosine", "scf_cycles_ratio"):
    print(f"{key:>20s} = {check['mean'][key]:.6g}")
