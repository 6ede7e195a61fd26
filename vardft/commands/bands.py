"""``vardft bands``: band structure of a crystal along a high-symmetry path.

``--scf`` runs vardft's JAX k-point SCF (the settings of PySCF's ``KRKS`` with
FFT density fitting), takes the Kohn–Sham potential of the converged density
to every k-point on the path and diagonalises F(k) there, as PySCF's
``mf.get_bands`` does. ``--compare-pyscf`` runs PySCF's own SCF and
``get_bands`` on the same path and reports the largest difference.
``--model RUN_DIR`` takes a crystal model trained by ``vardft train`` (:class:`vardft.api.CrystalModel`):
H(k) = H_base(k) + Σ_R e^{ik·R} ΔH(R) at every k on the path (the run's baseline, the
potential of PySCF's guess density, taken to each k; the network's H(R) Bloch-summed),
solved with S(k) from PySCF (``--xc``, ``--basis``, ``--pseudo``, ``--kmesh`` and the
FFT mesh then come from the model's run directory, and ``--compare-pyscf`` runs KRKS
with them).

Example:
    vardft bands si --scf --xc pbe --basis gth-szv --kmesh 3 3 3 --path GXWKGL --plot bands.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from basis.crystal import (
    DEFAULT_PATH_POINTS,
    absolute_kpts,
    band_path,
    default_pseudo,
    read_crystal,
    supercell_map,
    to_cell,
)
from basis.errors import InputError, ResourceLimitError
from basis.pbc_integrals import (
    BLOCH_AO_BUDGET_BYTES,
    band_integral_chunks,
    bloch_ao_nbytes,
    check_periodic_functional,
    make_periodic_mean_field,
    periodic_integrals_from_mean_field,
)
from basis.units import HARTREE_TO_EV
from solvers.bands import band_structure
from solvers.periodic import run_periodic_scf
from vardft.api import SPARSE_MIN_AOS, band_window, load
from vardft.config import CRYSTAL_BASIS, DEFAULT_XC

BAND_CHUNK_BYTES = 512 * 2**20
"""Bloch AO memory per chunk of path k-points."""

UNFOLD_WEIGHT_SHOWN = 0.02
"""Unfolded states with less spectral weight than this are not drawn."""

PYSCF_CONV_TOL = 1e-10
"""Energy convergence of the PySCF reference SCF for ``--compare-pyscf``."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bands",
        help="band structure of a crystal along a high-symmetry path",
        description=(
            "Band structure of a crystal: from vardft's JAX k-point SCF (--scf) or "
            "a trained crystal model (--model). INPUT is a CIF/POSCAR/extxyz-with-cell file or a "
            "built-in crystal: si, diamond, hbn."
        ),
    )
    p.add_argument("input", metavar="INPUT", help="structure file with a cell, or si | diamond | hbn")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--scf", action="store_true", help="bands from vardft's JAX k-point SCF")
    source.add_argument("--model", metavar="RUN_DIR", help="bands from a crystal model trained by vardft (its xc, basis, pseudo)")
    p.add_argument("--xc", default=DEFAULT_XC, help=f"LDA or GGA functional, PySCF names (default {DEFAULT_XC})")
    p.add_argument("--basis", default=CRYSTAL_BASIS, help=f"GTH basis (default {CRYSTAL_BASIS})")
    p.add_argument("--pseudo", default=None, help="GTH pseudopotential (default: gth-pade for LDA, gth-pbe for PBE)")
    p.add_argument("--kmesh", nargs=3, type=int, metavar=("N1", "N2", "N3"), default=None,
                   help="SCF k-point mesh (default 3 per periodic direction, 1 along vacuum)")
    p.add_argument("--path", default=None, help="high-symmetry path, e.g. GXWKGL or GX,KL (default: ASE's for the lattice)")
    p.add_argument("--npoints", type=int, default=None, help="k-points along the path (default 60)")
    p.add_argument("--nbands", type=int, default=None, metavar="N",
                   help="with --model: only the N bands nearest the Fermi level (half below, half above the "
                        "gap), from a solver that computes no others; for large cells (default: every band)")
    p.add_argument("--solver", default="auto", choices=["auto", "dense", "sparse"],
                   help="with --model and --nbands on a sap run: dense H(k), S(k) and LAPACK's subset solver, or "
                        "sparse ones and shift-invert Lanczos (memory and time that grow slower with the cell); "
                        f"auto: sparse from {SPARSE_MIN_AOS:,} AOs (default auto)")
    p.add_argument("--unfold", metavar="PRIMITIVE", default=None,
                   help="with --model: unfold the bands of INPUT (a supercell, displaced or not) onto the "
                        "Brillouin zone of PRIMITIVE (file or built-in name): the path is PRIMITIVE's and each "
                        "state gets its spectral weight there (1: a primitive band, 0: folded in); the plot "
                        "draws states by weight")
    p.add_argument("--plot", metavar="FILE", default=None, help="write the band structure plot (png, pdf, svg)")
    p.add_argument("--compare-pyscf", action="store_true", help="also run PySCF's KRKS + get_bands and compare")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def _band_record(system, xc, basis, pseudo, kmesh, bp, bands, fermi) -> dict:
    """The JSON keys shared by SCF and model bands (bands and ``fermi`` in Hartree, written in eV)."""
    return {
        "formula": system.formula,
        "xc": xc,
        "basis": basis,
        "pseudo": pseudo,
        "kmesh": list(kmesh),
        "path": bp.path,
        "labels": [{"label": lab, "index": int(i)} for lab, i in zip(bp.labels, bp.label_indices)],
        "kpoints_frac": bp.kpts_frac.tolist(),
        "x": bp.x.tolist(),
        "bands_ev": (bands * HARTREE_TO_EV).tolist(),
        "fermi_ev": float(fermi) * HARTREE_TO_EV,
    }


