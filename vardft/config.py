"""One training configuration for molecules and crystals, its defaults and named presets.

Every default of a training run lives here, nowhere else (not in the CLI): the
dataclass defaults are those of a molecular run; :data:`KIND_DEFAULTS` says what a
crystal run changes; :data:`PRESETS` name the settings of the built-in datasets,
each overriding as little as possible.

Fields that only make sense for one kind (``grid_level`` for molecules, ``kmesh`` for
crystals, ...) are ``None`` for the other, and :func:`make_config` refuses a value
for them with a one-line :class:`~basis.errors.InputError`.

Example:
    >>> from vardft.config import make_config
    >>> make_config("crystal", steps=10).kmesh is None    # resolved per structure at train time
    True
    >>> make_config("molecule", kmesh=(2, 2, 2))
    Traceback (most recent call last):
    ...
    basis.errors.InputError: kmesh applies to crystals, not to molecules
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from basis.errors import InputError
from basis.integrals import BACKENDS

KINDS = ("molecule", "crystal")

DEFAULT_XC = "pbe"
"""Functional of every command and run unless told otherwise (PySCF name)."""

MOLECULE_BASIS = "def2-svp"
"""AO basis of molecules unless told otherwise (``vardft scf``, molecular runs)."""

CRYSTAL_BASIS = "gth-szv"
"""AO basis of crystals unless told otherwise (``vardft bands``, crystal runs)."""

MAX_SCF_CYCLES = 100
"""Largest number of SCF cycles of ``vardft scf`` (PySCF's default ``max_cycle`` is 50)."""

DEMO = dict(steps=500, minutes=8.0, frames=8, out="runs/demo")
"""``vardft demo``: a short water run (the full water defaults use 3000 steps), its
wall-time cap, the held-out conformations validated and the run directory."""

BASELINES = ("minao", "sap", "none")
"""``minao``: H = H_base + ΔH_θ with H_base the Kohn–Sham matrix of PySCF's minao guess
density (one Fock build per structure, no SCF: prediction pays a DF factor and an XC grid;
crystals: a whole-cell FFT-mesh build); ``sap``: molecules, H_base the superposition-of-
atomic-potentials Hamiltonian (:mod:`basis.sap`: one-electron-type integrals only, so
prediction is a forward pass — two with the frozen distilled network — S and one
diagonalisation); crystals, the Kohn–Sham matrix of superposed atomic densities built atom
by atom in real space (:mod:`basis.pbc_sap`: cost linear in the atoms, supercells get their
primitive cell's blocks, as close to the converged Hamiltonian as minao's); ``none``:
H = ΔH_θ."""

OUTPUT_SCALES = {"minao": 0.01, "sap": 0.1, "none": 0.1}
"""Default ``output_scale`` per baseline (Hartree per unit of network output): the minao
Kohn–Sham matrix is within ~0.02 Eh of the converged one, the SAP Hamiltonian within ~1 Eh.
The SAP Hamiltonian plus its frozen distilled network (:attr:`TrainConfig.frozen_distilled`)
is as close as the minao one and takes the minao scale."""

DISTILLED_SCALE = 0.1
"""Hartree per unit of output of the distilled network of a SAP run
(:attr:`TrainConfig.frozen_distilled`): it learns F[P_minao] − H_SAP, ~0.05 Eh."""

DISTILL_FRACTION = 4 / 3
"""Default distillation steps of a SAP run per label-free step: before its label-free
steps a network of its own learns the minao Kohn–Sham matrix (no SCF, no label), which
starts label-free training where the minao baseline starts it. Measured (docs/results.md,
issue 14): ethanol's 3,000 label-free steps need 4,000 (1,500: held-out H MAE 194.5 against
181.7 μEh); water at 4,000 is better than the minao model (51.5 against 70.3 μEh). QM9 has
its own (:data:`QM9_SAP_RECIPE`). Runs saved before this rule had a third of ``steps``
(:data:`LEGACY_DISTILL_FRACTION`)."""

LEGACY_DISTILL_FRACTION = 1 / 3
"""The distillation steps per label-free step of SAP runs saved with ``distill_steps`` unset,
before :data:`DISTILL_FRACTION` changed (:func:`legacy_config`); runs now save the number."""

DISTILL_TOLERANCE = 5e-4
"""``distill_tolerance`` of a :class:`TrainConfig` built directly, Hartree (molecule runs from
:func:`make_config` run every distillation step, :data:`SAP_MOLECULE_RECIPE`): distillation
ends once the mean absolute error to F[P_minao] of the last :data:`DISTILL_WINDOW` training
batches is this small. Water: a
distilled network at 0.50 mEh (300 steps) and one at 0.17 mEh (1,000 steps) end label-free
training at the same held-out accuracy (H MAE 93.3 vs 94.0 μEh); with this tolerance the
default SAP water run distils for 270 steps and ends at 96.4 μEh in 15.3 instead of 18.9
minutes (docs/results.md)."""

DISTILL_WINDOW = 20
"""Distillation steps whose batch MAEs are averaged for the ``distill_tolerance`` test."""

DEFAULT_SCF_BACKEND = "host"
"""Backend of ``vardft scf`` (:data:`basis.integrals.BACKENDS`); chosen by measurement,
see docs/results.md."""

SELF_CONSISTENCY_BASES = ("ao", "orthonormal", "window")
"""Where |H − F|² is measured: the AO basis, or X†(H − F)X with X an orthogonalizer of S
(the latter bounds orbital/band errors, Weyl's inequality), or (crystals) C†(H − F)C with C
the occupied and :data:`vardft.losses.WINDOW_CONDUCTION_BANDS` lowest empty Bloch states of
H (for bases with nearly dependent directions, such as gth-dzvp in a crystal)."""

CORRECTION_BASES = ("ao", "lowdin")
"""How a crystal's filtered correction enters H (``overlap_filter`` > 0): ``"ao"``, H = H_base
+ G ΔH G (G = g(S)); ``"lowdin"``, H = H_base + G_L ΔH G_L with G_L = S^{1/2} g(S), the
correction in the Löwdin-orthogonalised basis (:func:`solvers.eigen.lowdin_overlap_filter`).
In an orthonormal basis of S(k) the first weighs a direction of overlap eigenvalue s by
~s^{-1/2} g(s) per side, so the directions near τ move the orthonormal residual ~16× more
than the well-conditioned ones (gth-dzvp Si, τ = 1e-3), which stalls gradient training; the
second weighs every direction by g(s), ≈ 1 for s ≫ τ. The residuals are filtered by G in
both. Measured on gth-dzvp Si (preset S, 500 steps; docs/results.md, session #41): held-out
band error 43.7 → 16.0 meV on cell 1 (15.0 on four cells), training residual 1.9 → 0.5 mEh.
``TrainConfig`` keeps ``"ao"``, the basis of every run saved before this setting existed;
new runs get :data:`NEW_CRYSTAL_CORRECTION_BASIS`."""

NEW_CRYSTAL_CORRECTION_BASIS = "lowdin"
"""The correction basis of a new crystal run with an overlap filter and the ``"fock"`` target
(:func:`make_config`, unless given): gth-dzvp Si, τ = 1e-3, 500 steps, held out at n/2 bands per
k: 15.0 meV against 45.9 with ``"ao"`` (docs/results.md, session #41). ``TrainConfig`` keeps
``"ao"``, what every run saved before it was trained with."""

SELF_CONSISTENCY_TARGETS = ("fock", "filtered-fock")
"""What H is compared with when the correction is filtered (crystals, ``overlap_filter`` > 0).
With H = H_base + G ΔH G, the residual is G (X − F) G in both, X = H (``"fock"``) or
X = H_base + ΔH, the correction before its filter (``"filtered-fock"``): then the residual
is H − (H_base + G (F − H_base) G), H against the filtered Fock matrix, and vanishes at the
fixed point H = H_base + G (F[P(H)] − H_base) G, which a bounded ΔH reaches. With
``"fock"`` it vanishes only at ΔH = G⁻¹(F − H_base)G⁻¹, unbounded where S is nearly
singular. Measured on a free table of corrections (gth-dzvp Si, held-out cell 1, τ = 1e-3;
docs/results.md): both end at the same bands (74.6 and 73.5 meV), so ``"fock"`` stays the
default."""

DISTILL_TARGETS = ("minao", "scf")
"""What distillation steps learn (:attr:`TrainConfig.distill_target`)."""

DISTILL_BASES = ("ao", "orthonormal", "both")
"""Where the distillation loss measures H − target (:attr:`TrainConfig.distill_basis`)."""

NETWORK_DTYPES = ("float64", "float32")
"""Precisions of the network's parameters and activations (:attr:`TrainConfig.network_dtype`)."""

TRAIN_GRID_LEVEL = 1
"""PySCF grid level of the molecular training energy. Measured on water PBE/def2-SVP at
the converged density: level 1 has 10,128 points (level 3: 33,704) and changes the Fock
matrix by 1.7 μEh MAE (134 μEh max), far below the accuracy targets, for a 3× cheaper
step. Validation and prediction energies always use level 3."""


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms (energy in Eh, the matrix terms in Eh²)."""

    energy: float = 1.0
    self_consistency: float = 300.0
    supervised: float = 0.0
    band_energy: float = 0.0  # crystals: the band-energy residual (vardft.losses.window_residuals)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything about a training run except the data (molecules or crystals).

    Attributes:
        kind: ``"molecule"`` or ``"crystal"``.
        xc, basis: level of theory (PySCF names).
        preset: model size, ``"S"``, ``"M"`` or ``"L"``.
        cutoff: model cutoff, Å. Crystals: measured on displaced Si (gth-szv), 5 Å
            plateaus at a self-consistency RMSE of 1.4 mEh, 7 Å reaches 0.96 mEh; after
            250 steps 8 Å gives a held-out band MAE of 50.8 meV, 10 Å 43.7 meV.
        model_overrides: ((field, value), ...) of :class:`vardft.model.ModelConfig`.
        network_dtype: one of :data:`NETWORK_DTYPES`, the precision of the network's
            parameters and activations. Its output, H and every energy and loss stay
            float64; ``"float32"`` halves the network's memory and speeds it up on
            hardware with fast single precision (measured by ``benchmarks/step_profile.py
            --network-dtype float64 float32``).
        steps: optimizer steps.
        batch_size: structures per step (``None``: all of them every step).
        learning_rate: peak learning rate (linear warm-up over ``warmup_steps``, cosine
            decay to ``final_lr_fraction`` of the peak at ``steps``).
        weight_decay: AdamW's decoupled weight decay (0: plain Adam, bit for bit).
        adam_eps: Adam's ε. Gradients of μEh-level errors are far below optax's
            default 1e-8, which then stalls training (measured on a water Fock fit).
        grad_clip: global gradient-norm clip.
        loss: weights of the energy and self-consistency terms.
        self_consistency_basis: one of :data:`SELF_CONSISTENCY_BASES`.
        self_consistency_target: one of :data:`SELF_CONSISTENCY_TARGETS` (crystals with
            an overlap filter).
        baseline: one of :data:`BASELINES`.
        output_scale: ΔH = output_scale × network output, Hartree (the network's
            outputs start at O(1)); ``None``: :data:`OUTPUT_SCALES` of the baseline
            (:attr:`delta_scale` is the value used).
        distill_steps: steps before the label-free ones in which the network learns the
            Kohn–Sham matrix of the minao density, F[P_minao] − H_base (mean square over
            AO pairs; its own warm-up and cosine schedule, then the optimizer starts
            afresh); ``None``: ``steps`` × :data:`DISTILL_FRACTION` with the ``"sap"``
            baseline, 0 with the others (a run directory saves the number). No SCF and no
            label: the run stays label-free.
        distill_tolerance: distillation ends before ``distill_steps`` once the mean
            absolute error to F[P_minao] over the last :data:`DISTILL_WINDOW` training
            batches is at most this (Hartree; the step where it ended is kept in the
            checkpoint, so ``--resume`` continues exactly); 0: every distillation step
            runs. Not for ``distill_target="scf"`` (which always runs every step).
        distill_learning_rate: peak learning rate of the distillation steps.
        distill_displaced: displaced copies of each training structure that join it in
            the distillation steps (Gaussian displacements of thermal width,
            :func:`vardft.data.displaced_copies`): the minao Kohn–Sham matrix needs no SCF,
            so the distilled network can see more geometries than the label-free steps
            afford. The label-free steps use the training structures only.
        distill_target: what the distillation steps learn. ``"minao"``: F[P_minao] (the
            ``"sap"`` baseline; no SCF, no label). ``"scf"``: PySCF's converged Kohn–Sham
            matrix of each training molecule (an SCF per molecule, at the training grid
            level) — *supervised*, for comparison only: ``--steps 0 --distill-steps S``
            trains the same model and baseline on labels for S steps, which tells the
            model's limits from the label-free loss's. One network (no frozen part).
        distill_basis: where the distillation loss measures H − target. ``"ao"``: mean
            square over AO pairs. ``"orthonormal"``: over pairs of orthonormal orbitals
            (Xᵀ(H − target)X, X the canonical orthogonalizer), which bounds the error of
            H's orbital energies; an AO-basis error δ along a nearly dependent direction of
            overlap eigenvalue s moves them by ~δ/s (QM9 at def2-SVP: s ≈ 1e-3).
            ``"both"``: the sum of the two mean squares (Eh²), so that neither the AO
            error along well-overlapping directions nor the orthonormal error along
            nearly dependent ones is left free.
        distill_filtered: with ``overlap_filter`` τ, the distillation loss measures the
            filtered difference G (H − target) G (G = g(S), the filter of the correction),
            in whichever ``distill_basis``: the part of the target that the filtered
            correction cannot reach (along S's eigenvalues s ≪ τ, where it would need
            outputs ~(τ/s)² times the target) then adds nothing to the loss. ``False``
            (the dataclass default; :data:`SAP_MOLECULE_RECIPE` sets ``True``): the
            unfiltered difference. The logged ``distill_*`` metrics and the
            ``distill_tolerance`` test stay unfiltered either way.
        frozen_distillation: the distillation trains a network of its own (output
            × :data:`DISTILLED_SCALE`) that is frozen afterwards, and the label-free steps
            train a second, freshly initialised network (output × ``output_scale``) on
            top of it: H = H_SAP + D_frozen + ΔH_θ, which gives the label-free steps the
            minao baseline's starting point and step sizes. ``False`` (runs before it
            existed): one network, distilled and then trained on.
        distilled_lr_fraction: with :attr:`frozen_distilled`, the label-free steps move the
            distilled network too, at this fraction of their learning rate (its output is
            :data:`DISTILLED_SCALE` / ``output_scale`` times the correction's, so 0.1 moves
            H as fast through either network); 0 (the dataclass default; 0.1 in
            :data:`SAP_MOLECULE_RECIPE`): it stays frozen.
        unfiltered_correction: with :attr:`frozen_distilled` and ``overlap_filter``, the
            filter acts on the distilled network only: H = H_SAP + G D G + ΔH_θ, the
            label-free correction entering unfiltered, as a minao run's does (at the same
            output scale). Measured on ethanol: no better than the default
            (docs/results.md, issue 14). ``False`` (default): H = H_SAP + G (D + ΔH_θ) G.
        seed: parameter initialisation and data order.
        checkpoint_every: steps between checkpoints.
        eval_every: steps between label-free evaluations of the held-out structures
            (``None``: none, and they are not prepared; the crystal default, since a
            crystal's Bloch AOs take 0.19–2.8 GB each).
        max_minutes: stop (with a checkpoint) after this much wall time; None: no limit.
        devices: devices the batch is sharded over (data parallel, parameters
            replicated: :mod:`vardft.parallel`); ``None``: every device of every process.
            The losses do not depend on it beyond round-off (padding rows of a batch
            that does not divide evenly carry zero weight).

    Molecules only:
        grid_level: PySCF grid level of the training energy (:data:`TRAIN_GRID_LEVEL`).
        bucket_aos: width in AOs of a size bucket: molecules whose AO counts round up to
            the same multiple share one padded, compiled step.
        backend: where the energy's XC term runs, one of :data:`BACKENDS`. ``"host"``:
            libxc in a host callback on AO values held in memory for every molecule;
            ``"jax"``: AO values and XC computed in JAX on the device, and the data
            streamed from compact per-molecule records (:mod:`vardft.stream`), so memory
            does not grow with the number of molecules. ``None`` (default): chosen at
            train time by :func:`vardft.tasks.choose_backend` (measured: the host path is
            as fast or faster on a CPU while the data fits in memory).
        workers: processes that build the records of the ``"jax"`` backend
            (``None``: :func:`default_workers`; 0: in the training process).

    Crystals only:
        pseudo: GTH pseudopotential (``None``: the one matching ``xc``).
        kmesh: Γ-centred training k-mesh (``None``: 2 per periodic direction, 1 along vacuum).
        mesh: FFT mesh (``None``: PySCF's default for the first structure; every
            structure uses the same mesh so that one compiled step serves all).
        offmesh_self_consistency: also require H(q) = F(q)[P] at the k-mesh shifted by
            half a step (F(q) from the potential of the training density, as PySCF's
            ``get_bands``): the training mesh alone fixes ΔH(R) only up to aliasing.
        overlap_filter: τ > 0 confines the network's correction to the well-conditioned
            directions of the overlap: ΔH → G ΔH G with G = g(S), g(s) = s²/(s² + τ²)
            (:func:`solvers.eigen.overlap_filter`), 0 (default) leaves it as it is; in
            training, distillation and prediction alike. Crystals: at each k, the
            self-consistency residuals filtered too; for nearly linearly dependent bases
            (gth-dzvp in a crystal: S(k) eigenvalues down to 3e-6). Molecules: only the
            orthonormal residual is filtered (``self_consistency_basis="orthonormal"``:
            unfiltered, its part along S's small eigenvalues grows like 1/s and the
            filtered correction cannot reduce it); the AO residual is not, as in the runs
            that chose the SAP recipe's τ. For bases whose S has eigenvalues ~1e-3
            (def2-SVP on QM9), where an AO-basis error δ moves orbital energies by ~δ/s.
        correction_basis: crystals with an overlap filter: ``"ao"`` (the dataclass default,
            for saved runs), the correction G ΔH G; ``"lowdin"`` (new runs:
            :data:`NEW_CRYSTAL_CORRECTION_BASIS`), S^{1/2} G ΔH G S^{1/2}, ΔH in the
            Löwdin-orthogonalised basis (:data:`CORRECTION_BASES`), in training and
            prediction alike.
        cells_per_pass: crystals whose loss is evaluated at once. ``None`` (default): the
            whole batch, vectorised. ``k``: k cells at a time, each pass rematerialised
            under autodiff, so the loss holds the intermediates of k cells instead of the
            batch's (for cells with large FFT meshes, such as hBN's vacuum) at the cost of
            one more forward evaluation per step. The losses do not depend on it beyond
            round-off.
    """

    kind: str = "molecule"
    xc: str = DEFAULT_XC
    basis: str = MOLECULE_BASIS
    preset: str = "L"
    cutoff: float = 8.0
    model_overrides: tuple = ()
    network_dtype: str = "float64"
    steps: int = 3000
    batch_size: int | None = 8
    learning_rate: float = 1e-2
    warmup_steps: int = 50
    final_lr_fraction: float = 0.01
    weight_decay: float = 0.0
    adam_eps: float = 1e-16
    grad_clip: float = 10.0
    loss: LossWeights = LossWeights()
    self_consistency_basis: str = "ao"
    self_consistency_target: str = "fock"
    baseline: str = "minao"
    output_scale: float | None = None
    distill_steps: int | None = None
    distill_learning_rate: float = 1e-2
    distill_tolerance: float = DISTILL_TOLERANCE
    distill_displaced: int = 0
    distill_target: str = "minao"
    distill_basis: str = "ao"
    distill_filtered: bool = False
    frozen_distillation: bool = True
    distilled_lr_fraction: float = 0.0
    unfiltered_correction: bool = False
    seed: int = 0
    checkpoint_every: int = 100
    eval_every: int | None = 100
    max_minutes: float | None = None
    devices: int | None = None
    # molecules
    grid_level: int | None = TRAIN_GRID_LEVEL
    bucket_aos: int | None = 16
    backend: str | None = None
    workers: int | None = None
    # crystals
    pseudo: str | None = None
    kmesh: tuple[int, int, int] | None = None
    mesh: tuple[int, int, int] | None = None
    offmesh_self_consistency: bool | None = None
    overlap_filter: float = 0.0
    correction_basis: str = "ao"
    cells_per_pass: int | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def delta_scale(self) -> float:
        """ΔH per unit of network output, Hartree (``output_scale`` or its baseline's default)."""
        if self.output_scale is not None:
            return self.output_scale
        as_close_as_minao = self.frozen_distilled or (self.kind == "crystal" and self.baseline == "sap")
        return OUTPUT_SCALES["minao" if as_close_as_minao else self.baseline]

    @property
    def n_distill(self) -> int:
        """Distillation steps (``distill_steps`` or its baseline's default)."""
        if self.distill_steps is not None:
            return self.distill_steps
        return round(self.steps * DISTILL_FRACTION) if self.baseline == "sap" and self.distill_target == "minao" \
            and self.kind == "molecule" else 0

    @property
    def frozen_distilled(self) -> bool:
        """Two networks (:attr:`frozen_distillation` with distillation steps): parameters
        ``{"distilled": …, "correction": …}``."""
        return self.frozen_distillation and self.n_distill > 0 and self.distill_target == "minao"

    @property
    def total_steps(self) -> int:
        """Distillation then label-free steps: the steps of the run."""
        return self.n_distill + self.steps

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Rebuild a saved config (JSON lists back to tuples; unknown keys ignored)."""
        d = dict(d)
        d["loss"] = LossWeights(**d.get("loss", {}))
        d["model_overrides"] = tuple(tuple(kv) for kv in d.get("model_overrides", ()))
        for key in ("kmesh", "mesh"):
            if d.get(key) is not None:
                d[key] = tuple(int(v) for v in d[key])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


MOLECULE_ONLY = ("grid_level", "bucket_aos", "backend", "workers", "distill_target", "distill_tolerance",
                 "distill_basis", "distill_filtered", "distilled_lr_fraction", "unfiltered_correction")
CRYSTAL_ONLY = ("pseudo", "kmesh", "mesh", "offmesh_self_consistency", "band_energy",
                "cells_per_pass", "correction_basis")

LOSS_WEIGHT_OVERRIDES = ("self_consistency", "band_energy")
"""Overrides that set a weight of ``TrainConfig.loss`` (:class:`LossWeights`)."""

KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "molecule": dict(baseline="sap"),
    "crystal": dict(
        kind="crystal",
        basis=CRYSTAL_BASIS,
        baseline="sap",
        preset="S",
        cutoff=10.0,
        steps=500,
        batch_size=4,
        warmup_steps=10,
        loss=LossWeights(self_consistency=3000.0),
        self_consistency_basis="orthonormal",
        checkpoint_every=50,
        eval_every=None,
        grid_level=None,
        bucket_aos=None,
        backend=None,
        offmesh_self_consistency=True,
    ),
}
"""What each kind changes in the dataclass defaults (crystal values from the Si tuning:
16 structures, 4 per step, λ = 3000, orthonormal residual, half-shifted k-points).
Molecules: the ``"sap"`` baseline, so that prediction is a forward pass (issue 14), with
:data:`SAP_MOLECULE_RECIPE`; the dataclass keeps ``"minao"`` for runs saved without a
baseline."""

QM9_PRESET: dict[str, Any] = {"xc": "b3lyp", "steps": 150, "warmup_steps": 10, "eval_every": 50,
                               "checkpoint_every": 25}
"""``vardft train qm9``: QH9's level of theory (B3LYP/def2-SVP), and a schedule that ends
within the issue's 2 hours on a 2-core CPU with the minao baseline (measured: ~31 s per step
of 8 molecules of QM9 size, plus ~30 min of record building for 1,100 molecules); the
default sap baseline adds :data:`QM9_SAP_RECIPE`'s 300 distillation steps (~3.8 s each) and
a second network to each step (at 100 molecules: 68 against 29.7 min). Longer runs:
``--steps``."""

PRESETS: dict[str, dict[str, Any]] = {
    "water": {},
    "ethanol": {},
    "g2-small": {},
    "qm9": QM9_PRESET,
    "qm9-ood": QM9_PRESET,
    "si": {},
    "diamond": {},
    "hbn": {},
}
"""Named presets of the built-in datasets: overrides on top of their kind's defaults.
The defaults were tuned on water and Si; a preset that needs other settings overrides
only those (``qm9``: :data:`QM9_PRESET`)."""

CRYSTAL_KPOINTS_PER_DIRECTION = 2
"""Default training k-mesh: 2 per periodic direction, 1 along vacuum."""


def default_config(kind: str) -> TrainConfig:
    """The defaults of a kind of run (:func:`make_config` without a dataset or overrides)."""
    return make_config(kind)


SAP_MOLECULE_RECIPE: dict[str, Any] = {"distill_basis": "both", "distilled_lr_fraction": 0.1,
                                        "overlap_filter": 3e-2, "distill_filtered": True,
                                        "distill_tolerance": 0.0}
"""What :func:`make_config` sets for a molecule run on the ``"sap"`` baseline (distilling
F[P_minao]) unless told otherwise. Measured against the equal-budget minao models
(docs/results.md, issue 14): the orthonormal term of the distillation loss keeps the distilled
network's spectrum along S's small eigenvalues (QM9: its energy error 0.65–9.7 → 0.34–0.41 Eh);
the filter damps the correction where S's eigenvalues fall below τ (water H MAE 97.6 → 86.0
μEh); training the distilled network on at a tenth of the learning rate removes the floor of
its fit (water 83.2 → 42.0 μEh, the minao model 70.3); the filtered distillation loss leaves
out the part of F[P_minao] the filtered network cannot reach (ethanol: each level of the fit
in two thirds of the steps; QM9 unchanged), and every distillation step runs
(:data:`DISTILL_FRACTION`)."""

QM9_SAP_RECIPE: dict[str, Any] = {"distill_fraction": 2.0, "network_dtype": "float32"}
"""QM9's additions to :data:`SAP_MOLECULE_RECIPE`. Its label-free steps are few (150) and cost
~4 distillation steps each, and 200 distillation steps leave the distilled network at 2.49
mEh MAE against 1.59 at 300, the measured setting (docs/results.md, issue 14). A float64
network of preset L, trained with its distilled one, was killed at 24.0 GB of peak memory on
a 24-GB machine; the float32 one peaks at 21.4 GB and gives the same model."""

SAP_DATASET_RECIPES: dict[str, dict[str, Any]] = {"ethanol": {"distill_displaced": 10},
                                                  "qm9": QM9_SAP_RECIPE, "qm9-ood": QM9_SAP_RECIPE}
"""What a built-in dataset adds to :data:`SAP_MOLECULE_RECIPE` (``distill_fraction``: its
distillation steps per label-free step instead of :data:`DISTILL_FRACTION`). Ethanol's 48
training conformations are too few for the distilled network: ten displaced copies of each
join the distillation (held-out H MAE 201 → 199 → 181.7 μEh with three copies, ten, ten and
4,000 steps). Water (128 conformations) is better without (42.0 against 47.7 μEh); QM9's
molecules are all different geometries already."""


def make_config(kind: str, dataset: str | None = None, **overrides) -> TrainConfig:
    """Defaults of ``kind``, then the preset of ``dataset`` (:data:`PRESETS`; other names
    have none), then ``overrides`` (:func:`with_overrides`); for a molecule run on the
    ``"sap"`` baseline, :data:`SAP_MOLECULE_RECIPE` and the dataset's
    :data:`SAP_DATASET_RECIPES` where ``overrides`` leave their settings unset."""
    if kind not in KINDS:
        raise InputError(f"unknown kind of run {kind!r}; choose from {', '.join(KINDS)}")
    config = dataclasses.replace(TrainConfig(), **KIND_DEFAULTS[kind])
    if dataset is not None:
        config = dataclasses.replace(config, **PRESETS.get(dataset, {}))
    config = with_overrides(config, check=False, **overrides)
    if config.kind == "molecule" and config.baseline == "sap" and config.distill_target == "minao":
        given = {k for k, v in overrides.items() if v is not None}
        recipe = {**SAP_MOLECULE_RECIPE, **SAP_DATASET_RECIPES.get(dataset or "", {})}
        fraction = recipe.pop("distill_fraction", DISTILL_FRACTION)
        config = dataclasses.replace(config, **{k: v for k, v in recipe.items() if k not in given})
        if "distill_steps" not in given:
            config = dataclasses.replace(config, distill_steps=round(fraction * config.steps))
        if "distill_filtered" not in given and not (config.n_distill and config.overlap_filter):
            config = dataclasses.replace(config, distill_filtered=False)  # nothing to filter
        if "distill_displaced" not in given and not config.n_distill:
            config = dataclasses.replace(config, distill_displaced=0)  # no distillation to join
    if (config.kind == "crystal" and config.overlap_filter and overrides.get("correction_basis") is None
            and config.self_consistency_target == "fock"):
        config = dataclasses.replace(config, correction_basis=NEW_CRYSTAL_CORRECTION_BASIS)
    return check_config(config)


def with_overrides(config: TrainConfig, check: bool = True, **overrides) -> TrainConfig:
    """``config`` with ``overrides`` applied and checked (:func:`check_config`; ``check=False``:
    for a caller that changes more before it checks).

    Overrides whose value is ``None`` are ignored (a flag not given); ``self_consistency``
    and ``band_energy`` set weights in ``loss``. A field that does not apply to the config's kind, or an
    unknown field, is an :class:`InputError`.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    known = {f.name for f in dataclasses.fields(TrainConfig)} | set(LOSS_WEIGHT_OVERRIDES)
    unknown = sorted(set(given) - known)
    if unknown:
        raise InputError(f"unknown training setting(s): {', '.join(unknown)}")
    kind = config.kind
    other = CRYSTAL_ONLY if kind == "molecule" else MOLECULE_ONLY
    for name in other:
        if name in given:
            raise InputError(f"{name} applies to {'crystals' if kind == 'molecule' else 'molecules'}, not to {kind}s")
    weights = {name: float(given.pop(name)) for name in LOSS_WEIGHT_OVERRIDES if name in given}
    if weights:
        given["loss"] = dataclasses.replace(given.get("loss", config.loss), **weights)
    config = dataclasses.replace(config, **given)
    return check_config(config) if check else config


