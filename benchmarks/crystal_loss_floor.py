"""What a crystal loss can reach without a network: its floor on one cell.

The label-free crystal loss is minimised over a free table of real-space corrections ΔH(R)
(every block R the network would output for the cell, each entry a free parameter, with
ΔH(−R) = ΔH(R)ᵀ) on one cell of the built-in set, and the bands of the resulting H(k) are
compared with PySCF's KRKS on the k-mesh (valence + 4 conduction bands, as
``vardft validate``). No network can reach a lower loss on that cell than the table's
minimum; what an optimiser finds from a given start is another matter (gth-dzvp Si: from
H_base the table stalls far from a state the loss keeps once started there;
docs/results.md, session #39).

``--start ceiling`` starts from the table whose H is the best the baseline and the overlap
filter allow, H = H_base + G (F* − H_base) G with F* PySCF's converged Fock matrix (fitted at
the mesh and off-mesh points, where the loss looks): if the loss moves away from it, its
minimum lies elsewhere. ``--start zero`` starts from H_base, as training does; ``--start fixed-point`` from the
filtered family's self-consistent H (below): where a loss that only asked for
self-consistency would stay.

``--fixed-point N`` skips the loss and iterates H ← H_base + G (F[P(H)] − H_base) G (linear
mixing) from that ceiling: the self-consistent solution within the filtered family, where
any loss that asks for self-consistency ends if it gets there. It also iterates the
unfiltered map, the SCF at vardft's filling (n/2 bands at every k-point), and checks it
against PySCF's own SCF at that filling (:func:`vardft.validate.insulating_reference`):
PySCF by default fills the lowest bands over all k-points, which differs where bands
overlap across the k-mesh. Bands are compared with both references.

Timings are not the point here; the optimizer is Adam with a cosine schedule over the
table, ``--lr`` Hartree per step.

Usage (gth-dzvp Si, the settings of the preset-M run; about 10 minutes here):
    .venv/bin/python benchmarks/crystal_loss_floor.py --basis gth-dzvp --overlap-filter 1e-3 \\
        --band-weight 3000 --steps 1500 --lr 3e-5 --json
    .venv/bin/python benchmarks/crystal_loss_floor.py --basis gth-dzvp --overlap-filter 1e-3 \\
        --band-weight 0 --start ceiling --steps 300 --lr 3e-6
    .venv/bin/python benchmarks/crystal_loss_floor.py --basis gth-dzvp --overlap-filter 1e-3 --fixed-point 30
    .venv/bin/python benchmarks/crystal_loss_floor.py --basis gth-dzvp --overlap-filter 1e-3 \\
        --band-weight 3000 --start fixed-point --steps 300 --lr 3e-6   # does the loss keep the fixed point?
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def partner_shifts(shifts: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Index of −R for each real shift R (padding slots map to themselves)."""
    index = {tuple(int(v) for v in r): i for i, (r, m) in enumerate(zip(shifts, mask)) if m}
    out = np.arange(len(shifts))
    for i, (r, m) in enumerate(zip(shifts, mask)):
        if m:
            out[i] = index[tuple(-int(v) for v in r)]
    return out


def ceiling_table(task, data, ref_dm, nao: int) -> np.ndarray:
    """ΔH(R) (nR, N, N) whose Bloch sums are F*(k) − H_base(k) at the mesh and off-mesh
    points (least squares, exact here: more blocks than k-points)."""
    import jax
    import jax.numpy as jnp

    from solvers import periodic
    from vardft.losses import offmesh_fock

    ints = jax.tree.map(lambda v: v[0], data.ints)
    P = jnp.asarray(np.asarray(ref_dm), dtype=jnp.complex128)
    targets = [np.asarray(periodic.energy_and_fock(P, ints)[2]) - np.asarray(data.h_base[0])]
    kpts = [np.asarray(data.ints.kpts[0])]
    if data.offmesh is not None:
        off = jax.tree.map(lambda v: v[0], data.offmesh)
        targets.append(np.asarray(offmesh_fock(P, ints, off)) - np.asarray(data.offmesh.h_base[0]))
        kpts.append(np.asarray(data.offmesh.kpts[0]))
    T, k = np.concatenate(targets), np.concatenate(kpts)
    b = data.batch
    cart = np.asarray(b.lattice_shift[0], float) @ np.asarray(b.lattice[0])
    phase = np.exp(1j * k @ cart.T) * np.asarray(b.shift_mask[0])[None, :]
    A = np.concatenate([phase.real, phase.imag])
    rhs = np.concatenate([T.real, T.imag]).reshape(A.shape[0], -1)
    Y = np.linalg.lstsq(A, rhs, rcond=None)[0]
    if np.abs(A @ Y - rhs).max() > 1e-10:
        raise RuntimeError("the ceiling's table does not reproduce F* − H_base at the loss's k-points")
    return Y.reshape(-1, nao, nao)


