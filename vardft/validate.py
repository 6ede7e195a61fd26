"""Metrics of a predicted Hamiltonian against PySCF's own SCF on the same inputs.

For each frame PySCF runs its SCF with the settings of
:func:`basis.integrals.make_mean_field` (same xc, basis, auxiliary basis and
grid as training), once from its ``minao`` guess and once from the density of
the predicted Hamiltonian. All energies in Hartree.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from basis.integrals import Integrals, integrals_from_mean_field, make_mean_field
from basis.system import System
from solvers.eigen import canonical_orthogonalizer, solve_hamiltonian
from solvers.energy import total_energy

METRIC_KEYS = (
    "energy_error",
    "hamiltonian_mae",
    "hamiltonian_mae_diagonal",
    "hamiltonian_mae_offdiagonal",
    "occupied_energy_mae",
    "homo_error",
    "lumo_error",
    "gap_error",
    "orbital_cosine",
    "scf_cycles_ratio",
)
SIGNED_KEYS = ("energy_error", "homo_error", "lumo_error", "gap_error")


@dataclasses.dataclass(frozen=True)
class Reference:
    """PySCF's converged SCF of one frame."""

    energy: float
    fock: np.ndarray  # (nao, nao) Hartree
    mo_energy: np.ndarray  # (nao,)
    mo_coeff: np.ndarray  # (nao, nao)
    cycles: int
    n_electrons: int
    ao_atom: np.ndarray  # (nao,) atom index of each AO


def pyscf_reference(system: System, xc: str, basis: str, grid_level: int = 3) -> tuple[Reference, object, Integrals]:
    """Run PySCF's SCF (minao guess) and collect integrals of the same object."""
    mf = make_mean_field(system, xc, basis, grid_level)
    ints = integrals_from_mean_field(mf)
    mf.kernel()
    mol = mf.mol
    ao_atom = np.zeros(mol.nao, dtype=int)
    for a, (_, _, p0, p1) in enumerate(mol.aoslice_by_atom()):
        ao_atom[p0:p1] = a
    ref = Reference(
        energy=float(mf.e_tot),
        fock=np.asarray(mf.get_fock()),
        mo_energy=np.asarray(mf.mo_energy),
        mo_coeff=np.asarray(mf.mo_coeff),
        cycles=int(mf.cycles),
        n_electrons=int(mol.nelectron),
        ao_atom=ao_atom,
    )
    return ref, mf, ints


def orbital_cosine(c_pred: np.ndarray, c_ref: np.ndarray) -> float:
    """Mean |cos| between predicted and reference orbital coefficient vectors (QH9's definition)."""
    num = np.abs(np.sum(c_pred * c_ref, axis=0))
    den = np.linalg.norm(c_pred, axis=0) * np.linalg.norm(c_ref, axis=0)
    return float(np.mean(num / den))


def frame_metrics(system: System, hamiltonian: np.ndarray, xc: str, basis: str, grid_level: int = 3) -> dict:
    """Every metric of issue 4 for one frame.

    Args:
        system: the molecule.
        hamiltonian: (nao, nao) predicted H in PySCF's AO order, Hartree.

    Returns:
        dict with the keys of :data:`METRIC_KEYS` (Hartree, or ratios), plus
        ``energy_predicted``, ``energy_pyscf``, ``scf_cycles`` and ``scf_cycles_from_prediction``.
    """
    ref, mf, ints = pyscf_reference(system, xc, basis, grid_level)
    H = np.asarray(hamiltonian, dtype=np.float64)
    X = canonical_orthogonalizer(np.asarray(ints.overlap))
    pred = solve_hamiltonian(jnp.asarray(H), jnp.asarray(X), ints.n_electrons)
    P = np.asarray(pred.density)
    e_pred = float(jax.jit(total_energy)(jnp.asarray(P), ints))
    nocc = ref.n_electrons // 2
    eps = np.asarray(pred.mo_energy)
    nmo = min(len(eps), len(ref.mo_energy))
    diag = ref.ao_atom[:, None] == ref.ao_atom[None, :]
    err = np.abs(H - ref.fock)
    homo_err = eps[nocc - 1] - ref.mo_energy[nocc - 1]
    lumo_err = eps[nocc] - ref.mo_energy[nocc] if nocc < nmo else np.nan

    mf_from_pred = make_mean_field(system, xc, basis, grid_level)
    mf_from_pred.kernel(dm0=P)
    cycles_pred = int(mf_from_pred.cycles)
    return {
        "energy_error": e_pred - ref.energy,
        "hamiltonian_mae": float(err.mean()),
        "hamiltonian_mae_diagonal": float(err[diag].mean()),
        "hamiltonian_mae_offdiagonal": float(err[~diag].mean()) if (~diag).any() else 0.0,
        "occupied_energy_mae": float(np.abs(eps[:nocc] - ref.mo_energy[:nocc]).mean()),
        "homo_error": float(homo_err),
        "lumo_error": float(lumo_err),
        "gap_error": float(lumo_err - homo_err),
        "orbital_cosine": orbital_cosine(np.asarray(pred.mo_coeff)[:, :nocc], ref.mo_coeff[:, :nocc]),
        "scf_cycles_ratio": cycles_pred / max(ref.cycles, 1),
        "energy_predicted": e_pred,
        "energy_pyscf": ref.energy,
        "scf_cycles": ref.cycles,
        "scf_cycles_from_prediction": cycles_pred,
    }


def summarize(frames: Sequence[dict]) -> dict:
    """Means over frames; signed errors are averaged as absolute values (MAE) and also as signed means."""
    out = {}
    for key in METRIC_KEYS:
        vals = np.array([f[key] for f in frames], dtype=float)
        if key in SIGNED_KEYS:
            out[key] = float(np.nanmean(np.abs(vals))) if key != "energy_error" else float(np.nanmean(vals))
            out[key + "_signed_mean"] = float(np.nanmean(vals))
        else:
            out[key] = float(np.nanmean(vals))
    out["frames"] = len(frames)
    return out


def format_table(summary: dict, title: str = "") -> str:
    """Human-readable table: energies in mEh / μEh, as the targets are written."""
    rows = [
        ("energy_error", "mEh", 1e3, "variational E[P(H)] − E_PySCF (mean, ≥ 0)"),
        ("hamiltonian_mae", "μEh", 1e6, "|H − F_PySCF|, all elements"),
        ("hamiltonian_mae_diagonal", "μEh", 1e6, "  on-site blocks"),
        ("hamiltonian_mae_offdiagonal", "μEh", 1e6, "  off-site blocks"),
        ("occupied_energy_mae", "mEh", 1e3, "occupied orbital energies"),
        ("homo_error", "mEh", 1e3, "|Δ HOMO|"),
        ("lumo_error", "mEh", 1e3, "|Δ LUMO|"),
        ("gap_error", "mEh", 1e3, "|Δ gap|"),
        ("orbital_cosine", "", 1.0, "mean |cos| occupied orbitals"),
        ("scf_cycles_ratio", "", 1.0, "PySCF cycles from prediction / from minao"),
    ]
    lines = [title] if title else []
    lines.append(f"{'metric':<30}{'value':>14}  unit   meaning")
    for key, unit, scale, meaning in rows:
        lines.append(f"{key:<30}{summary[key] * scale:>14.4f}  {unit:<5}  {meaning}")
    lines.append(f"({summary['frames']} frames)")
    return "\n".join(lines)
