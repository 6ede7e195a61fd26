"""Metrics of a crystal model against PySCF's own k-point SCF on the same inputs.

For each held-out crystal PySCF runs ``KRKS`` with the run's xc, basis,
pseudopotential, k-mesh and FFT mesh (:func:`basis.pbc_integrals.make_periodic_mean_field`;
the run's mesh is PySCF's default for its first training structure unless training
chose another), so the reference is the functional the model was trained on. The model's H(k) (baseline + network, exactly as in
training, :func:`vardft.train_crystal.crystal_hamiltonian_at`) is then compared:

- ``energy_error_per_cell``: E[P(H)] − E_KRKS, Hartree per cell, where P(H) fills the
  lowest n_electrons/2 bands of H(k) at every k and E is the variational KS energy
  (:mod:`solvers.periodic`, which reproduces PySCF's KRKS energy); ≥ 0 up to
  the reference's convergence.
- ``band_mae_mev``: mean |ε_model − ε_KRKS| over the k-points of the mesh and the
  valence bands plus the ``n_conduction`` lowest conduction bands, meV.
- optionally ``path_band_mae_mev``: the same along a band path, against PySCF's
  ``mf.get_bands`` of the converged KRKS.

Example:
    >>> from vardft.validate_crystal import validate_crystal_run
    >>> result = validate_crystal_run("runs/si", "si")        # doctest: +SKIP
    >>> result["mean"]["band_mae_mev"]                          # doctest: +SKIP
"""

from __future__ import annotations

import time
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from basis.system import System

from basis.units import HARTREE_TO_MEV

N_CONDUCTION = 4
"""Conduction bands included in the band MAE (the crystal issue's target)."""

REFERENCE_CONV_TOL = 1e-10
"""Energy convergence of PySCF's reference KRKS, Hartree per cell."""

N_VALIDATION_DEFAULT = 4
"""Held-out structures of a built-in crystal set when the run does not say."""

METRIC_KEYS = ("energy_error_per_cell", "band_mae_mev", "band_max_mev", "path_band_mae_mev")


def band_mae_mev(pred: np.ndarray, ref: np.ndarray, n_occupied: int, n_conduction: int = N_CONDUCTION) -> tuple[float, float]:
    """(MAE, max) over k of |pred − ref| for the lowest ``n_occupied + n_conduction`` bands, meV.

    Args:
        pred, ref: (nk, nmo) band energies, Hartree, ascending at each k.
    """
    nb = min(pred.shape[1], ref.shape[1], n_occupied + n_conduction)
    d = np.abs(np.asarray(pred)[:, :nb] - np.asarray(ref)[:, :nb]) * HARTREE_TO_MEV
    return float(d.mean()), float(d.max())