def mixing_iteration(H, project, n, fock, S, n_electrons, mixing, report=None):
    """Iterate H ← (1 − mixing) H + mixing · project(F[P(H)]) n times (n + 1 densities) at the
    mesh k-points; return the last P (nk, N, N) and its bands. ``report(i, H, target, P,
    bands)`` sees every iteration."""
    import jax.numpy as jnp

    from vardft.api import insulator_density

    for i in range(n + 1):
        P, bands = insulator_density(H, S, n_electrons)
        target = project(np.asarray(fock(jnp.asarray(P))))
        if report is not None:
            report(i, H, target, P, bands)
        H = (1 - mixing) * H + mixing * target
    return P, bands


def filtered_family(data):
    """The map F ↦ H_base + G (F − H_base) G at the mesh k-points of the (one-cell) ``data``:
    the filtered family's H nearest to F (F itself without a filter)."""
    H_base = np.asarray(data.h_base[0])
    G = None if data.G is None else np.asarray(data.G[0])
    return (lambda F: F) if G is None else (lambda F: H_base + G @ (F - H_base) @ G)


def cell_fock(data):
    """P (nk, N, N) ↦ F[P] (nk, N, N) of the (one-cell) ``data``, jitted."""
    import jax

    from solvers import periodic

    cell_ints = jax.tree.map(lambda v: v[0], data.ints)
    return jax.jit(lambda P: periodic.energy_and_fock(P, cell_ints)[2])


def fock_of_density(fock, dm) -> np.ndarray:
    """F[P] (nk, N, N) of a density given as any array (PySCF's ``dm_kpts``), with ``fock``
    from :func:`cell_fock`."""
    import jax.numpy as jnp

    return np.asarray(fock(jnp.asarray(np.asarray(dm), dtype=jnp.complex128)))


