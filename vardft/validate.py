"""Validation of a model against PySCF's own SCF on the same inputs: one driver,
molecules and crystals.

Molecules: for each frame PySCF runs its SCF with the settings of
:func:`basis.integrals.make_mean_field` (same xc, basis, auxiliary basis and grid as
training), once from its ``minao`` guess and once from the density of the predicted
Hamiltonian (:func:`frame_metrics`).

Crystals: for each held-out structure PySCF runs ``KRKS`` with the run's xc, basis,
pseudopotential, k-mesh and FFT mesh, and the model's H(k) (baseline + network,
exactly as in training) is compared (:func:`crystal_metrics`):

- ``energy_error_per_cell``: E[P(H)] − E_KRKS, Hartree per cell, P(H) filling the
  lowest n_electrons/2 bands of H(k) at every k;
- ``band_mae_mev``: mean |ε_model − ε_KRKS| over the k-mesh and the valence bands plus
  the ``n_conduction`` lowest conduction bands, meV;
- optionally ``path_band_mae_mev``: the same along a band path, against PySCF's
  ``mf.get_bands`` of the converged KRKS.

:func:`validate_run` picks the held-out structures (:func:`held_out_structures`) and
the metrics of the run's kind. All energies in Hartree unless a name says meV.

Example:
    >>> from vardft.validate import validate_run
    >>> result = validate_run("runs/si", "si", path="")         # doctest: +SKIP
    >>> result["mean"]["band_mae_mev"]                          # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from basis.crystal import absolute_kpts, band_path, read_crystal
from basis.errors import InputError, MalformedFileError
from basis.integrals import Integrals, integrals_from_mean_field, make_mean_field
from basis.pbc_integrals import make_periodic_mean_field, periodic_integrals_from_mean_field
from basis.system import System, read_systems
from basis.units import HARTREE_TO_MEV
from solvers import periodic
from solvers.eigen import canonical_orthogonalizer, solve_hamiltonian
from solvers.energy import total_energy
from vardft.api import CrystalModel, Model, insulator_density, load
from vardft.data import BUILTIN_DATASETS, load_dataset

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

N_CONDUCTION = 4
"""Conduction bands included in the band MAE (the crystal issue's target)."""

REFERENCE_CONV_TOL = 1e-10
"""Energy convergence of PySCF's reference KRKS, Hartree per cell."""

REFERENCE_MAX_CYCLE = 50
"""PySCF's own default cycle limit for the reference KRKS."""

CONTINUATION_MAX_CYCLE = 200
"""DIIS cycles of vardft's periodic SCF when it continues an unconverged reference KRKS."""

LIKE_FOR_LIKE_MAX_CYCLE = 100
"""Cycles of PySCF's KRKS at n/2 bands per k-point (:func:`insulating_reference`), continued
from the reference's last density (44 s for a gth-dzvp Si cell whose plain KRKS did not converge)."""


def crystal_reference(mf, ints) -> tuple[np.ndarray, float, np.ndarray, str]:
    """The converged KRKS reference of a crystal: ``(bands (nk, nmo), energy, dm (nk, N, N),
    source)``, Hartree.

    PySCF's KRKS first (``source`` ``"pyscf"``). Where it stops short of
    :data:`REFERENCE_CONV_TOL` — gth-dzvp Si, whose AOs are nearly linearly dependent in the
    crystal, does for some cells — :func:`solvers.periodic.run_periodic_scf` continues from
    PySCF's last density on the same integrals (the same energy and Fock build to 1e-12,
    canonical orthogonalisation, DIIS); if that converges it is the reference
    (``"vardft-scf"``), else PySCF's last state is kept (``"unconverged"``).
    """
    mf.conv_tol = REFERENCE_CONV_TOL
    mf.max_cycle = REFERENCE_MAX_CYCLE
    mf.kernel()
    dm = np.asarray(mf.make_rdm1())
    pyscf_state = np.asarray(mf.mo_energy, dtype=np.float64).reshape(ints.nkpts, -1), float(mf.e_tot), dm
    if mf.converged:
        return (*pyscf_state, "pyscf")
    res = periodic.run_periodic_scf(ints, dm0=jnp.asarray(dm), conv_tol=REFERENCE_CONV_TOL, max_cycle=CONTINUATION_MAX_CYCLE)
    if not res.converged:
        return (*pyscf_state, "unconverged")
    return np.asarray(res.mo_energy), float(res.energy), np.asarray(res.dm), "vardft-scf"


def occupied_bands(dm, S) -> list[int]:
    """Doubly occupied bands at each k-point of a crystal's density: tr P(k) S(k) / 2.

    Args:
        dm, S: (nk, N, N) density matrices (PySCF's ``dm_kpts``) and overlaps.
    """
    return [int(round(float(np.trace(np.asarray(P) @ np.asarray(Sk)).real) / 2)) for P, Sk in zip(dm, S)]


def insulating_reference(mf, ints) -> tuple[np.ndarray, float, np.ndarray, bool]:
    """PySCF's KRKS with ``n_electrons/2`` bands occupied at every k-point, the filling of
    vardft's crystal models, continued from ``mf``'s density: ``(bands, energy, dm,
    converged)``. PySCF by default occupies the lowest bands over all k-points together,
    which makes a cell whose bands overlap across the k-mesh a metal (a displaced gth-dzvp
    Si cell on a 2×2×2 mesh: 3 bands at Γ, 5 at another point); an insulator model is then
    compared with a state it cannot represent (docs/results.md, session #38)."""
    nocc = ints.n_electrons // 2

    def per_k(mo_energy_kpts=None, mo_coeff_kpts=None):
        return [np.where(np.arange(len(e)) < nocc, 2.0, 0.0) for e in mo_energy_kpts]

    fixed = mf.copy()
    fixed.get_occ = per_k
    fixed.max_cycle = LIKE_FOR_LIKE_MAX_CYCLE
    fixed.kernel(dm0=mf.make_rdm1())
    bands = np.asarray(fixed.mo_energy, dtype=np.float64).reshape(ints.nkpts, -1)
    return bands, float(fixed.e_tot), np.asarray(fixed.make_rdm1()), bool(fixed.converged)


CRYSTAL_METRIC_KEYS = ("energy_error_per_cell", "band_mae_mev", "band_max_mev", "path_band_mae_mev",
                       "insulating_band_mae_mev", "band_shift_mev", "aligned_band_mae_mev")


def band_mae_mev(pred: np.ndarray, ref: np.ndarray, n_occupied: int, n_conduction: int = N_CONDUCTION) -> tuple[float, float]:
    """(MAE, max) over k of |pred − ref| for the lowest ``n_occupied + n_conduction`` bands, meV.

    Args:
        pred, ref: (nk, nmo) band energies, Hartree, ascending at each k.
    """
    d = np.abs(_band_differences_mev(pred, ref, n_occupied, n_conduction))
    return float(d.mean()), float(d.max())


def band_shift_mev(pred: np.ndarray, ref: np.ndarray, n_occupied: int, n_conduction: int = N_CONDUCTION) -> tuple[float, float]:
    """(shift, aligned MAE) of the bands of :func:`band_mae_mev`, meV: the mean signed error
    ``pred − ref``, and the mean |error| once that one shift is taken off every band.

    A rigid shift moves no density and no gap; the aligned MAE is what is left of the band
    structure's shape (bands are often compared aligned, at the valence-band top or here
    at the mean).
    """
    d = _band_differences_mev(pred, ref, n_occupied, n_conduction)
    shift = float(d.mean())
    return shift, float(np.abs(d - shift).mean())


def _band_differences_mev(pred, ref, n_occupied, n_conduction) -> np.ndarray:
    nb = min(pred.shape[1], ref.shape[1], n_occupied + n_conduction)
    return (np.asarray(pred)[:, :nb] - np.asarray(ref)[:, :nb]) * HARTREE_TO_MEV


OTHER_SET_SEED_OFFSET = 1_000_003
"""Seed offset for a built-in set the run was not trained on (no overlap with any run's data)."""


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


def frame_metrics(system: System, hamiltonian: np.ndarray, xc: str, basis: str, grid_level: int = 3,
                  reference: tuple[Reference, object, Integrals] | None = None) -> dict:
    """Every metric of issue 4 for one frame.

    Args:
        system: the molecule.
        hamiltonian: (nao, nao) predicted H in PySCF's AO order, Hartree.
        reference: :func:`pyscf_reference` of the same arguments, to score several
            Hamiltonians of one molecule against one SCF (computed when ``None``).

    Returns:
        dict with the keys of :data:`METRIC_KEYS` (Hartree, or ratios), plus
        ``energy_predicted``, ``energy_pyscf``, ``scf_cycles`` and ``scf_cycles_from_prediction``.
    """
    ref, mf, ints = reference if reference is not None else pyscf_reference(system, xc, basis, grid_level)
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


# ------------------------------------------------------------------ crystals
def crystal_metrics(model: CrystalModel, system: System, n_conduction: int = N_CONDUCTION,
                    path: str | None = None, path_points: int = 20) -> dict:
    """Metrics of a crystal model on one structure (see the module doc).

    Args:
        path: also compare along this band path (``""``: ASE's standard path) with
            ``path_points`` k-points; ``None``: k-mesh only.

    Returns:
        dict with ``energy_error_per_cell`` (Eh), ``band_mae_mev``, ``band_max_mev``,
        ``energy_eh`` (the model's variational energy), ``reference_energy_eh``,
        ``reference_converged``, ``n_kpts``, ``n_bands``, ``mesh``, ``seconds``,
        ``reference_occupied_bands`` (per k-point; PySCF's aufbau over all k-points) and
        ``insulating_band_mae_mev``, ``insulating_band_max_mev``,
        ``insulating_energy_error_per_cell``: against :func:`insulating_reference` where
        PySCF's state is not ``n_electrons/2`` bands at every k-point or did not converge
        (NaN if that one does not converge either), else equal to the plain ones;
        ``band_shift_mev`` and ``aligned_band_mae_mev`` (:func:`band_shift_mev`) against that
        same like-for-like reference; with a path, ``path_band_mae_mev``,
        ``path_band_max_mev``.
    """
    t0 = time.perf_counter()
    cfg = model.config
    mf = make_periodic_mean_field(system, cfg.xc, cfg.basis, cfg.pseudo, cfg.kmesh, cfg.mesh)
    ints = periodic_integrals_from_mean_field(mf)
    ref_bands, ref_energy, ref_dm, source = crystal_reference(mf, ints)
    same_mesh = cfg.mesh is not None and tuple(cfg.mesh) == tuple(ints.mesh)
    H, S = model.hamiltonian(system, np.asarray(ints.kpts), ints=ints if same_mesh else None)
    P, bands = insulator_density(H, S, ints.n_electrons)
    energy = float(periodic.total_energy(P, ints))
    nocc = ints.n_electrons // 2
    mae, mx = band_mae_mev(bands, ref_bands, nocc, n_conduction)
    filling = occupied_bands(ref_dm, np.asarray(ints.overlap))  # both PySCF and vardft's SCF fill over all k
    ins_bands, ins_energy = ref_bands, ref_energy
    if source == "unconverged" or any(n != nocc for n in filling):
        ins_bands, ins_energy, _, ins_converged = insulating_reference(mf, ints)
        if not ins_converged:
            ins_bands, ins_energy = np.full_like(ins_bands, np.nan), float("nan")
    ins_mae, ins_max = band_mae_mev(bands, ins_bands, nocc, n_conduction)
    shift, aligned = band_shift_mev(bands, ins_bands, nocc, n_conduction)
    out = {
        "formula": system.formula,
        "energy_error_per_cell": energy - ref_energy,
        "band_mae_mev": mae,
        "band_max_mev": mx,
        "energy_eh": energy,
        "reference_energy_eh": ref_energy,
        "reference_converged": source != "unconverged",
        "reference": source,
        "n_kpts": int(ints.nkpts),
        "n_bands": int(min(bands.shape[1], nocc + n_conduction)),
        "mesh": list(ints.mesh),
        "reference_occupied_bands": filling,
        "insulating_band_mae_mev": ins_mae,
        "insulating_band_max_mev": ins_max,
        "insulating_energy_error_per_cell": energy - ins_energy,
        "band_shift_mev": shift,
        "aligned_band_mae_mev": aligned,
    }
    if path is not None:
        bp = band_path(system, path or None, path_points)
        kpath = absolute_kpts(mf.cell, bp.kpts_frac)
        ref_path = np.asarray(mf.get_bands(kpath, dm_kpts=ref_dm)[0], dtype=np.float64)
        Hp, Sp = model.hamiltonian(system, kpath, ints=ints if same_mesh else None)
        _, pred_path = insulator_density(Hp, Sp, ints.n_electrons)
        out["path_band_mae_mev"], out["path_band_max_mev"] = band_mae_mev(pred_path, ref_path, nocc, n_conduction)
        out["path"] = bp.path
    out["seconds"] = time.perf_counter() - t0
    return out


LIKE_FOR_LIKE_KEYS = ("insulating_band_mae_mev", "band_shift_mev", "aligned_band_mae_mev")
"""Crystal metrics against the n/2-per-k reference (:func:`insulating_reference` where it was
run): valid where that reference converged (NaN otherwise)."""


def summarize_crystals(frames: Sequence[dict]) -> dict:
    """Means of the metrics over the structures whose reference converged (energy error as a
    signed mean and a mean |·|). An unconverged SCF state is no reference (one such gth-dzvp
    Si cell: 130 meV against it, 7.7 against the converged n/2-per-k state): the metrics against
    PySCF's own state leave out the frames whose ``reference_converged`` is false (counted in
    ``n_unconverged_references``), those of :data:`LIKE_FOR_LIKE_KEYS` the frames where they
    are NaN. ``n_structures`` counts all."""
    compared = [f for f in frames if f.get("reference_converged", True)]
    out = {"n_structures": len(frames), "n_unconverged_references": len(frames) - len(compared)}
    for key in CRYSTAL_METRIC_KEYS:
        pool = frames if key in LIKE_FOR_LIKE_KEYS else compared
        vals = [f[key] for f in pool if key in f and np.isfinite(f[key])]
        if vals:
            out[key] = float(np.mean(vals))
    if compared:
        out["energy_error_per_cell_abs"] = float(np.mean([abs(f["energy_error_per_cell"]) for f in compared]))
        out["band_max_mev"] = float(np.max([f["band_max_mev"] for f in compared]))
    return out


def format_crystal_table(result: dict, title: str = "") -> str:
    """A table for people: one row per structure and the mean."""
    has_path = any("path_band_mae_mev" in f for f in result["frames"])
    metals = [i for i, f in enumerate(result["frames"]) if len(set(f.get("reference_occupied_bands", ()))) > 1]
    failed = [i for i, f in enumerate(result["frames"]) if not f.get("reference_converged", True)]
    like_for_like = metals or failed
    head = f"{'structure':<12} {'ΔE/cell (mEh)':>14} {'band MAE (meV)':>15} {'band max (meV)':>15}"
    head += f" {'path MAE (meV)':>15}" if has_path else ""
    head += f" {'n/2 per k (meV)':>16}" if like_for_like else ""
    head += f" {'shift (meV)':>12} {'aligned (meV)':>14}"
    lines = [title] if title else []
    lines += [head, "-" * len(head)]

    def row(name, f):
        text = f"{name:<12} {f['energy_error_per_cell'] * 1e3:>14.3f} {f['band_mae_mev']:>15.2f} {f['band_max_mev']:>15.2f}"
        if has_path:
            text += f" {f.get('path_band_mae_mev', float('nan')):>15.2f}"
        if like_for_like:
            text += f" {f.get('insulating_band_mae_mev', float('nan')):>16.2f}"
        text += f" {f.get('band_shift_mev', float('nan')):>+12.2f} {f.get('aligned_band_mae_mev', float('nan')):>14.2f}"
        return text

    for i, f in enumerate(result["frames"]):
        lines.append(row(f"{i}:{f['formula']}{'*' if i in failed else ''}", f))
    if result["frames"]:
        lines.append("-" * len(head))
        lines.append(row("mean", {"energy_error_per_cell": np.nan, "band_mae_mev": np.nan, "band_max_mev": np.nan,
                                  **result["mean"]}))
    lines.append(
        f"valence + {N_CONDUCTION} conduction bands at the {'x'.join(str(k) for k in result['kmesh'])} k-mesh, "
        f"vs PySCF KRKS {result['xc']}/{result['basis']}/{result['pseudo']}; shift: the mean signed band error "
        f"(model − PySCF{', at n/2 per k where PySCF fills unevenly or did not converge' if like_for_like else ''}), "
        "aligned: the MAE with that shift taken off"
    )
    if failed:
        lines.append(
            f"* PySCF's KRKS did not converge on structure(s) {', '.join(map(str, failed))} (nor did vardft's "
            "continuation of it): the columns against its last state are left out of their means; 'n/2 per k', shift "
            "and aligned compare with PySCF's SCF at n/2 bands per k (nan where that did not converge either)"
        )
    if metals:
        lines.append(
            f"PySCF's state of structure(s) {', '.join(map(str, metals))} fills the lowest bands over all k-points "
            "unevenly (bands overlap across the k-mesh: a metal); the model fills half the electrons at every "
            "k-point: 'n/2 per k' compares with PySCF's SCF at that filling"
        )
    return "\n".join(lines)


# -------------------------------------------------------------------- driver
def held_out_structures(model: Model, data: str, max_frames: int | None = None) -> list[System]:
    """The structures to validate ``model`` on: for a built-in dataset its held-out split,
    for a structure file every frame (at most ``max_frames``).

    Molecules: the built-in validation frames (drawn from their own stream, so they do
    not depend on the training size). Crystals: for the set the run was trained on, the
    structures that follow the training ones in the same sequence (none was trained on),
    ``max_frames`` of them (default 4); for another built-in set, a set drawn with the
    seed offset by :data:`OTHER_SET_SEED_OFFSET`.

    Raises:
        InputError: structures of the other kind than the model's, an unreadable file,
            ``max_frames`` < 1.
    """
    if max_frames is not None and max_frames < 1:
        raise InputError(f"--max-frames must be >= 1, got {max_frames}")
    kind, seed = model.config.kind, model.config.seed
    name = data.strip().lower()
    if name in BUILTIN_DATASETS and not os.path.exists(data):
        make, n_train_default, n_val_default = BUILTIN_DATASETS[name]
        if kind == "molecule":
            systems = list(load_dataset(name, seed=seed).validation)
        else:
            same = model.record.get("dataset") == name and model.record.get("n_train") is not None
            systems = list(load_dataset(
                name,
                seed=seed if same else seed + OTHER_SET_SEED_OFFSET,
                n_train=model.record["n_train"] if same else 0,
                n_validation=max_frames or n_val_default,
            ).validation)
    elif os.path.exists(data):
        systems = read_systems(data)
        if kind == "crystal" and all(s.cell is not None for s in systems):
            systems = [read_crystal(data, index=i) for i in range(len(systems))]
    else:
        raise MalformedFileError(f"no such file or built-in dataset: {data} (built-in: {', '.join(BUILTIN_DATASETS)})")
    for s in systems:
        if s.is_periodic != (kind == "crystal"):
            other = "crystal" if s.is_periodic else "molecule"
            raise InputError(f"the model in {model.run_dir} is a {kind} model; {data} holds a {other} ({s.formula})")
    return systems[:max_frames] if max_frames else systems


def validate_run(run_dir: str, data: str, max_frames: int | None = None, path: str | None = None,
                 path_points: int = 20, progress: bool = True) -> dict:
    """Validate the model in ``run_dir`` on the held-out structures of ``data`` against PySCF.

    Args:
        path: crystals only: also compare bands along this path (``""``: ASE's standard).

    Returns:
        ``{"run_dir", "data", "kind", "xc", "basis", "mean", "frames"}`` (crystals also
        ``pseudo``, ``kmesh``, ``baseline``): per-structure metrics
        (:func:`frame_metrics` / :func:`crystal_metrics`) and their means.

    Raises:
        CheckpointError: not a run directory. InputError: bad data, a path for molecules.
    """
    model = load(run_dir)
    if path is not None and model.config.kind != "crystal":
        raise InputError("--path compares band structures: it applies to crystal models")
    systems = held_out_structures(model, data, max_frames)
    frames = []
    for system in tqdm(systems, desc="validate", unit="structure", disable=not progress, leave=False):
        if model.config.kind == "crystal":
            frames.append(crystal_metrics(model, model._check(system), path=path, path_points=path_points))
        else:
            m = frame_metrics(system, model.hamiltonian(system), model.xc, model.basis)
            m["formula"] = system.formula
            frames.append(m)
    result = {"run_dir": run_dir, "data": data, "kind": model.config.kind, "xc": model.xc, "basis": model.basis}
    if model.config.kind == "crystal":
        result.update(pseudo=model.config.pseudo, kmesh=list(model.config.kmesh), baseline=model.config.baseline,
                      mean=summarize_crystals(frames))
    else:
        result["mean"] = summarize(frames)
    result["frames"] = frames
    return result


def format_result(result: dict) -> str:
    """The table of a :func:`validate_run` result, for either kind."""
    if result["kind"] == "crystal":
        return format_crystal_table(result, f"{result['run_dir']} on held-out {result['data']} vs PySCF KRKS")
    return format_table(result["mean"], f"{result['run_dir']} on {result['data']} ({result['xc']}/{result['basis']}) vs PySCF")