def insulator_density(H: np.ndarray, S: np.ndarray, n_electrons: int):
    """P(k) (nk, nao, nao) filling the lowest n_electrons/2 bands of H(k) C = S(k) C ε at each k,
    and ε (nk, nmo), Hartree."""
    from solvers.periodic import density_matrices, generalized_eigh

    e, C = generalized_eigh(jnp.asarray(H), jnp.asarray(S))
    occ = jnp.zeros(e.shape).at[:, : n_electrons // 2].set(2.0)
    return density_matrices(C, occ), np.asarray(e)


def crystal_metrics(
    params,
    model_cfg,
    cfg,
    system: System,
    n_conduction: int = N_CONDUCTION,
    path: str | None = None,
    path_points: int = 20,
) -> dict:
    """Metrics of the model in ``(params, model_cfg, cfg)`` on one crystal (see the module doc).

    Args:
        cfg: the run's :class:`~vardft.train_crystal.CrystalTrainConfig` (xc, basis,
            pseudo, k-mesh, baseline, FFT mesh of the baseline).
        path: also compare along this band path (``""``: ASE's standard path) with
            ``path_points`` k-points; ``None``: k-mesh only.

    Returns:
        dict with ``energy_error_per_cell`` (Eh), ``band_mae_mev``, ``band_max_mev``,
        ``energy_eh`` (the model's variational energy), ``reference_energy_eh``,
        ``reference_converged``, ``n_kpts``, ``n_bands``, ``mesh`` (the FFT mesh), ``seconds`` and, with a path, ``path_band_mae_mev``, ``path_band_max_mev``.
    """
    from basis.crystal import absolute_kpts, band_path
    from basis.pbc_integrals import make_periodic_mean_field, periodic_integrals_from_mean_field
    from solvers.periodic import total_energy
    from vardft.train_crystal import crystal_hamiltonian_at

    t0 = time.perf_counter()
    system = System.from_any(system)
    mf = make_periodic_mean_field(system, cfg.xc, cfg.basis, cfg.pseudo, cfg.kmesh, cfg.mesh)
    ints = periodic_integrals_from_mean_field(mf)
    mf.conv_tol = REFERENCE_CONV_TOL
    mf.kernel()
    ref_bands = np.asarray(mf.mo_energy, dtype=np.float64).reshape(ints.nkpts, -1)
    same_mesh = cfg.mesh is not None and tuple(cfg.mesh) == tuple(ints.mesh)
    H, S = crystal_hamiltonian_at(params, model_cfg, cfg, system, np.asarray(ints.kpts), ints=ints if same_mesh else None)
    P, bands = insulator_density(H, S, ints.n_electrons)
    energy = float(total_energy(P, ints))
    nocc = ints.n_electrons // 2
    mae, mx = band_mae_mev(bands, ref_bands, nocc, n_conduction)
    out = {
        "formula": system.formula,
        "energy_error_per_cell": energy - float(mf.e_tot),
        "band_mae_mev": mae,
        "band_max_mev": mx,
        "energy_eh": energy,
        "reference_energy_eh": float(mf.e_tot),
        "reference_converged": bool(mf.converged),
        "n_kpts": int(ints.nkpts),
        "n_bands": int(min(bands.shape[1], nocc + n_conduction)),
        "mesh": list(ints.mesh),
    }
    if path is not None:
        bp = band_path(system, path or None, path_points)
        kpath = absolute_kpts(mf.cell, bp.kpts_frac)
        ref_path = np.asarray(mf.get_bands(kpath)[0], dtype=np.float64)
        Hp, Sp = crystal_hamiltonian_at(params, model_cfg, cfg, system, kpath, ints=ints if same_mesh else None)
        _, pred_path = insulator_density(Hp, Sp, ints.n_electrons)
        out["path_band_mae_mev"], out["path_band_max_mev"] = band_mae_mev(pred_path, ref_path, nocc, n_conduction)
        out["path"] = bp.path
    out["seconds"] = time.perf_counter() - t0
    return out


def summarize_crystals(frames: Sequence[dict]) -> dict:
    """Means of the metrics over structures (energy error as a signed mean and a mean |·|)."""
    out = {"n_structures": len(frames)}
    for key in METRIC_KEYS:
        vals = [f[key] for f in frames if key in f]
        if vals:
            out[key] = float(np.mean(vals))
    if frames:
        out["energy_error_per_cell_abs"] = float(np.mean([abs(f["energy_error_per_cell"]) for f in frames]))
        out["band_max_mev"] = float(np.max([f["band_max_mev"] for f in frames]))
    return out


def held_out_structures(cfg, data: str, n: int | None = None) -> list[System]:
    """Held-out crystals for ``data``: a built-in set name or a structure file (every frame).

    For the built-in set the run was trained on, the structures that follow the
    training ones in the same deterministic sequence (:func:`~vardft.train_crystal.crystal_dataset`
    with the run's seed), so none was used in training; for another built-in name, a set
    drawn with a different seed.

    Raises:
        InputError subclasses: unreadable file, a structure without a cell.
    """
    import os

    from basis.crystal import BUILTIN_CRYSTALS, read_crystal
    from basis.system import read_systems
    from vardft.train_crystal import crystal_dataset

    n = N_VALIDATION_DEFAULT if n is None else int(n)
    name = data.strip().lower()
    if name in BUILTIN_CRYSTALS and not os.path.exists(data):
        if cfg.dataset == name and cfg.n_train is not None:
            return crystal_dataset(name, cfg.n_train + n, seed=cfg.seed)[cfg.n_train:]
        return crystal_dataset(name, n, seed=cfg.seed + 1_000_003)
    if not os.path.exists(data):
        from basis.errors import MalformedFileError

        raise MalformedFileError(
            f"{data}: not a built-in crystal ({', '.join(BUILTIN_CRYSTALS)}) or a structure file; "
            "a crystal model validates on crystals"
        )
    frames = read_systems(data)
    systems = [read_crystal(data, index=i) for i in range(len(frames))]
    return systems[:n] if n else systems


def validate_crystal_run(
    run_dir: str,
    data: str,
    n_structures: int | None = None,
    path: str | None = None,
    path_points: int = 20,
    progress: bool = False,
) -> dict:
    """Validate the crystal model in ``run_dir`` on held-out structures of ``data``.

    Returns:
        ``{"run_dir", "data", "xc", "basis", "pseudo", "kmesh", "baseline", "mean", "frames"}``
        (``mean`` from :func:`summarize_crystals`, ``frames`` from :func:`crystal_metrics`).

    Raises:
        CheckpointError: not a crystal run directory. InputError subclasses: bad data,
        elements the model does not know.
    """
    from tqdm.auto import tqdm

    from basis.errors import InputError
    from vardft.train_crystal import load_crystal_model

    params, model_cfg, cfg = load_crystal_model(run_dir)
    systems = held_out_structures(cfg, data, n_structures)
    unknown = sorted({s for sys_ in systems for s in sys_.symbols} - set(model_cfg.elements))
    if unknown:
        raise InputError(f"the model in {run_dir} knows {', '.join(model_cfg.elements)}, not {', '.join(unknown)}")
    frames = [
        crystal_metrics(params, model_cfg, cfg, s, path=path, path_points=path_points)
        for s in tqdm(systems, desc="validate", unit="crystal", disable=not progress, leave=False)
    ]
    return {
        "run_dir": run_dir,
        "data": data,
        "xc": cfg.xc,
        "basis": cfg.basis,
        "pseudo": cfg.pseudo,
        "kmesh": list(cfg.kmesh),
        "baseline": cfg.baseline,
        "mean": summarize_crystals(frames),
        "frames": frames,
    }


def format_crystal_table(result: dict, title: str = "") -> str:
    """A table for people: one row per structure and the mean."""
    has_path = any("path_band_mae_mev" in f for f in result["frames"])
    head = f"{'structure':<12} {'ΔE/cell (mEh)':>14} {'band MAE (meV)':>15} {'band max (meV)':>15}"
    head += f" {'path MAE (meV)':>15}" if has_path else ""
    lines = [title] if title else []
    lines += [head, "-" * len(head)]

    def row(name, f):
        text = f"{name:<12} {f['energy_error_per_cell'] * 1e3:>14.3f} {f['band_mae_mev']:>15.2f} {f['band_max_mev']:>15.2f}"
        if has_path:
            text += f" {f.get('path_band_mae_mev', float('nan')):>15.2f}"
        return text

    for i, f in enumerate(result["frames"]):
        lines.append(row(f"{i}:{f['formula']}", f))
    if result["frames"]:
        lines.append("-" * len(head))
        lines.append(row("mean", result["mean"]))
    lines.append(
        f"valence + {N_CONDUCTION} conduction bands at the {'x'.join(str(k) for k in result['kmesh'])} k-mesh, "
        f"vs PySCF KRKS {result['xc']}/{result['basis']}/{result['pseudo']}"
    )
    return "\n".join(lines)


__all__ = [
    "N_CONDUCTION",
    "band_mae_mev",
    "crystal_metrics",
    "format_crystal_table",
    "held_out_structures",
    "insulator_density",
    "summarize_crystals",
    "validate_crystal_run",
]