def fixed_point(args, cfg, data, mf, ints, S, ref_bands, ref_energy, ref_dm, source) -> int:
    """Iterate H ← (1 − m) H + m (H_base + G (F[P(H)] − H_base) G) at the mesh k-points from
    H_base + G (F* − H_base) G; print the bands against PySCF's per iteration. Without a
    filter the fixed point is the SCF itself (a check of the iteration)."""
    import jax.numpy as jnp

    from _machine import machine_info
    from solvers import periodic
    from vardft.validate import band_mae_mev, insulating_reference, occupied_bands

    fock = cell_fock(data)
    family = filtered_family(data)

    def iterate(H, project, n, report=None):
        P, bands = mixing_iteration(H, project, n, fock, S, ints.n_electrons, args.mixing, report)
        return bands, float(periodic.total_energy(jnp.asarray(P), ints))

    nocc = ints.n_electrons // 2
    F_star = fock_of_density(fock, ref_dm)
    # PySCF occupies the lowest bands over all k-points (a metal where bands overlap across
    # k); the loss fills n/2 bands at every k: the SCF of that filling, unfiltered
    insulating_bands, insulating_energy = iterate(F_star, lambda F: F, args.fixed_point)
    occupied = occupied_bands(ref_dm, S)
    pyscf_bands, pyscf_energy, _, pyscf_converged = insulating_reference(mf, ints)  # the same state, by PySCF
    pyscf_check = {"converged": pyscf_converged, "energy_difference": insulating_energy - pyscf_energy,
                   "band_mae_mev": band_mae_mev(insulating_bands, pyscf_bands, nocc)[0]}
    rows = []

    def report(i, H, target, P, bands):
        mae, largest = band_mae_mev(bands, ref_bands, nocc)
        mae_ins, largest_ins = band_mae_mev(bands, insulating_bands, nocc)
        rows.append({"iteration": i, "residual_max": float(np.abs(H - target).max()), "band_mae_mev": mae,
                     "band_max_mev": largest, "band_mae_vs_insulating_mev": mae_ins,
                     "band_max_vs_insulating_mev": largest_ins,
                     "energy_error": float(periodic.total_energy(jnp.asarray(P), ints)) - ref_energy})
        if not args.json and (i % max(1, args.every // 10) == 0 or i == args.fixed_point):
            r = rows[-1]
            print(f"{i} | max |H - family(F[P(H)])| {r['residual_max']:.2e} | energy error {r['energy_error'] * 1e3:.3f} mEh "
                  f"| band MAE vs PySCF {mae:.2f} meV (largest {largest:.0f}) | vs the insulating SCF {mae_ins:.2f} "
                  f"(largest {largest_ins:.0f})", flush=True)

    if not args.json:
        print(f"PySCF's occupied bands per k-point: {occupied}; the insulating SCF (n/2 = {nocc} at every k) is "
              f"{band_mae_mev(insulating_bands, ref_bands, nocc)[0]:.2f} meV and "
              f"{(insulating_energy - ref_energy) * 1e3:+.3f} mEh from PySCF's; PySCF's own n/2-per-k SCF "
              f"(converged: {pyscf_converged}) differs from it by {pyscf_check['energy_difference']:.1e} Eh and "
              f"{pyscf_check['band_mae_mev']:.3f} meV", flush=True)
    iterate(family(F_star), family, args.fixed_point, report)
    if args.json:
        print(json.dumps({"crystal": args.crystal, "config": cfg.to_dict(), "cell": args.cell, "mode": "fixed-point",
                          "mixing": args.mixing, "reference": source, "reference_occupied_bands": occupied,
                          "insulating_band_mae_mev": band_mae_mev(insulating_bands, ref_bands, nocc)[0],
                          "insulating_energy_error": insulating_energy - ref_energy, "pyscf_insulating": pyscf_check,
                          "rows": rows,
                          "machine": machine_info()}))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("crystal", nargs="?", default="si", choices=["si", "diamond", "hbn"])
    p.add_argument("--basis", default=None, help="AO basis (default: the crystal defaults, gth-szv)")
    p.add_argument("--overlap-filter", type=float, default=None, help="τ of the correction's overlap filter")
    p.add_argument("--sc-target", default=None, choices=["fock", "filtered-fock"])
    p.add_argument("--sc-basis", default=None, choices=["orthonormal", "ao", "window"])
    p.add_argument("--sc-weight", type=float, default=None)
    p.add_argument("--band-weight", type=float, default=None)
    p.add_argument("--energy-weight", type=float, default=1.0)
    p.add_argument("--n-train", type=int, default=16, help="the cell is the first held out after this many")
    p.add_argument("--cell", type=int, default=0, help="which held-out cell (0: the first)")
    p.add_argument("--start", default="zero", choices=["zero", "ceiling", "fixed-point"],
                   help="the table's start: zero (H_base, as training), ceiling (H_base + G (F* - H_base) G) or "
                        "fixed-point (the filtered family's self-consistent H, --start-iterations from the ceiling)")
    p.add_argument("--start-iterations", type=int, default=30, help="mixing iterations of --start fixed-point")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--lr", type=float, default=3e-5, help="peak Adam step of the table's entries, Hartree")
    p.add_argument("--every", type=int, default=100, help="evaluate the bands every this many steps")
    p.add_argument("--fixed-point", type=int, default=0, metavar="N",
                   help="instead of the loss: N iterations of H <- H_base + G (F[P(H)] - H_base) G on the mesh "
                        "from the ceiling (the self-consistent solution within the filtered family; no table)")
    p.add_argument("--mixing", type=float, default=0.3, help="fraction of the new H per fixed-point iteration")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import optax

    from _machine import machine_info
    from basis.pbc_integrals import make_periodic_mean_field, periodic_integrals_from_mean_field
    from solvers import periodic
    from vardft.api import insulator_density
    from vardft.config import make_config
    from vardft.data import load_dataset
    from vardft.model import init_params, predict_hamiltonian
    from vardft.tasks import CrystalTask, model_config_for
    from vardft.validate import band_mae_mev, crystal_reference, insulating_reference, occupied_bands

    overrides = {"basis": args.basis, "overlap_filter": args.overlap_filter, "self_consistency_target": args.sc_target,
                 "self_consistency_basis": args.sc_basis, "self_consistency": args.sc_weight,
                 "band_energy": args.band_weight}
    cfg = make_config("crystal", args.crystal, **overrides)
    cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, energy=args.energy_weight))
    system = load_dataset(args.crystal, seed=0, n_train=args.n_train, n_validation=args.cell + 1).validation[args.cell]
    cfg = CrystalTask(cfg).resolve([system])
    task = CrystalTask(cfg)
    model_cfg = model_config_for(cfg, sorted(set(system.symbols)))
    (cells,) = task.prepare([system], model_cfg)
    data = cells.take([0])
    shape = predict_hamiltonian(init_params(jax.random.PRNGKey(0), model_cfg), data.batch).shape
    partner = partner_shifts(np.asarray(data.batch.lattice_shift[0]), np.asarray(data.batch.shift_mask[0]))

    def symmetric(table):  # ΔH(−R) = ΔH(R)ᵀ, so that every H(k) is Hermitian
        return 0.5 * (table + jnp.swapaxes(table[:, partner], -1, -2))

    mf = make_periodic_mean_field(system, cfg.xc, cfg.basis, cfg.pseudo, cfg.kmesh, cfg.mesh)
    ints = periodic_integrals_from_mean_field(mf)
    ref_bands, ref_energy, ref_dm, source = crystal_reference(mf, ints)
    kpts = np.asarray(ints.kpts)
    if not np.allclose(kpts, np.asarray(data.ints.kpts[0])):
        raise RuntimeError("the loss's k-points are not the reference's")
    S = np.asarray(ints.overlap)  # PySCF's S(k), whose orthogonalizers the loss uses
    nao = int(data.h_base.shape[-1])

    if args.fixed_point:
        return fixed_point(args, cfg, data, mf, ints, S, ref_bands, ref_energy, ref_dm, source)
    table = jnp.zeros(shape)
    if args.start == "ceiling":
        table = table.at[0, :, :nao, :nao].set(ceiling_table(task, data, ref_dm, nao))
    elif args.start == "fixed-point":  # the table whose H is F's filtered image at the fixed point's density
        family, fock = filtered_family(data), cell_fock(data)
        P_fixed, _ = mixing_iteration(family(fock_of_density(fock, ref_dm)), family, args.start_iterations, fock, S,
                                      ints.n_electrons, args.mixing)
        table = table.at[0, :, :nao, :nao].set(ceiling_table(task, data, P_fixed, nao))

    def loss(t):
        value, metrics = task.terms_of_blocks(symmetric(t), data)
        return value.sum(), metrics

    opt = optax.adam(optax.cosine_decay_schedule(args.lr, max(args.steps, 1), alpha=0.01), eps=1e-16)
    state = opt.init(table)

    @jax.jit
    def step(t, state):
        (value, metrics), grad = jax.value_and_grad(loss, has_aux=True)(t)
        update, state = opt.update(grad, state, t)
        return optax.apply_updates(t, update), state, value, metrics

    evaluate_terms = jax.jit(loss)

    nocc = ints.n_electrons // 2
    occupied = occupied_bands(ref_dm, S)
    insulating_bands = ref_bands if occupied == [nocc] * len(occupied) else insulating_reference(mf, ints)[0]

    def row(t, i, seconds):
        value, metrics = evaluate_terms(t)
        Hk, _ = task.hamiltonians_of_blocks(symmetric(t), data)
        P, bands = insulator_density(np.asarray(Hk[0]), S, ints.n_electrons)
        mae, largest = band_mae_mev(bands, ref_bands, nocc)
        return {"step": i, "seconds": seconds, "loss": float(value), "energy_error": float(periodic.total_energy(P, ints)) - ref_energy,
                "sc_rmse_orthonormal": float(metrics["sc_rmse_orthonormal"][0]), "sc_rmse": float(metrics["sc_rmse"][0]),
                "band_mae_mev": mae, "band_max_mev": largest,
                "band_mae_vs_insulating_mev": band_mae_mev(bands, insulating_bands, nocc)[0]}

    def show(r):
        if not args.json:
            print(f"{r['step']} | {r['loss']:.6f} | {r['sc_rmse_orthonormal'] * 1e3:.3f} | {r['energy_error'] * 1e3:.3f} | "
                  f"{r['band_mae_mev']:.1f} | {r['band_max_mev']:.0f} | {r['band_mae_vs_insulating_mev']:.1f}", flush=True)

    if not args.json:
        print(f"{args.crystal} {cfg.basis}, τ = {cfg.overlap_filter}, target {cfg.self_consistency_target}, loss "
              f"{cfg.loss}, start {args.start}; reference {source}, bands occupied per k-point {occupied}", flush=True)
        print("step | loss | sc orth (mEh) | energy error (mEh) | band MAE (meV) | largest | band MAE vs PySCF at "
              "n/2 per k", flush=True)
    rows = [row(table, 0, 0.0)]
    show(rows[-1])
    t0 = time.perf_counter()
    for i in range(1, args.steps + 1):
        table, state, _, _ = step(table, state)
        if i % args.every == 0 or i == args.steps:
            rows.append(row(table, i, time.perf_counter() - t0))
            show(rows[-1])
    if args.json:
        print(json.dumps({"crystal": args.crystal, "config": cfg.to_dict(), "cell": args.cell, "start": args.start,
                          "lr": args.lr, "reference": source, "reference_occupied_bands": occupied, "rows": rows,
                          "machine": machine_info()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
