"""Label-free crystal training as a self-consistent field iteration in the network's parameters.

Gradient training of the label-free loss (``vardft train``) stalls on gth-dzvp Si at an
orthonormal self-consistency residual of ~2 mEh and ~44 meV band error, on its own training
cells too, while a plain linear-mixing SCF started at the same baseline reaches the loss's
good state in 10–25 Fock builds (docs/results.md, session #39). This script trains the
network by that iteration instead:

    outer iteration n (one Fock build per training cell):
        T_n(k) = (1 − α) H_n(k) + α · [H_base(k) + G(k) (F[P(H_n)](k) − H_base(k)) G(k)]
        at the training k-mesh and the half-shifted points q (F(q) from the same potential),
        with H_n the network's current H and G the overlap filter (the filtered family)
    inner steps (no Fock build): Adam on the mean over cells and k of |X†(H_θ − T_n)X|²,
        the orthonormal distance to the fixed targets.

No PySCF SCF and no label: the targets are the network's own mixed Fock matrices, as in
training; what changes is that each Fock build is followed by a fit to it (as an SCF takes a
full step) instead of one gradient step on a moving target. The energy term is not used:
within the filtered family the fixed point is what self-consistency asks for (6.3 meV on
held-out cell 1, the table's fixed point of ``crystal_loss_floor.py --start fixed-point``).
The fit's distance is the orthonormal mean square (:func:`vardft.losses.orthonormal_mse`),
plus, with ``--window-weight`` / ``--band-weight``, the window residuals of the training
loss's band term: the orthonormal mean alone dilutes a rigid shift H + cS by the number of
orbitals, and a model fitted by it alone had its bands ~370 meV low (docs/results.md, session #40).

The run directory it writes is a crystal run (``config.json`` and a checkpoint with the
parameters) that ``vardft validate`` and ``vardft bands`` read; its config records the
settings of the equivalent ``vardft train`` run, the iteration's own settings are in
``mixing.json`` and its per-iteration log in ``mixing.jsonl``. ``--n-val`` validates the
first held-out cells against PySCF at the end (``vardft validate``'s metrics). Not
resumable (``--init RUN`` starts from a run's parameters, with a fresh optimizer): a
prototype of an update rule.

Usage (gth-dzvp Si, 16 training cells; 44 min here for 19 outer iterations of 40 fit steps
and the validation of one held-out cell; peak RSS 14.5 GB):
    .venv/bin/python benchmarks/mixing_training.py si --basis gth-dzvp --overlap-filter 1e-3 \
        --minutes 40 --out runs/si-dzvp-mix
    .venv/bin/python benchmarks/mixing_training.py si --basis gth-dzvp --overlap-filter 1e-3 \
        --init runs/si-dzvp-mix --window-weight 1 --minutes 30 --out runs/si-dzvp-mix-w1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("crystal", nargs="?", default="si", choices=["si", "diamond", "hbn"])
    p.add_argument("--basis", default=None, help="AO basis (default: the crystal defaults, gth-szv)")
    p.add_argument("--overlap-filter", type=float, default=None, help="τ of the correction's overlap filter")
    p.add_argument("--n-train", type=int, default=16, help="training cells")
    p.add_argument("--n-val", type=int, default=1, help="held-out cells validated against PySCF at the end (0: none)")
    p.add_argument("--outer", type=int, default=40, help="outer iterations (Fock builds per cell)")
    p.add_argument("--inner", type=int, default=40, help="Adam steps on the fixed targets per outer iteration")
    p.add_argument("--mixing", type=float, default=0.3, help="α: the fraction of the filtered Fock matrix in a target")
    p.add_argument("--lr", type=float, default=3e-3, help="peak Adam learning rate (cosine over all inner steps)")
    p.add_argument("--fock-batch", type=int, default=4, help="cells per Fock evaluation")
    p.add_argument("--fit-batch", type=int, default=None, help="cells per inner step (default: all)")
    p.add_argument("--window-weight", type=float, default=0.0,
                   help="adds this × the window residuals (pairs and band energies of H's lowest bands, as the "
                        "training loss's band term) to the fit's orthonormal mean square")
    p.add_argument("--band-weight", type=float, default=0.0,
                   help="adds this × the band-energy part of the window residuals alone (first-order band-energy "
                        "errors, rigid shifts included: the orthonormal mean dilutes them by the number of orbitals)")
    p.add_argument("--init", default=None, help="start from this crystal run's parameters (same settings)")
    p.add_argument("--minutes", type=float, default=None, help="stop after this much wall time (the model is kept)")
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import optax

    from _machine import machine_info
    from solvers import periodic
    from vardft import checkpoint as ckpt
    from vardft.api import load
    from vardft.commands.train import make_cache
    from vardft.config import make_config
    from vardft.data import load_dataset
    from vardft.losses import (WINDOW_CONDUCTION_BANDS, filtered, hermitian_density, offmesh_fock, orthonormal_mse,
                               window_residuals)
    from vardft.rundir import claim_run_directory
    from vardft.tasks import CrystalTask, model_config_for
    from vardft.train import DistillationEnd, initial_params, load_params, make_optimizer, run_record
    from vardft.validate import crystal_metrics, summarize_crystals

    start = time.perf_counter()
    dataset = load_dataset(args.crystal, seed=0, n_train=args.n_train, n_validation=max(args.n_val, 1))
    total = args.outer * args.inner
    cfg = make_config("crystal", args.crystal, basis=args.basis, overlap_filter=args.overlap_filter, steps=total,
                      learning_rate=args.lr)
    task = CrystalTask(cfg)
    cfg = task.resolve(dataset.train)
    task = CrystalTask(cfg)
    elements = sorted({s for x in dataset.train for s in x.symbols})
    model_cfg = model_config_for(cfg, elements)
    (cells,) = task.prepare(dataset.train, model_cfg, make_cache(None), progress=not args.json)
    n = len(cells)
    a = args.mixing

    def family(H_base, F, G):
        return H_base + filtered(F - H_base, G)

    @jax.jit
    def mixed_targets(params, data):
        """Targets T (B, nk, N, N), T(q) (B, nq, N, N) and metrics of the network's H on a batch."""
        Hk, Hq = task.training_hamiltonians(params, data)

        def one(h, ints, x, m, hb, g, hq, off):
            P, _ = hermitian_density(h, x, m, ints.n_electrons)
            E, _, F = periodic.energy_and_fock(P, ints)
            fk = family(hb, F, g)
            fq = family(off.h_base, offmesh_fock(P, ints, off), off.G)
            residual = 0.5 * (orthonormal_mse(h - fk, x, m) + orthonormal_mse(hq - fq, off.X, off.mo_mask))
            return (1 - a) * h + a * fk, (1 - a) * hq + a * fq, E, residual

        return jax.vmap(one)(Hk, data.ints, data.X, data.mo_mask, data.h_base, data.G, Hq, data.offmesh)

    n_window = min(int(cells.arrays.h_base.shape[-1]), cells.arrays.ints.n_electrons // 2 + WINDOW_CONDUCTION_BANDS)

    def distance(H, T, X, mask):
        d = jax.vmap(orthonormal_mse)(H - T, X, mask)
        if args.window_weight or args.band_weight:
            w = jax.vmap(lambda *args_k: window_residuals(*args_k, n_window))(H - T, H, X, mask)
            d = d + args.window_weight * (w.pairs + w.bands) + args.band_weight * w.bands
        return d

    def fit_loss(params, data, Tk, Tq):
        Hk, Hq = task.training_hamiltonians(params, data)
        lk = distance(Hk, Tk, data.X, data.mo_mask)
        lq = distance(Hq, Tq, data.offmesh.X, data.offmesh.mo_mask)
        return jnp.mean(0.5 * (lk + lq))

    optimizer = make_optimizer(cfg)  # vardft train's: warm-up, cosine over all inner steps, clipping

    @jax.jit
    def fit_step(params, opt_state, data, Tk, Tq):
        value, grad = jax.value_and_grad(fit_loss)(params, data, Tk, Tq)
        update, opt_state = optimizer.update(grad, opt_state, params)
        return optax.apply_updates(params, update), opt_state, value

    params = initial_params(cfg, model_cfg) if args.init is None else load_params(args.init, model_cfg, cfg)[0]
    opt_state = optimizer.init(params)
    arrays = cells.arrays  # no Bloch AOs: the fit needs none
    deadline = None if args.minutes is None else start + 60 * args.minutes
    rows = []
    with claim_run_directory(args.out, "crystal", resume=False):
        ckpt.save_config(args.out, run_record(cfg, model_cfg, dataclasses.replace(dataset, validation=())))

        def save(step):
            ckpt.save_checkpoint(args.out, {"params": params, "opt_state": opt_state, "step": step, "skipped": 0,
                                            **DistillationEnd.start(cfg).state()})

        step = 0
        for outer in range(args.outer):
            t0 = time.perf_counter()
            Tk, Tq, energies, residuals = [], [], [], []
            for lo in range(0, n, args.fock_batch):
                out = mixed_targets(params, cells.take(np.arange(lo, min(lo + args.fock_batch, n))))
                for store, value in zip((Tk, Tq, energies, residuals), out):
                    store.append(value)
            Tk, Tq = jnp.concatenate(Tk), jnp.concatenate(Tq)
            residual = float(np.sqrt(np.mean(np.concatenate(residuals))))
            energy = float(np.mean(np.concatenate(energies)))
            t1 = time.perf_counter()
            fits = []
            for i in range(args.inner):
                if args.fit_batch:
                    idx = np.random.default_rng(step).choice(n, args.fit_batch, replace=False)
                    data, tk, tq = jax.tree.map(lambda v: v[idx], (arrays, Tk, Tq))
                else:
                    data, tk, tq = arrays, Tk, Tq
                params, opt_state, value = fit_step(params, opt_state, data, tk, tq)
                fits.append(float(value))
                step += 1
            rows.append({"outer": outer, "step": step, "sc_rmse_orthonormal": residual, "energy": energy,
                         "fit_rmse_first": float(np.sqrt(fits[0])), "fit_rmse_last": float(np.sqrt(fits[-1])),
                         "fock_seconds": t1 - t0, "fit_seconds": time.perf_counter() - t1,
                         "time": time.perf_counter() - start})
            with open(os.path.join(args.out, "mixing.jsonl"), "a") as f:
                f.write(json.dumps(rows[-1]) + "\n")
            if not args.json:
                r = rows[-1]
                print(f"outer {outer}: residual |X†(H − family(F))X| {residual * 1e3:.3f} mEh, E {energy:.6f} Eh/cell, "
                      f"fit {r['fit_rmse_first'] * 1e3:.3f} → {r['fit_rmse_last'] * 1e3:.3f} mEh "
                      f"(Fock {r['fock_seconds']:.0f} s, fit {r['fit_seconds']:.0f} s)", flush=True)
            if (outer + 1) % 5 == 0:
                save(step)
            if deadline is not None and time.perf_counter() > deadline:
                break
        save(step)
        with open(os.path.join(args.out, "mixing.json"), "w") as f:
            json.dump(vars(args), f)
    train_seconds = time.perf_counter() - start
    frames = []
    if args.n_val:
        model = load(args.out)
        frames = [crystal_metrics(model, s) for s in dataset.validation[:args.n_val]]
    out = {"crystal": args.crystal, "config": cfg.to_dict(), "mixing": vars(args), "rows": rows,
           "train_seconds": train_seconds, "frames": frames,
           "metrics": summarize_crystals(frames) if frames else None, "machine": machine_info()}
    if args.json:
        print(json.dumps(out))
    else:
        for i, fr in enumerate(frames):
            print(f"held-out cell {i + 1}: band MAE {fr['band_mae_mev']:.1f} meV vs PySCF's state, "
                  f"{fr['insulating_band_mae_mev']:.1f} at n/2 bands per k; energy error at n/2 per k "
                  f"{fr['insulating_energy_error_per_cell'] * 1e3:+.2f} mEh")
    return 0


if __name__ == "__main__":
    sys.exit(main())