def check_config(config: TrainConfig) -> TrainConfig:
    """Raise :class:`InputError` for settings that cannot work; return ``config``."""
    if config.kind not in KINDS:
        raise InputError(f"unknown kind of run {config.kind!r}; choose from {', '.join(KINDS)}")
    if config.baseline not in BASELINES:
        raise InputError(f"unknown baseline {config.baseline!r}; choose from {', '.join(BASELINES)}")
    if config.self_consistency_basis not in SELF_CONSISTENCY_BASES:
        raise InputError(
            f"unknown self-consistency basis {config.self_consistency_basis!r}; "
            f"choose from {', '.join(SELF_CONSISTENCY_BASES)}"
        )
    if config.self_consistency_target not in SELF_CONSISTENCY_TARGETS:
        raise InputError(
            f"unknown self-consistency target {config.self_consistency_target!r}; "
            f"choose from {', '.join(SELF_CONSISTENCY_TARGETS)}"
        )
    if config.self_consistency_target == "filtered-fock" and not (config.kind == "crystal" and config.overlap_filter):
        raise InputError("the filtered-fock self-consistency target is for crystals with an overlap filter: "
                         "give --overlap-filter")
    for name, weight in dataclasses.asdict(config.loss).items():
        if not (weight >= 0 and weight < float("inf")):
            raise InputError(f"the {name.replace('_', '-')} weight must be a finite number >= 0, got {weight}")
    if config.loss.band_energy and config.kind != "crystal":
        raise InputError("the band-energy weight is for crystals (the bands of their window)")
    if not (config.overlap_filter >= 0 and config.overlap_filter < float("inf")):
        raise InputError(f"the overlap filter must be a finite number >= 0, got {config.overlap_filter}")
    if config.correction_basis not in CORRECTION_BASES:
        raise InputError(f"unknown correction basis {config.correction_basis!r}; choose from {', '.join(CORRECTION_BASES)}")
    if config.correction_basis == "lowdin" and not config.overlap_filter:
        raise InputError("the lowdin correction basis is that of the overlap filter's correction: give --overlap-filter")
    if config.correction_basis == "lowdin" and config.self_consistency_target == "filtered-fock":
        raise InputError("the filtered-fock target assumes the correction G ΔH G: use it with --correction-basis ao")
    if config.cells_per_pass is not None and config.cells_per_pass < 1:
        raise InputError(f"cells per pass must be >= 1, got {config.cells_per_pass}")
    if config.self_consistency_basis == "window" and config.kind != "crystal":
        raise InputError("the window self-consistency basis is for crystals (their band window)")
    if config.steps < 0:
        raise InputError(f"steps must be >= 0, got {config.steps}")
    if not (config.distill_learning_rate > 0 and config.distill_learning_rate < float("inf")):
        raise InputError(
            f"distillation learning rate must be a positive finite number, got {config.distill_learning_rate}")
    if not (config.distill_tolerance >= 0 and config.distill_tolerance < float("inf")):
        raise InputError(f"distillation tolerance must be a finite number >= 0 (Hartree), got {config.distill_tolerance}")
    if not (config.distilled_lr_fraction >= 0 and config.distilled_lr_fraction <= 1):
        raise InputError(f"the distilled network's learning-rate fraction must be in [0, 1], got {config.distilled_lr_fraction}")
    if config.network_dtype not in NETWORK_DTYPES:
        raise InputError(f"unknown network precision {config.network_dtype!r}; choose from {', '.join(NETWORK_DTYPES)}")
    if config.distill_basis not in DISTILL_BASES:
        raise InputError(f"unknown distillation basis {config.distill_basis!r}; choose from {', '.join(DISTILL_BASES)}")
    if config.distill_filtered and not config.n_distill:
        raise InputError("a filtered distillation loss is for the distillation steps: they need --baseline sap")
    if config.distill_filtered and not config.overlap_filter:
        raise InputError("a filtered distillation loss needs the correction's overlap filter: give --overlap-filter")
    if config.unfiltered_correction and not (config.frozen_distilled and config.overlap_filter):
        raise InputError("an unfiltered correction network needs a distilled network and an overlap filter: "
                         "--baseline sap with distillation steps and --overlap-filter")
    if config.distill_displaced < 0:
        raise InputError(f"displaced copies for distillation must be >= 0, got {config.distill_displaced}")
    if config.distill_displaced and not config.n_distill:
        raise InputError("displaced copies are for the distillation steps: they need --baseline sap and distillation steps")
    if config.distill_steps is not None and config.distill_steps < 0:
        raise InputError(f"distillation steps must be >= 0, got {config.distill_steps}")
    if config.distill_target not in DISTILL_TARGETS:
        raise InputError(f"unknown distillation target {config.distill_target!r}; choose from {', '.join(DISTILL_TARGETS)}")
    if config.distill_target == "scf" and config.kind != "molecule":
        raise InputError("supervised SCF labels (distill_target 'scf') are for molecules")
    if config.distill_target == "scf" and not config.n_distill:
        raise InputError("supervised SCF labels are learned in the distillation steps: give --distill-steps")
    if config.distill_displaced and config.distill_target == "scf":
        raise InputError("displaced copies would need an SCF each; they are for the minao distillation target")
    if config.n_distill and config.kind == "crystal":
        raise InputError("distillation is for molecules: the crystal baseline sap is already the Kohn–Sham matrix of superposed atoms")
    if config.n_distill and config.baseline != "sap" and config.distill_target == "minao":
        raise InputError(f"distillation learns F[P_minao] − H_base: it needs --baseline sap, not {config.baseline}")
    if config.output_scale is not None and not config.output_scale >= 0:  # 0: the baseline alone
        raise InputError(f"output scale must be >= 0, got {config.output_scale}")
    if config.batch_size is not None and config.batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {config.batch_size}")
    if config.checkpoint_every < 1:
        raise InputError(f"checkpoint interval must be >= 1 step, got {config.checkpoint_every}")
    if config.eval_every is not None and config.eval_every < 1:
        raise InputError(f"evaluation interval must be >= 1 step, got {config.eval_every}")
    if not (config.learning_rate > 0 and config.learning_rate < float("inf")):
        raise InputError(f"learning rate must be a positive finite number, got {config.learning_rate}")
    if config.max_minutes is not None and not config.max_minutes > 0:
        raise InputError(f"minutes must be > 0, got {config.max_minutes}")
    if config.devices is not None and config.devices < 1:
        raise InputError(f"devices must be >= 1, got {config.devices}")
    if config.kind == "molecule":
        if config.bucket_aos is not None and config.bucket_aos < 1:
            raise InputError(f"bucket width must be a positive number of AOs, got {config.bucket_aos}")
        if config.grid_level is not None and not 0 <= config.grid_level <= 9:
            raise InputError(f"grid level must be 0..9 (PySCF's levels), got {config.grid_level}")
        if config.backend is not None and config.backend not in BACKENDS:
            raise InputError(f"unknown backend {config.backend!r}; choose from {', '.join(BACKENDS)}")
        if config.workers is not None and config.workers < 0:
            raise InputError(f"workers must be >= 0, got {config.workers}")
    return config