def _pyscf_bands(mf, kpts_path, bands, first: int = 0) -> tuple[np.ndarray, dict]:
    """Converge PySCF's KRKS ``mf`` tightly, and its ``get_bands`` on the path (bands
    ``first …`` as many as ``bands`` has) compared with ``bands``."""
    mf.conv_tol = PYSCF_CONV_TOL
    mf.kernel()
    ref_bands = np.asarray(mf.get_bands(kpts_path)[0], dtype=np.float64)[:, first: first + bands.shape[1]]
    return ref_bands, {
        "bands_ev": (ref_bands * HARTREE_TO_EV).tolist(),
        "fermi_ev": float(mf.get_fermi()) * HARTREE_TO_EV,
        "energy_eh": float(mf.e_tot),
        "converged": bool(mf.converged),
        "max_abs_band_diff_mev": float(np.abs(ref_bands - bands).max() * HARTREE_TO_EV * 1e3),
    }


def check_bloch_memory(mf, xc: str) -> None:
    """Refuse, before anything is allocated, an SCF whose Bloch AO values on the FFT mesh
    exceed :data:`basis.pbc_integrals.BLOCH_AO_BUDGET_BYTES` (all-electron bases such as
    def2-svp on Si ask PySCF for a 2263³ mesh: hundreds of GiB).

    Raises:
        ResourceLimitError: one line with the estimate in GiB and what to change.
    """

    functional = check_periodic_functional(xc)
    mesh = [int(m) for m in mf.with_df.mesh]
    ngrid = int(np.prod(np.asarray(mesh, dtype=np.int64)))
    nkpts, nao = len(mf.kpts), int(mf.cell.nao_nr())
    need = bloch_ao_nbytes(nkpts, ngrid, nao, functional)
    if need > BLOCH_AO_BUDGET_BYTES:
        raise ResourceLimitError(
            f"basis {mf.cell.basis}: the Bloch AO values would need {need / 2**30:.3g} GiB "
            f"({nkpts} k-points x {'x'.join(map(str, mesh))} mesh points x {nao} AOs), more than the "
            f"{BLOCH_AO_BUDGET_BYTES / 2**30:g} GiB budget; use a GTH basis (gth-szv, gth-dzvp) or a smaller --kmesh"
        )