HOST_MEMORY_FRACTION = 0.25
"""The automatic backend keeps molecules in memory (``"host"``) on a CPU while their AO
values and DF factors are estimated to take at most this fraction of the machine's memory;
crystal training holds Bloch AO records from the cache in memory up to this fraction of the
machine's (or the accelerator's) memory."""

STEP_MEMORY_FACTOR = 2.5
"""Peak working memory of a molecular training step over the host backend's integrals of
its batch (:func:`vardft.tasks.in_memory_bytes`; the forward pass's AO values are kept for
the backward pass), for the default budget of held records only. Measured on a QM9 batch
of 8 (B3LYP/def2-SVP, preset L, grid level 1; 7.3 GB estimated for the 8 largest training
molecules): 15.0 GB resident (sampled every 30 s) without held records, and killed for
memory at 23.2 GB holding at most 6.3 GB, so the step itself took at least 16.9 GB (2.3×).
It misses the network's own buffers (8.8 GB for preset L on that batch), so
``vardft.train`` replaces this estimate by the compiled step's measured buffers
(:func:`vardft.tasks.hold_budget`) before any record is held."""

GRID_POINTS_PER_ATOM = {0: 900, 1: 3900, 2: 8300, 3: 12000, 4: 22200, 5: 33300}
"""PySCF grid points per atom by grid level (measured on benzene at def2-SVP, rounded up;
water has fewer), for memory estimates only."""