def scf_band_structure(
    system,
    xc: str = "pbe",
    basis: str = "gth-szv",
    pseudo: str | None = None,
    kmesh=None,
    path: str | None = None,
    npoints: int | None = None,
    compare_pyscf: bool = False,
) -> dict:
    """Band structure of crystal ``system`` from vardft's JAX SCF; a JSON-ready dict.

    Keys: ``labels`` (list of {label, index}), ``kpoints_frac`` (nk × 3, units of
    the reciprocal lattice vectors), ``x`` (nk, path coordinate, 1/Å),
    ``bands_ev`` (nk × nbands, absolute energies, eV), ``fermi_ev`` (highest
    occupied state on the SCF k-mesh, PySCF's ``get_fermi``), ``vbm_ev``,
    ``cbm_ev``, ``gap_ev`` (along the path; ``None`` without conduction
    bands), ``energy_eh`` (per cell), ``xc``, ``basis``, ``pseudo``,
    ``kmesh``, ``path``, ``formula``, ``n_electrons``, ``converged``, ``n_iter``,
    ``timings_s``; with ``compare_pyscf`` also ``pyscf`` ({``bands_ev``,
    ``fermi_ev``, ``energy_eh``, ``max_abs_band_diff_mev``, ``energy_diff_eh``}).

    Raises:
        InputError subclasses for bad crystals, functionals, bases, meshes or paths.
    """

    npoints = DEFAULT_PATH_POINTS if npoints is None else npoints
    timings = {}
    t0 = time.perf_counter()
    bp = band_path(system, path, npoints)
    mf = make_periodic_mean_field(system, xc=xc, basis=basis, pseudo=pseudo, kmesh=kmesh)
    check_bloch_memory(mf, xc)
    cell = mf.cell
    ints = periodic_integrals_from_mean_field(mf)
    timings["integrals"] = time.perf_counter() - t0

    result = run_periodic_scf(ints)
    timings.update(result.timings)

    t0 = time.perf_counter()
    kpts_path = absolute_kpts(cell, bp.kpts_frac)
    per_k = bloch_ao_nbytes(1, ints.ngrid, ints.nao, ints.functional)
    size = int(max(1, BAND_CHUNK_BYTES // per_k))
    bands = band_structure(result.dm, ints, band_integral_chunks(cell, kpts_path, ints.functional, size))
    timings["bands"] = time.perf_counter() - t0

    out = _band_record(system, ints.functional.name, ints.basis, ints.pseudo, ints.kmesh, bp, bands, result.fermi)
    out.update({
        "energy_eh": float(result.energy),
        "n_electrons": int(ints.n_electrons),
        "converged": bool(result.converged),
        "n_iter": int(result.n_iter),
    })
    gap = _gap(out)
    out["vbm_ev"], out["cbm_ev"], out["gap_ev"] = gap if gap is not None else (None, None, None)
    if compare_pyscf:
        t0 = time.perf_counter()
        _, out["pyscf"] = _pyscf_bands(mf, kpts_path, bands)
        timings["pyscf"] = time.perf_counter() - t0
        out["pyscf"]["energy_diff_eh"] = float(result.energy) - float(mf.e_tot)
    out["timings_s"] = {k: round(float(v), 3) for k, v in timings.items()}
    return out


def model_band_structure(
    system,
    run_dir: str,
    path: str | None = None,
    npoints: int | None = None,
    compare_pyscf: bool = False,
    nbands: int | None = None,
    unfold=None,
    solver: str = "auto",
) -> dict:
    """Band structure of ``system`` from the crystal model in ``run_dir``; the keys of
    :func:`scf_band_structure` (``energy_eh``, ``converged``, ``n_iter`` only with
    ``compare_pyscf``, from PySCF). ``fermi_ev`` is the highest occupied band on the path.
    ``nbands``: only the bands nearest the Fermi level (:meth:`CrystalModel.band_window`);
    ``first_band`` is the index of the first one. ``unfold``: a primitive cell of which
    ``system`` is a supercell; the path is the primitive cell's and ``weights`` (nk × nbands)
    the spectral weight of each state there (:meth:`CrystalModel.unfolded_bands`);
    ``unfolded_onto`` its formula. ``solver``: :meth:`CrystalModel.bands`'s.

    Raises:
        CheckpointError: no run directory or not a crystal model; InputError subclasses
        for bad crystals or paths, or elements the model does not know.
    """

    npoints = DEFAULT_PATH_POINTS if npoints is None else npoints
    timings = {}
    t0 = time.perf_counter()
    if unfold is not None:
        supercell_map(unfold, system)  # not a supercell of it: said before any work
    bp = band_path(system if unfold is None else unfold, path, npoints)
    model = load(run_dir, "crystal")
    cfg = model.config
    pseudo = cfg.pseudo or default_pseudo(cfg.xc)
    # the training FFT mesh fits the training cells; a sap model needs no mesh, so PySCF's
    # reference gets its own default mesh for this cell (a supercell needs a finer one)
    mesh = None if cfg.baseline == "sap" else cfg.mesh
    cell = to_cell(system, basis=cfg.basis, pseudo=pseudo, mesh=mesh)
    path_cell = cell if unfold is None else to_cell(unfold, basis=cfg.basis, pseudo=pseudo, mesh=mesh)
    kpts_path = absolute_kpts(path_cell, bp.kpts_frac)
    timings["setup"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    window = None if nbands is None else band_window(int(cell.nao_nr()), int(cell.nelectron) // 2, nbands)
    first = 0 if window is None else window[0]
    weights = None
    if unfold is None:
        bands = model.bands(system, kpts_path, window=window, solver=solver)
    else:
        bands, weights = model.unfolded_bands(system, unfold, kpts_path, window=window)
    timings["model"] = time.perf_counter() - t0
    n_electrons = int(cell.nelectron)
    nocc = n_electrons // 2
    out = _band_record(system, cfg.xc, cfg.basis, pseudo, cfg.kmesh, bp, bands, bands[:, nocc - 1 - first].max())
    out.update({"n_electrons": n_electrons, "model": run_dir, "first_band": first})
    if weights is not None:
        out.update({"weights": np.round(weights, 6).tolist(), "unfolded_onto": unfold.formula})
    if compare_pyscf:
        t0 = time.perf_counter()
        mf = make_periodic_mean_field(system, xc=cfg.xc, basis=cfg.basis, pseudo=pseudo, kmesh=cfg.kmesh, mesh=mesh)
        ref_bands, out["pyscf"] = _pyscf_bands(mf, kpts_path, bands, first)
        timings["pyscf"] = time.perf_counter() - t0
        nb = min(bands.shape[1], nocc + 4 - first)
        out["energy_eh"] = float(mf.e_tot)
        out["converged"] = bool(mf.converged)
        out["n_iter"] = int(getattr(mf, "cycles", -1) or -1)
        out["pyscf"]["band_mae_mev"] = float(np.abs(ref_bands[:, :nb] - bands[:, :nb]).mean() * HARTREE_TO_EV * 1e3)
        out["pyscf"]["energy_diff_eh"] = 0.0
    out["timings_s"] = {k: round(float(v), 3) for k, v in timings.items()}
    return out


def _pretty(label: str) -> str:
    return "Γ" if label == "G" else label


def plot_bands(data: dict, filename: str) -> None:
    """Draw ``data`` (from :func:`scf_band_structure`) to ``filename``.

    Vertical lines mark the high-symmetry points (``X|K`` at a path break), a
    dashed line the Fermi level; PySCF's bands, when present, as dots.
    """
    # imported here, not at the top: only --plot needs it (about 1 s of start-up for every
    # other command), and the file backend must be chosen before pyplot is imported
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.asarray(data["x"])
    bands = np.asarray(data["bands_ev"])
    bands = np.where(bands > 1e20, np.nan, bands)  # directions removed as linearly dependent
    fermi = data["fermi_ev"]
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    if "weights" in data:  # unfolded: each state a dot, its size and darkness its weight
        weights = np.clip(np.asarray(data["weights"]), 0.0, 1.0)
        xs = np.broadcast_to(x[:, None], bands.shape)
        keep = weights > UNFOLD_WEIGHT_SHOWN
        ax.scatter(xs[keep], bands[keep], s=14.0 * weights[keep], c=weights[keep], cmap="Blues", vmin=-0.3,
                   vmax=1.0, linewidths=0)
        ax.plot([], [], ls="none", marker="o", ms=4, color="tab:blue",
                label=f"vardft (model), unfolded onto {data['unfolded_onto']}")
    else:
        ax.plot(x, bands, color="tab:blue", lw=1.4)
        ax.plot([], [], color="tab:blue", lw=1.4, label="vardft (model)" if "model" in data else "vardft (JAX SCF)")
    if "pyscf" in data:
        ref = np.asarray(data["pyscf"]["bands_ev"])
        ref = np.where(ref > 1e20, np.nan, ref)
        ax.plot(x, ref, ls="none", marker="o", ms=2.5, color="tab:orange")
        ax.plot([], [], ls="none", marker="o", ms=2.5, color="tab:orange", label="PySCF get_bands")
    ticks, names = [], []
    for item in data["labels"]:
        xi = float(x[item["index"]])
        if ticks and abs(xi - ticks[-1]) < 1e-9:
            names[-1] = f"{names[-1]}|{_pretty(item['label'])}"
        else:
            ticks.append(xi)
            names.append(_pretty(item["label"]))
    for xi in ticks:
        ax.axvline(xi, color="0.6", lw=0.8)
    ax.axhline(fermi, color="tab:red", ls="--", lw=1.0, label=f"Fermi level {fermi:.2f} eV")
    ax.set_xticks(ticks, names)
    ax.set_xlim(x[0], x[-1])
    top = min(float(np.nanmax(bands)), fermi + 15.0)
    ax.set_ylim(float(np.nanmin(bands)) - 1.0, top + 1.0)
    ax.set_ylabel("energy (eV)")
    ax.set_title(
        f"{data['formula']}  {data['xc'].upper()} / {data['basis']} / {data['pseudo']}, "
        f"k-mesh {'x'.join(str(k) for k in data['kmesh'])}"
    )
    ax.legend(loc="upper right", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    fig.savefig(filename, dpi=150)
    plt.close(fig)


def _gap(data: dict) -> tuple[float, float, float] | None:
    bands = np.asarray(data["bands_ev"])
    nocc = data["n_electrons"] // 2 - data.get("first_band", 0)
    if not 0 < nocc < bands.shape[1] or bands[:, nocc:].min() > 1e20:
        return None
    vbm, cbm = bands[:, nocc - 1].max(), bands[:, nocc:].min()
    return float(vbm), float(cbm), float(cbm - vbm)


def _summary(data: dict, plot: str | None) -> str:
    lines = [
        f"{data['formula']}  {data['xc']} / {data['basis']} / {data['pseudo']}  "
        f"k-mesh {'x'.join(str(k) for k in data['kmesh'])}",
    ]
    if "model" in data:
        lines.append(f"model           {data['model']}")
    if "energy_eh" in data:
        lines.append(
        f"SCF energy      {data['energy_eh']:.10f} Eh per cell "
        f"({'converged' if data['converged'] else 'NOT converged'} in {data['n_iter']} cycles)"
        + (" (PySCF)" if "model" in data else ""))
    lines += [
        f"Fermi level     {data['fermi_ev']:.4f} eV (highest occupied state on the SCF k-mesh)",
    ]
    gap = _gap(data)
    if gap is not None:
        lines.append(f"band gap        {gap[2]:.4f} eV along the path (VBM {gap[0]:.4f}, CBM {gap[1]:.4f} eV)")
    names = " ".join(_pretty(item["label"]) for item in data["labels"])
    first, count = data.get("first_band", 0), len(data["bands_ev"][0])
    which = f"bands {first + 1}–{first + count} (nearest the Fermi level)" if first else f"{count} bands"
    lines.append(f"path            {data['path']} ({len(data['x'])} k-points: {names}), {which}")
    if "weights" in data:
        w = np.asarray(data["weights"])
        lines.append(f"unfolded onto   {data['unfolded_onto']}: {int((w > 0.5).sum(axis=1).mean())} states per "
                     f"k-point with weight > 0.5 (mean weight {w.mean():.3f})")
    if "pyscf" in data:
        ref = data["pyscf"]
        lines.append(
            f"vs PySCF        max |Δε| = {ref['max_abs_band_diff_mev']:.2e} meV, "
            + (f"MAE (valence + 4 conduction) {ref['band_mae_mev']:.1f} meV" if "band_mae_mev" in ref
               else f"ΔE = {ref['energy_diff_eh']:.2e} Eh per cell")
        )
    if plot:
        lines.append(f"plot            {plot}")
    times = ", ".join(f"{k} {v:.1f} s" for k, v in data["timings_s"].items())
    lines.append(f"time            {times}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:

    system = read_crystal(args.input)
    if args.model is not None:
        primitive = None if args.unfold is None else read_crystal(args.unfold)
        data = model_band_structure(system, args.model, path=args.path, npoints=args.npoints,
                                    compare_pyscf=args.compare_pyscf, nbands=args.nbands, unfold=primitive,
                                    solver=args.solver)
    else:
        if args.nbands is not None:
            raise InputError("--nbands works with --model (the SCF solves every band anyway)")
        if args.unfold is not None:
            raise InputError("--unfold works with --model")
        data = scf_band_structure(
            system,
            xc=args.xc,
            basis=args.basis,
            pseudo=args.pseudo,
            kmesh=args.kmesh,
            path=args.path,
            npoints=args.npoints,
            compare_pyscf=args.compare_pyscf,
        )
    if args.plot:
        try:
            plot_bands(data, args.plot)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot write plot {args.plot}: {exc}") from None
    if args.json:
        json.dump(data, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(_summary(data, args.plot))
    return 0