def default_workers() -> int:
    """Record workers of the ``"jax"`` backend: one per core. They build every missing
    record before the first step, while the training process waits (QM9 at B3LYP/def2-SVP:
    ~3 s per molecule and worker); during training they only rebuild records that a
    ``--cache-gb`` bound left out."""
    return max(1, os.cpu_count() or 1)


def legacy_config(saved: dict) -> TrainConfig:
    """The :class:`TrainConfig` of a run's ``config.json``, including runs written before
    molecules and crystals shared one config (crystal runs then had ``kind: crystal`` at
    the top and their own field names; they load with the loss they were trained with)."""
    train = dict(saved["train"])
    if saved.get("kind") == "crystal" and "kind" not in train:
        train.setdefault("baseline", "none")
        train.setdefault("output_scale", 0.1)
        train.setdefault("self_consistency_basis", "ao")
        train.setdefault("offmesh_self_consistency", False)
        train.setdefault("batch_size", None)
        crystal = dict(KIND_DEFAULTS["crystal"])
        crystal.pop("loss")
        train = {**crystal, **train}
        train["loss"] = {
            "energy": train.pop("energy_weight", 1.0),
            "self_consistency": train.pop("self_consistency_weight", 300.0),
            "supervised": 0.0,
        }
        train["weight_decay"] = 0.0
    train.setdefault("kind", "molecule")
    if train.get("baseline") == "sap" and "frozen_distillation" not in train:  # one distilled network
        train["frozen_distillation"] = False
    train.setdefault("distill_tolerance", 0.0)  # runs before it existed ran every distillation step
    if (train.get("baseline") == "sap" and train.get("distill_steps") is None and train.get("kind") == "molecule"
            and train.get("distill_target", "minao") == "minao"):
        train["distill_steps"] = round(train.get("steps", TrainConfig.steps) * LEGACY_DISTILL_FRACTION)
    return TrainConfig.from_dict(train)
