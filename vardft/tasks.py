"""The two kinds of training task, molecules and crystals, behind one small interface.

A task turns structures into the arrays a training step consumes and says how a
batch of them is scored; the training loop (:mod:`vardft.train`), validation
(:mod:`vardft.validate`) and prediction (:mod:`vardft.api`) are written once against
this interface:

- ``resolve(systems)``: the config with the defaults that depend on the data fixed
  (k-mesh, FFT mesh, pseudopotential), as saved with a run;
- ``prepare(systems, model_config, cache, progress)``: a list of :class:`PreparedSet`
  (size buckets; one compiled step per bucket);
- ``batch_terms(params, data)``: per-structure loss (B,) and metrics (B,) each of a
  batch (``PreparedSet.take``);
- ``hamiltonian(params, model_config, system, ...)``: the predicted H of one structure.

A molecule is a crystal with the single lattice shift R = 0 at the Γ point: both use
the same model, graph padding (:func:`vardft.hamiltonian.prepare_batch`) and loss
structure. What differs lives here and nowhere else: molecules have the AO-basis
Kohn–Sham matrix of PySCF's molecular grid and density fitting, crystals H(k) on a
k-mesh with the FFT-mesh energy of :mod:`solvers.periodic`.

The predicted Hamiltonian is ``H = H_base + output_scale · ΔH_θ``. ``H_base`` is the
Kohn–Sham matrix of PySCF's minao guess density (``baseline="minao"``), the
superposition-of-atomic-potentials Hamiltonian (``"sap"``, :mod:`basis.sap`: no DF
factor and no XC grid, so prediction is a forward pass, S and one diagonalisation), or zero.

Molecules are handled in a frame fixed by the molecule (:mod:`basis.frame`): PySCF's
XC grid is fixed in the laboratory axes, so a baseline built on it would change with
the orientation (uracil PBE/def2-SVP: 131 μEh max at grid level 1). Training and
prediction place every molecule in its own frame (principal axes of the charge-weighted
second moments; the remaining ambiguities are O_h elements, under which the grid is
exactly covariant), build everything there, and prediction rotates the result back,
so ``predict`` is E(3)-equivariant to round-off. Molecules with degenerate moments
(symmetric and spherical tops) average the baseline over an invariantly chosen set of
frames (:func:`basis.frame.frame_averaged`: one Fock build per frame), linear molecules
and atoms project it onto its exact symmetry.
For crystals, the potential v_guess(r) of the guess density on the FFT mesh is formed
once per structure and ``H_base(k) = h(k) + ⟨φ_k|v_guess|φ_k⟩`` at any k (training
mesh, half-shifted mesh, band path: the machinery of ``mf.get_bands``).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import os
import sys
from typing import Any, Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from pyscf.df.addons import make_auxbasis
from tqdm.auto import tqdm

from basis.crystal import absolute_kpts, default_kmesh, default_pseudo, time_reversal_invariant, to_cell
from basis.errors import InputError
from basis.frame import MolecularFrame, frame_covariant, from_frame_matrix, molecular_frame, to_frame
from basis.functional import parse_functional
from basis.integrals import Integrals, build_integrals, make_mean_field
from basis.pbc_integrals import (
    PeriodicIntegrals,
    band_integral_chunks,
    bloch_ao_nbytes,
    build_band_integrals,
    build_periodic_integrals,
    check_periodic_functional,
    make_periodic_mean_field,
)
from basis.pbc_sap import LatticeBlocks, lattice_blocks
from basis.sap import sap_hamiltonian
from basis.shells import ao_shells
from basis.system import System, atomic_number
from solvers import periodic
from solvers.eigen import (canonical_orthogonalizer, lowdin_filter_from_overlap_filter, lowdin_overlap_filter,
                           overlap_filter, overlap_filter_from_orthogonalizer,
                           pad_orthogonalizer)
from solvers.energy import energy_and_fock
from vardft import stream
from vardft.config import (CRYSTAL_KPOINTS_PER_DIRECTION, DISTILLED_SCALE, GRID_POINTS_PER_ATOM, HOST_MEMORY_FRACTION,
                           STEP_MEMORY_FACTOR, TrainConfig)
from vardft.crystal_stream import (AO_FIELD, OFFMESH_AO_FIELD, BlochRecord, BlochSettings, BlochStore, CrystalSet,
                                   gather_rows)
from vardft.data import IntegralCache, pad_integrals, size_buckets
from vardft.hamiltonian import Batch, bloch_sum_batch, bucket_size, prepare_batch, real_space_blocks
from vardft.losses import OffMesh, crystal_loss, embed_complex, filtered, molecule_loss
from vardft.model import ModelConfig, predict_blocks, predict_hamiltonian
from vardft.parallel import device_count


@dataclasses.dataclass
class PreparedSet:
    """Structures of one size bucket and their stacked arrays (a pytree for the step)."""

    systems: tuple[System, ...]
    arrays: Any

    def __len__(self) -> int:
        return len(self.systems)

    def take(self, idx):
        """The stacked arrays of structures ``idx`` (a batch, rows in the order of ``idx``)."""
        return gather_rows(self.arrays, jnp.asarray(idx))


def model_config_for(config: TrainConfig, elements: Sequence[str]) -> ModelConfig:
    """The model of a run: size preset, precision, overrides, basis, cutoff; elements ordered by Z."""
    return ModelConfig.preset(
        config.preset,
        **{"dtype": config.network_dtype, **dict(config.model_overrides)},
        basis=config.basis,
        elements=tuple(sorted(set(elements), key=atomic_number)),
        cutoff=config.cutoff,
    )


def _stack_leaves(xs):
    """Stacked on axis 0: numpy leaves on the host and copied once (no XLA computation in
    the batch loader's thread, which runs beside a step that may hold a cross-device
    collective), device arrays of held records on the device."""
    if all(isinstance(x, np.ndarray) for x in xs):
        return jnp.asarray(np.stack(xs))
    return jnp.stack(xs)


def _stack(trees):
    return jax.tree.map(lambda *xs: _stack_leaves(xs), *trees)


# ============================================================== molecules
@flax.struct.dataclass
class MoleculeArrays:
    """Arrays of the ``n`` molecules of one size bucket, stacked on axis 0.

    Molecules may differ in composition: every axis is zero-padded to the bucket's
    largest (AOs ``N``, auxiliary functions, grid points), which changes no energy or
    Fock matrix (:func:`vardft.data.pad_integrals`).

    Attributes:
        batch: :class:`vardft.hamiltonian.Batch` of all molecules (model input).
        ints: stacked :class:`Integrals`, padded to ``N`` AOs, ``naux`` and ``ngrid``.
            Its static ``n_electrons`` is the molecules' common count, or
            :data:`MIXED_ELECTRONS` when they differ (use the ``n_electrons`` field).
        X: (n, N, N) padded orthogonalizers.
        mo_mask: (n, N) real columns of X.
        h_base: (n, N, N) baseline Hamiltonians, Hartree.
        n_electrons: (n,) int32 electrons per molecule (traced in the step).
        h_target: (n, N, N) minao Kohn–Sham matrices that distillation learns (the
            ``"sap"`` baseline), Hartree; ``None`` otherwise.
        max_electrons: the bucket's largest electron count (static; bounds the occupied
            orbitals the exchange term is built from).
    """

    batch: Any
    ints: Integrals
    X: jax.Array
    mo_mask: jax.Array
    h_base: jax.Array
    n_electrons: jax.Array
    h_target: Any = None
    max_electrons: int = flax.struct.field(pytree_node=False, default=0)


PREDICT_BATCH = 8
"""Molecules per call of the network at prediction (padded with empty molecules)."""


def _graph_shape(system: System, model_config: ModelConfig) -> tuple[int, int, int]:
    """The padded (atoms, edges, aos) slots of one molecule (:func:`vardft.hamiltonian.bucket_size`;
    monotonic, so the slots of a group are the elementwise largest of its molecules')."""
    b = prepare_batch([system], model_config)
    return tuple(bucket_size(int(v)) for v in (b.atom_mask.sum(), b.edge_mask.sum(), np.asarray(b.nao)[0]))


def _bucket_graph(systems: Sequence[System], model_config: ModelConfig) -> tuple[int, int, int]:
    """The padded (atoms, edges, aos) slots of a group of molecules: the elementwise largest
    of their :func:`_graph_shape`."""
    return tuple(int(v) for v in np.max([_graph_shape(s, model_config) for s in systems], axis=0))


REAL_SPACE_EDGE_CHUNK = 8192
"""Edges per chunk of the network's per-edge work in :meth:`CrystalTask.real_space`
(:attr:`vardft.model.HamiltonianModel.edge_chunk`): the chunks run one after the other, so
the network holds one chunk's intermediates whatever the size of the cell (Si, crystal
defaults, 432 atoms: 0.33 GB of XLA temporaries instead of 4.3 GB)."""


PREDICT_SHAPES = 4
"""Most padded shapes (compilations of the network) one prediction call uses: molecules
of many sizes are grouped by size into this many groups, each padded to its largest."""


def _shape_groups(shapes: Sequence[tuple], most: int = PREDICT_SHAPES) -> list[tuple[tuple, list[int]]]:
    """``[(padded shape, molecule indices)]``: one group per distinct shape, or, with more
    than ``most`` distinct shapes, ``most`` groups of consecutive sizes (by AOs, atoms,
    edges) padded to their elementwise largest."""
    distinct = list(dict.fromkeys(shapes))
    if len(distinct) <= most:
        return [(sh, [k for k, other in enumerate(shapes) if other == sh]) for sh in distinct]
    order = sorted(range(len(shapes)), key=lambda k: (shapes[k][2], shapes[k][0], shapes[k][1]))
    groups = []
    for chunk in np.array_split(np.asarray(order), most):
        members = sorted(int(k) for k in chunk)
        groups.append((tuple(int(v) for v in np.max([shapes[k] for k in members], axis=0)), members))
    return groups


MIXED_ELECTRONS = -1
"""Static ``Integrals.n_electrons`` of a stacked bucket whose molecules differ in
electron count: code that reads the static count instead of the ``n_electrons``
field then fails loudly (``solve_hamiltonian`` rejects it)."""

_fock_of = jax.jit(lambda P, ints: energy_and_fock(P, ints)[2])

_STACKED_FIELDS = ("overlap", "hcore", "cderi", "ao", "weights", "e_nuc", "dm_guess")


def _merged_auxbasis(names: Sequence[str]) -> str:
    """One auxiliary-basis description for a bucket (PySCF names it per element for a molecule)."""
    unique = list(dict.fromkeys(names))
    try:
        merged: dict = {}
        for name in unique:
            merged.update(ast.literal_eval(name))
        return str(dict(sorted(merged.items())))
    except (ValueError, SyntaxError, TypeError, AttributeError):  # not a dict literal: a name
        return " | ".join(unique)


def in_memory_bytes(systems: Sequence[System], config: TrainConfig) -> int:
    """Estimated bytes of the host backend's in-memory integrals of ``systems``: AO values
    (and gradients for GGAs) on the training grid plus the unpacked DF factor (taken as
    3 auxiliary functions per AO, def2 fitting bases have 2.5–3.5)."""
    nderiv = 4 if parse_functional(config.xc).family == "gga" else 1
    per_atom = GRID_POINTS_PER_ATOM.get(config.grid_level, GRID_POINTS_PER_ATOM[5])
    nao_of: dict = {}
    total = 0
    for s in systems:
        key = (s.symbols, s.charge, s.spin)
        if key not in nao_of:
            nao_of[key] = s.to_mole(config.basis).nao_nr()
        nao = nao_of[key]
        total += 8 * (nderiv * per_atom * len(s.symbols) * nao + 3 * nao**3)
    return total


def step_memory_bytes(systems: Sequence[System], config: TrainConfig) -> int:
    """Estimated peak working memory of one molecular training step: :data:`STEP_MEMORY_FACTOR`
    × :func:`in_memory_bytes` of the ``config.batch_size`` molecules of ``systems`` with the
    most atoms (the largest batch the run can draw; every molecule without a batch size)."""
    batch = len(systems) if config.batch_size is None else int(config.batch_size)
    largest = sorted(systems, key=lambda s: len(s.symbols))[-batch:]
    return int(STEP_MEMORY_FACTOR * in_memory_bytes(largest, config))


def resident_budget(requested: int | None, devices: int, step_bytes: int = 0) -> int:
    """Bytes of padded molecule records held on the device (:class:`vardft.stream.ResidentRecords`):
    ``requested``, or by default :func:`memory_budget` (a quarter of the machine's memory on a
    CPU, of the accelerator's on a GPU) cut so that the held records, a training step of
    ``step_bytes`` (:func:`step_memory_bytes`) and a quarter of the memory to spare fit together;
    none by default with a batch split over several devices (the held copies would sit on
    one of them). Holding what fits made a QM9 step 1.36× faster on the 2-core CPU (23.45 →
    17.20 s: the batch's read, padding and copies no longer compete with the step) and 20×
    on an H200; holding a quarter of 25 GB beside a QM9 step of ≥ 17 GB got the default
    ``vardft train qm9`` killed for memory at step 27."""
    if requested is not None:
        return int(requested)
    if devices > 1:
        return 0
    capacity = memory_capacity()
    spare = int((1.0 - HOST_MEMORY_FRACTION) * capacity) - int(step_bytes)
    return max(0, min(memory_budget(None), spare))


HOLD_MARGIN_FRACTION = 0.15
"""Share of the memory capacity that :func:`hold_budget` leaves free beside the compiled
step and the held records (the process's Python objects, the held-out evaluation, the
record workers and the operating system). A SAP QM9 run holding 3.0 GB beside a step
whose compiled buffers take 13.0 GB peaked at 21.7 GB of 25 GB."""


def available_memory_bytes() -> int:
    """Bytes free for this process's arrays now: on a CPU the kernel's ``MemAvailable``
    (what other processes leave; Linux), else the capacity less this process's peak
    resident size; on a GPU the accelerator's limit less what is in use."""
    if jax.default_backend() != "cpu":
        stats = jax.local_devices()[0].memory_stats() or {}
        return int(stats.get("bytes_limit", 0)) - int(stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return machine_memory_bytes() - peak


def hold_budget(step_bytes: int, available: int) -> int:
    """Bytes of records a one-device run without ``--hold-gb`` holds
    (:class:`vardft.stream.ResidentRecords`) once its step is compiled: what is ``available``
    (:func:`available_memory_bytes`) after a step of ``step_bytes`` (its compiled buffers and
    a second batch, loaded while it runs: :func:`vardft.train.compiled_step_bytes`) and
    :data:`HOLD_MARGIN_FRACTION` of the capacity, at most :func:`memory_budget`. It replaces
    :func:`resident_budget`'s estimate, which missed the network: a preset-L step of 8 QM9
    molecules takes 8.8 GB of buffers for the network alone (1.7 GB of integrals)."""
    spare = int(available) - int(step_bytes) - int(HOLD_MARGIN_FRACTION * memory_capacity())
    return max(0, min(memory_budget(None), spare))


def machine_memory_bytes() -> int:
    """Physical memory of this machine, bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_capacity() -> int:
    """Bytes of memory training arrays live in: the machine's on a CPU, the first
    accelerator's on a GPU (0 when it does not say)."""
    if jax.default_backend() == "cpu":
        return machine_memory_bytes()
    stats = jax.local_devices()[0].memory_stats() or {}
    return int(stats.get("bytes_limit", 0))


def memory_budget(requested: int | None) -> int:
    """Bytes of training records held in memory: ``requested``, or by default
    :data:`HOST_MEMORY_FRACTION` of :func:`memory_capacity`."""
    if requested is not None:
        return int(requested)
    return int(HOST_MEMORY_FRACTION * memory_capacity())


def choose_backend(systems: Sequence[System], config: TrainConfig) -> str:
    """``"jax"`` on a GPU or TPU (a host callback cannot run there) or over several
    devices (:meth:`MoleculeTask.resolve`), or on a CPU when the
    host backend's integrals would take more than :data:`HOST_MEMORY_FRACTION` of the
    memory; ``"host"`` otherwise (as fast or faster on a CPU: docs/results.md)."""
    if jax.default_backend() != "cpu" or device_count(config.devices) > 1:
        return "jax"
    return "host" if in_memory_bytes(systems, config) <= HOST_MEMORY_FRACTION * machine_memory_bytes() else "jax"


def _static_electrons(counts) -> int:
    """The static electron count of a bucket: the common one, or :data:`MIXED_ELECTRONS`."""
    counts = np.asarray(counts)
    return int(counts[0]) if np.all(counts == counts[0]) else MIXED_ELECTRONS


def _stack_compact(batch, padded, static: int, largest: int, auxbasis: str) -> MoleculeArrays:
    """:class:`MoleculeArrays` of one streamed batch from :func:`vardft.stream.pad_record`
    outputs; ``static``: the bucket's :func:`_static_electrons`, ``largest`` its largest
    electron count, ``auxbasis`` its merged auxiliary basis (fixed per bucket, so that
    every batch of it has one pytree structure: one compilation)."""
    ints = [p[0] for p in padded]
    electrons = np.array([i.n_electrons for i in ints], np.int32)
    same = [i.replace(n_electrons=static, auxbasis=auxbasis) for i in ints]
    return MoleculeArrays(
        batch=batch,
        ints=_stack(same),
        X=_stack_leaves([p[2] for p in padded]),  # numpy, or device arrays of resident records
        mo_mask=_stack_leaves([p[3] for p in padded]),
        h_base=_stack_leaves([p[1] for p in padded]),
        n_electrons=jnp.asarray(electrons),
        h_target=None if padded[0][4] is None else _stack_leaves([p[4] for p in padded]),
        max_electrons=largest,
    )


@dataclasses.dataclass(frozen=True)
class MoleculeTask:
    """Molecules: H (nao, nao) in PySCF's AO order; energy on PySCF's molecular grid."""

    config: TrainConfig
    kind = "molecule"

    def resolve(self, systems: Sequence[System]) -> TrainConfig:
        """The config as a run directory saves it: the backend chosen (:func:`choose_backend`)
        when it is ``None``, and the default number of distillation steps written out (so a
        later change of :data:`~vardft.config.DISTILL_FRACTION` cannot change a saved run).

        Raises:
            InputError: the host backend asked for with a batch split over several devices
                (its libxc callbacks stall the devices' collective: measured, 4 CPU devices).
        """
        config = self.config
        if config.distill_steps is None and config.n_distill:
            config = dataclasses.replace(config, distill_steps=config.n_distill)
        devices = device_count(config.devices)
        if config.backend is None:
            return dataclasses.replace(config, backend=choose_backend(systems, config))
        if config.backend == "host" and devices > 1:
            raise InputError(f"the host backend runs on one device, not {devices}: use --backend jax or --devices 1")
        return config

    @staticmethod
    def to_frame(system: System) -> tuple[System, MolecularFrame]:
        """``system`` placed in its own frame (positions ``Q (x − c)``), and the frame."""
        frame = molecular_frame(system)
        return to_frame(system, frame), frame

    def frame_minao_fock(self, system: System, ints: Integrals) -> np.ndarray:
        """F[P_minao] (nao, nao) of a molecule already in its frame (:meth:`to_frame`);
        ``ints`` its integrals at the training grid level (possibly padded in naux / ngrid).

        Without degenerate moments this is the Fock matrix on ``ints`` itself (the frame
        of a molecule in its frame is the identity up to O_h); otherwise the average over
        the molecule's candidate frames."""
        c = self.config

        def fock(s: System) -> np.ndarray:
            other = build_integrals(s, c.xc, c.basis, c.grid_level)
            return np.asarray(_fock_of(other.dm_guess, other))

        return frame_covariant(lambda: _fock_of(ints.dm_guess, ints), fock, system, c.basis)

    def frame_baseline(self, system: System, ints: Integrals | None) -> np.ndarray:
        """H_base (nao, nao) of a molecule already in its frame: :meth:`frame_minao_fock`
        (``ints`` needed), the SAP Hamiltonian (one-electron integrals only; exactly
        covariant) or zero."""
        c = self.config
        if c.baseline == "sap":
            return sap_hamiltonian(system.to_mole(c.basis))[0]
        if c.baseline == "none":
            n = system.to_mole(c.basis).nao_nr() if ints is None else ints.nao
            return np.zeros((n, n))
        return self.frame_minao_fock(system, ints)

    def distill_target(self, system: System, ints: Integrals) -> np.ndarray | None:
        """What distillation learns for a molecule in its frame: PySCF's converged
        Kohn–Sham matrix at the training grid level (``distill_target="scf"``, supervised),
        F[P_minao] with the ``"sap"`` baseline, ``None`` otherwise."""
        c = self.config
        if c.distill_target == "scf":
            return stream.converged_fock(make_mean_field(system, c.xc, c.basis, c.grid_level), system.formula)
        return self.frame_minao_fock(system, ints) if c.baseline == "sap" else None

    def record_settings(self) -> stream.RecordSettings:
        c = self.config
        return stream.RecordSettings(c.xc, c.basis, c.grid_level, c.baseline, c.distill_target)

    def _integrals(self, systems, cache: IntegralCache, progress: bool):
        """``(shapes, load)``: ``shapes[k] = (naux, ngrid, n_electrons)`` and ``load(k)`` the
        integrals of ``systems[k]``; with a disk cache they are reloaded one at a time."""
        c = self.config
        args = (c.xc, c.basis, c.grid_level)
        kept, shapes = [], []
        for s in tqdm(systems, desc="integrals", unit="mol", disable=not progress, leave=False):
            ints = cache.get(s, *args)
            shapes.append((ints.cderi.shape[0], ints.weights.shape[0], ints.n_electrons))
            if cache.directory is None:
                kept.append(ints)
        if cache.directory is None:
            return shapes, kept.__getitem__
        return shapes, lambda k: cache.get(systems[k], *args)

    def prepare_bucket(self, systems, model_config, cache, pad_to=None, progress=False) -> PreparedSet:
        """Integrals, orthogonalizers, baselines and model inputs of one size bucket of
        molecules as given (:meth:`prepare` places them in their frames first)."""
        batch = prepare_batch(list(systems), model_config, pad_to=pad_to)
        n_slots = batch.ao_mask.shape[1]
        shapes, load = self._integrals(systems, cache, progress)
        naux = max(sh[0] for sh in shapes)
        ngrid = max(sh[1] for sh in shapes)
        electrons = np.array([sh[2] for sh in shapes], np.int32)
        static_electrons = _static_electrons(electrons)
        n = len(systems)
        stacked: dict[str, np.ndarray] = {}
        xs, masks, bases, targets, auxbases = [], [], [], [], []
        template = None
        for k in range(n):
            ints = load(k)
            X, mask = pad_orthogonalizer(canonical_orthogonalizer(np.asarray(ints.overlap)), n_slots, n_slots)
            # baseline from the AO-unpadded integrals (conformations of one composition: exactly as unbatched)
            own_aos = pad_integrals(ints, ints.nao, naux, ngrid).replace(n_electrons=static_electrons)
            base = self.frame_baseline(systems[k], own_aos)
            pad = [(0, n_slots - base.shape[0])] * 2
            bases.append(np.pad(base, pad))
            target = self.distill_target(systems[k], own_aos)
            if target is not None:
                targets.append(np.pad(target, pad))
            padded = pad_integrals(own_aos, n_slots)
            if template is None:
                template = padded
            elif (padded.basis, padded.functional, padded.grid_level) != (
                template.basis, template.functional, template.grid_level
            ):
                raise InputError(f"{systems[k].formula}: integrals built with other settings than {systems[0].formula}")
            auxbases.append(padded.auxbasis)
            for name in _STACKED_FIELDS:
                a = np.asarray(getattr(padded, name))
                if name not in stacked:
                    stacked[name] = np.zeros((n,) + a.shape, a.dtype)
                stacked[name][k] = a
            xs.append(X)
            masks.append(mask)
            del ints, own_aos, padded
        fields = {}
        for name in _STACKED_FIELDS:  # one field at a time: the numpy and JAX copies never coexist in full
            fields[name] = jnp.asarray(stacked.pop(name))
        arrays = MoleculeArrays(
            batch=batch,
            ints=template.replace(**fields, auxbasis=_merged_auxbasis(auxbases)),
            X=jnp.asarray(np.stack(xs)),
            mo_mask=jnp.asarray(np.stack(masks)),
            h_base=jnp.asarray(np.stack(bases)),
            n_electrons=jnp.asarray(electrons),
            h_target=jnp.asarray(np.stack(targets)) if targets else None,
            max_electrons=int(electrons.max()),
        )
        return PreparedSet(systems=tuple(systems), arrays=arrays)

    def prepare(self, systems, model_config, cache=None, progress=False, min_bucket=1, pool=None,
                resident: stream.ResidentRecords | None = None, sizing=None) -> list:
        """Size buckets of ``systems`` (width ``config.bucket_aos``), every molecule in its
        own frame (:meth:`to_frame`): :class:`PreparedSet` in memory for the host backend,
        :class:`vardft.stream.StreamedSet` (records on disk, built by ``pool``) for JAX.
        ``resident``: the device budget to share with sets prepared before (a run's training,
        held-out and distillation sets hold one budget); a new one by default, cut for the
        largest step over ``sizing`` (default ``systems``; a run passes its held-out
        molecules too, which in ``qm9-ood`` are the larger ones)."""
        cache = cache or IntegralCache(None)
        sizing = systems if sizing is None else sizing
        systems = [self.to_frame(s)[0] for s in systems]
        buckets = size_buckets(systems, self.config.basis, self.config.bucket_aos, min_size=min_bucket)
        if self.config.backend == "jax":
            store = stream.RecordStore(cache.directory, self.record_settings(), cache.record_bound())
            if resident is None:
                budget = resident_budget(cache.memory_bytes, device_count(self.config.devices),
                                         step_memory_bytes(sizing, self.config))
                resident = stream.ResidentRecords(budget)
            return [self.stream_bucket(b, model_config, store, pool, progress, resident) for b in buckets]
        return [self.prepare_bucket(b, model_config, cache, progress=progress) for b in buckets]

    def prepare_targets(self, systems, model_config, cache=None, progress=False, min_bucket=1) -> list:
        """What distillation steps read of ``systems``, and nothing else: one
        :class:`vardft.stream.TargetSet` per size bucket (each molecule's baseline, target and
        orthogonalizer, unpadded, float64), its integrals read from ``cache`` or built (and
        not written there), used and dropped one molecule at a time. For distillation-only
        geometries (``distill_displaced``) on the host backend, whose :class:`PreparedSet`
        would hold the grid and DF arrays of every geometry (ethanol with 3 copies: > 24 GB
        in memory; in the disk cache 79 MB per copy)."""
        cache = cache or IntegralCache(None)
        c = self.config
        systems = [self.to_frame(s)[0] for s in systems]
        sets = []
        for bucket in size_buckets(systems, c.basis, c.bucket_aos, min_size=min_bucket):
            base, target, X = [], [], []
            for s in tqdm(bucket, desc="distillation targets", unit="mol", disable=not progress, leave=False):
                ints = cache.get(s, c.xc, c.basis, c.grid_level, save=False)
                X.append(canonical_orthogonalizer(np.asarray(ints.overlap)))
                base.append(np.asarray(self.frame_baseline(s, ints), np.float64))
                target.append(np.asarray(self.distill_target(s, ints), np.float64))
                del ints
            graph = _bucket_graph(bucket, model_config)
            sets.append(stream.TargetSet(tuple(bucket), graph, graph[2], tuple(base), tuple(target), tuple(X),
                                         model_config))
        return sets

    def stream_bucket(self, systems, model_config, store: stream.RecordStore, pool=None, progress=False,
                      resident: stream.ResidentRecords | None = None):
        """A :class:`vardft.stream.StreamedSet` of one size bucket: records missing from
        ``store`` are built (by ``pool``'s workers when given) and kept while it has room
        (also those rebuilt for a batch: a store once full, or whose bound is raised,
        fills again);
        the bucket's padded shapes are fixed from every molecule's sizes; ``resident``
        holds padded records on the device (shared by the buckets)."""
        systems = tuple(systems)
        settings = self.record_settings()
        moles = [s.to_mole(self.config.basis) for s in systems]
        shells = [ao_shells(m) for m in moles]
        static = _static_electrons([m.nelectron for m in moles])
        largest = max(m.nelectron for m in moles)
        auxbasis = _merged_auxbasis([str(make_auxbasis(m)) for m in moles])
        graph = _bucket_graph(systems, model_config)
        sizes: list = [None] * len(systems)
        missing = []
        for k, s in enumerate(systems):
            found = store.sizes(s)
            if found is None:
                missing.append(k)
            else:
                sizes[k] = stream.molecule_sizes(*found, shells[k])
        built = stream.bounded_map(pool, stream.build_record, [systems[k] for k in missing], settings)
        for k, record in zip(tqdm(missing, desc="records", unit="mol", disable=not progress, leave=False), built):
            naux_ngrid = stream.record_sizes(record)
            sizes[k] = stream.molecule_sizes(*naux_ngrid, shells[k])
            if not store.keep(systems[k], record):
                store.remember_sizes(systems[k], naux_ngrid)
            del record

        def rebuild(ks):
            records = list(stream.bounded_map(pool, stream.build_record, [systems[k] for k in ks], settings))
            for k, record in zip(ks, records):  # kept if the store has room again: read, not rebuilt, next time
                store.keep(systems[k], record)
            return records

        return stream.StreamedSet(
            systems=systems, shells=tuple(shells), shapes=stream.bucket_shapes(graph, sizes), store=store,
            rebuild=rebuild, model_config=model_config, resident=resident,
            make_arrays=functools.partial(_stack_compact, static=static, largest=largest, auxbasis=auxbasis),
        )

    def network_hamiltonian(self, params, batch) -> jax.Array:
        """What the network adds to the baseline, (B, N, N) Hartree, before any overlap
        filter: the sum of :meth:`network_parts`."""
        filtered_part, plain = self.network_parts(params, batch)
        return filtered_part if plain is None else filtered_part + plain

    def network_parts(self, params, batch) -> tuple[jax.Array, jax.Array | None]:
        """The network's part of H, (B, N, N) Hartree, as (the part the overlap filter acts
        on, the part added unfiltered or ``None``): output × ``delta_scale``; with a frozen
        distilled network (``config.frozen_distilled``) its output ×
        :data:`~vardft.config.DISTILLED_SCALE` (no gradient, unless
        ``config.distilled_lr_fraction`` trains it too) plus the correction network's,
        the latter unfiltered with ``config.unfiltered_correction``."""
        c = self.config
        if not c.frozen_distilled:
            return c.delta_scale * predict_hamiltonian(params, batch), None
        distilled = params["distilled"] if c.distilled_lr_fraction else jax.lax.stop_gradient(params["distilled"])
        frozen = DISTILLED_SCALE * predict_hamiltonian(distilled, batch)
        correction = c.delta_scale * predict_hamiltonian(params["correction"], batch)
        if c.unfiltered_correction:
            return frozen, correction
        return frozen + correction, None

    def model_correction(self, params, batch, X, xp=jnp):
        """H − baseline, (B, N, N) Hartree: :meth:`network_parts` with the filter applied
        (:meth:`filter_correction`). Training's form of what :meth:`hamiltonians` adds."""
        return self.assembled_correction(*self.network_parts(params, batch), X, xp)

    def assembled_correction(self, filtered_part, plain, X, xp=jnp):
        """H − baseline, (..., N, N) Hartree, from :meth:`network_parts`' two parts: the
        first through :meth:`filter_correction` (X may be ``None`` without a filter), plus
        the unfiltered one when there is one. Training and prediction both assemble H here."""
        out = self.filter_correction(filtered_part, X, xp)
        return out if plain is None else out + plain

    def distilled_hamiltonian(self, params, batch) -> jax.Array:
        """What the distillation steps train, (B, N, N) Hartree: the distilled network
        alone (``config.frozen_distilled``), else the one network."""
        if self.config.frozen_distilled:
            return DISTILLED_SCALE * predict_hamiltonian(params["distilled"], batch)
        return self.network_hamiltonian(params, batch)

    def filter_correction(self, delta, X, xp=jnp):
        """The network's part of H as the model adds it: G ΔH G with G = g(S)
        (``config.overlap_filter`` τ; :func:`solvers.eigen.overlap_filter_from_orthogonalizer`
        of the molecules' canonical orthogonalizers X, (..., N, N)); ΔH itself without a filter.
        The same function in training, distillation and prediction."""
        tau = self.config.overlap_filter
        if not tau:
            return delta
        G = overlap_filter_from_orthogonalizer(X, tau, xp)
        return G @ delta @ G

    def batch_terms(self, params, data: MoleculeArrays):
        """Loss (B,) and metrics {energy, sc_rmse, sc_mae} (B,) of the B molecules of ``data``."""
        H = data.h_base + self.model_correction(params, data.batch, data.X)
        return self.hamiltonian_terms(H, data)

    def hamiltonian_terms(self, H, data: MoleculeArrays):
        """:meth:`batch_terms` of given Hamiltonians H (B, N, N), Hartree: eigensolver,
        energy, Fock and self-consistency — the step's part that is not the network."""
        c = self.config
        filter_residual = c.overlap_filter and c.self_consistency_basis == "orthonormal"
        G = overlap_filter_from_orthogonalizer(data.X, c.overlap_filter) if filter_residual else None

        def one(H, ints, X, mo_mask, ao_mask, n_electrons, G):
            return molecule_loss(
                H, ints, X, mo_mask, ao_mask, c.loss, n_electrons=n_electrons,
                self_consistency_basis=c.self_consistency_basis, max_occupied=data.max_electrons // 2 or None, G=G,
            )

        terms = jax.vmap(one)(H, data.ints, data.X, data.mo_mask, data.batch.ao_mask, data.n_electrons, G)
        metrics = {"energy": terms.energy, "sc_rmse": terms.self_consistency_rmse, "sc_mae": terms.self_consistency_mae}
        return terms.loss, metrics

    def distill_terms(self, params, data: MoleculeArrays):
        """Distillation loss (B,), Eh²: mean square of H − target over AO pairs, over pairs
        of orthonormal orbitals (Xᵀ(H − target)X), or their sum (``config.distill_basis``); metrics
        (B,), Hartree: distill_mae and distill_rmse over AO pairs, distill_orth_rmse over
        orthonormal ones, unfiltered (the loss filtered with ``config.distill_filtered``).
        ``data``: :class:`MoleculeArrays` or :class:`vardft.stream.TargetArrays`."""
        c = self.config
        H = data.h_base + self.filter_correction(self.distilled_hamiltonian(params, data.batch), data.X)
        mask = data.batch.ao_mask[:, :, None] * data.batch.ao_mask[:, None, :]
        pairs = jnp.maximum(jnp.sum(mask, axis=(1, 2)), 1.0)
        diff = (H - data.h_target) * mask
        mo = data.mo_mask[:, :, None] * data.mo_mask[:, None, :]

        def mean_squares(diff):
            orth = jnp.einsum("bmi,bmn,bnj->bij", data.X, diff, data.X) * mo
            return (jnp.sum(diff**2, axis=(1, 2)) / pairs,
                    jnp.sum(orth**2, axis=(1, 2)) / jnp.maximum(jnp.sum(mo, axis=(1, 2)), 1.0))

        mse, orth_mse = mean_squares(diff)
        loss_mse, loss_orth_mse = mse, orth_mse
        if c.distill_filtered:
            loss_mse, loss_orth_mse = mean_squares(filtered(diff, overlap_filter_from_orthogonalizer(data.X, c.overlap_filter)))
        loss = {"ao": loss_mse, "orthonormal": loss_orth_mse, "both": loss_mse + loss_orth_mse}[c.distill_basis]
        return loss, {"distill_mae": jnp.sum(jnp.abs(diff), axis=(1, 2)) / pairs, "distill_rmse": jnp.sqrt(mse),
                      "distill_orth_rmse": jnp.sqrt(orth_mse)}

    def hamiltonian(self, params, model_config: ModelConfig, system: System, ints: Integrals | None = None):
        """H (nao, nao) of a molecule already in its frame, Hartree, PySCF AO order.

        ``ints``: the molecule's integrals at the run's training grid level, reused for
        the minao baseline (built here when needed and not given; the ``"sap"`` and
        ``"none"`` baselines need none). :meth:`lab_hamiltonian` takes any molecule.
        """
        return self.hamiltonians(params, model_config, [system], [ints])[0]

    def hamiltonians(self, params, model_config: ModelConfig, systems: Sequence[System], ints=None,
                     bases=None, orthogonalizers=None, batch_size: int = PREDICT_BATCH) -> list[np.ndarray]:
        """:meth:`hamiltonian` of many molecules in their frames: the network runs on
        batches of ``batch_size`` molecules of one padded shape, at most
        :data:`PREDICT_SHAPES` shapes (compilations) per call (:func:`_shape_groups`);
        ``ints`` a list (or None);
        ``bases`` the molecules' :meth:`frame_baseline` and ``orthogonalizers`` their
        canonical orthogonalizers X of S (nao, m), when the caller has them (built here
        for the overlap filter otherwise)."""
        ints = list(ints) if ints is not None else [None] * len(systems)
        out: list = [None] * len(systems)
        for shape, members in _shape_groups([_graph_shape(s, model_config) for s in systems]):
            rows = min(batch_size, len(members))  # one batch shape per graph shape
            for first in range(0, len(members), rows):
                chunk = members[first: first + rows]
                batch = prepare_batch([systems[k] for k in chunk], model_config, batch_size=rows, pad_to=shape)
                filtered_part, plain = (None if part is None else np.asarray(part)
                                        for part in self.network_parts(params, batch))
                for row, k in enumerate(chunk):
                    n = int(np.asarray(batch.nao)[row])
                    out[k] = (filtered_part[row, :n, :n], None if plain is None else plain[row, :n, :n])
        c = self.config
        for k, s in enumerate(systems):
            X = None
            if c.overlap_filter:
                X = (orthogonalizers[k] if orthogonalizers is not None
                     else canonical_orthogonalizer(s.to_mole(c.basis).intor_symmetric("int1e_ovlp")))
            out[k] = self.assembled_correction(*out[k], X, np)
            if bases is not None:
                out[k] = out[k] + bases[k]
                continue
            own = ints[k]  # built here and dropped at once: a molecule's grid and DF factor at a time
            if c.baseline == "minao" and own is None:
                own = build_integrals(s, c.xc, c.basis, c.grid_level)
            out[k] = out[k] + self.frame_baseline(s, own)
            del own
        return out

    def lab_hamiltonian(self, params, model_config: ModelConfig, system: System) -> np.ndarray:
        """H (nao, nao) of ``system`` as given: built in its frame and rotated back."""
        inside, frame = self.to_frame(system)
        H = self.hamiltonian(params, model_config, inside)
        return from_frame_matrix(H, frame, self.config.basis, system.symbols)


# =============================================================== crystals
@flax.struct.dataclass
class CrystalArrays:
    """Crystals with their periodic graph and integrals, stacked on a leading axis B.

    Attributes:
        batch: periodic :class:`~vardft.hamiltonian.Batch` (B crystals).
        ints: :class:`PeriodicIntegrals` stacked over B (same mesh, k-mesh, basis).
        X: (B, nk, 2N, 2N) real-embedded orthogonalizers of S(k).
        mo_mask: (B, nk, 2N) real columns of X.
        h_base: (B, nk, N, N) complex baseline H_base(k) at the k-points, Hartree.
        offmesh: stacked :class:`~vardft.losses.OffMesh` or ``None``.
        G: (B, nk, N, N) overlap filters of S(k) (``TrainConfig.overlap_filter``) or ``None``.
    """

    batch: Batch
    ints: PeriodicIntegrals
    X: Any
    mo_mask: Any
    h_base: Any
    offmesh: Any = None
    G: Any = None


def real_orthogonalizers(S: np.ndarray, nao_pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Real embeddings of canonical orthogonalizers X(k) of S(k) (nk, nao, nao), padded.

    Returns ``X`` (nk, 2N, 2N) and ``mo_mask`` (nk, 2N) in the layout of
    :func:`solvers.eigen.pad_orthogonalizer`.
    """
    Xs, masks = [], []
    for Sk in np.asarray(S):
        X = canonical_orthogonalizer(Sk)
        Xr = np.asarray(embed_complex(jnp.asarray(X)))
        Xp, m = pad_orthogonalizer(Xr, 2 * nao_pad, 2 * nao_pad)
        Xs.append(Xp)
        masks.append(m)
    return np.stack(Xs), np.stack(masks)


_effective_potential = jax.jit(periodic.effective_potential)
_potential_matrices = jax.jit(periodic.potential_matrices)

BAND_CHUNK_BYTES = 256 * 2**20
"""Bloch AO memory per chunk of k-points when the baseline is taken to new k-points."""


def offmesh_kpts(cell, kmesh: Sequence[int]) -> np.ndarray:
    """The Γ-centred ``kmesh`` shifted by half a step along each sampled direction.

    Fractions (n + ½)/N_d for N_d > 1 (0 along an unsampled direction, e.g. vacuum),
    as Cartesian k-points (nq, 3), 1/Bohr, of a PySCF ``cell``: none of them lies on
    the training mesh. When every point has a distinct partner −q (no N_d odd and > 1)
    only one of each pair is returned: H(−q) and F(−q) are the complex conjugates of
    H(q) and F(q), so the self-consistency residual there is the same, and the mean over
    the half equals the mean over all.
    """
    axes = [(np.arange(n) + (0.5 if n > 1 else 0.0)) / n for n in kmesh]
    frac = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    if not np.any(time_reversal_invariant(frac)):
        index = np.stack(np.meshgrid(*[np.arange(n) for n in kmesh], indexing="ij"), axis=-1).reshape(-1, 3)
        partner = np.where(np.asarray(kmesh) > 1, np.asarray(kmesh) - 1 - index, index)
        frac = frac[[tuple(a) < tuple(b) for a, b in zip(index, partner)]]
    return absolute_kpts(cell, frac)


def over_cells(loss_of_cell: Callable, cells, cells_per_pass: int | None):
    """``loss_of_cell`` of each crystal of a batch (a pytree with a leading batch axis).

    ``cells_per_pass=None``: one vectorised evaluation (``vmap``). ``k``: ``k`` cells at a
    time (``lax.map``), each pass under ``jax.checkpoint`` so that the backward pass
    recomputes its intermediates instead of storing them for every cell: the loss's memory
    is then that of ``k`` cells, not the batch's.
    """
    if cells_per_pass is None:
        return jax.vmap(loss_of_cell)(cells)
    per_pass = jax.checkpoint(loss_of_cell)
    if cells_per_pass == 1:  # no inner vmap: its batch axis would make XLA transpose (copy) the AOs
        return jax.lax.map(per_pass, cells)
    return jax.lax.map(per_pass, cells, batch_size=cells_per_pass)


@dataclasses.dataclass(frozen=True)
class CrystalTask:
    """Crystals: H(k) = H_base(k) + Σ_R e^{ik·T_R} ΔH(R) on a k-mesh; energy per cell."""

    config: TrainConfig
    kind = "crystal"

    def resolve(self, systems: Sequence[System]) -> TrainConfig:
        """The config with k-mesh, pseudopotential and FFT mesh fixed (the mesh: PySCF's
        default for the first structure), as saved in a run directory.

        Raises:
            InputError: more than one device (the crystal energy's libxc callback runs on
                one; a JAX XC on the FFT mesh is still to be written).
        """
        c = self.config
        devices = device_count(c.devices)
        if devices > 1:
            raise InputError(f"crystal training runs on one device, not {devices}: use --devices 1")
        first = System.from_any(systems[0])
        kmesh = tuple(c.kmesh or default_kmesh(first, CRYSTAL_KPOINTS_PER_DIRECTION))
        pseudo = c.pseudo or default_pseudo(c.xc)
        if c.mesh is None:
            mf = make_periodic_mean_field(first, c.xc, c.basis, pseudo, kmesh, None)
            mesh = tuple(int(v) for v in mf.cell.mesh)
        else:
            mesh = tuple(int(m) for m in c.mesh)
        return dataclasses.replace(c, kmesh=tuple(int(k) for k in kmesh), pseudo=pseudo, mesh=mesh)

    def baseline_potential(self, ints: PeriodicIntegrals) -> jax.Array | None:
        """Hartree + XC potential of PySCF's initial-guess density on the FFT mesh,
        (nderiv, ngrid); ``None`` without a baseline."""
        if self.config.baseline != "minao":
            return None
        return _effective_potential(ints.dm_guess, ints)

    def sap_blocks(self, system: System) -> LatticeBlocks | None:
        """S(R) and H_base(R) of the ``"sap"`` baseline (:mod:`basis.pbc_sap`: the Kohn–Sham
        matrix of superposed atomic densities, built atom by atom), ``None`` otherwise."""
        c = self.config
        if c.baseline != "sap":
            return None
        return lattice_blocks(system, c.basis, c.pseudo, c.xc)

    def real_space(self, params, model_config: ModelConfig, system: System) -> LatticeBlocks:
        """The predicted H(R) and S(R) of ``system`` as atom-pair blocks (``"sap"`` runs):
        :meth:`sap_blocks` plus ``delta_scale`` × the network's blocks, never a dense N × N
        matrix per shift, so memory and time grow linearly with the atoms.

        Raises:
            InputError: the run's baseline is not ``sap``, or the run filters its correction
                by the overlap spectrum at each k (``overlap_filter``): its H(k) is then not
                the Bloch sum of real-space blocks (:meth:`hamiltonian` gives it).
        """
        c = self.config
        if c.overlap_filter:
            raise InputError("this run filters its correction by the overlap spectrum at each k-point "
                             f"(overlap filter {c.overlap_filter:g}): it predicts H(k), not H(R) blocks")
        return self._real_space(params, model_config, system, self.sap_blocks(system))

    def _real_space(self, params, model_config: ModelConfig, system: System, base: LatticeBlocks) -> LatticeBlocks:
        c = self.config
        if c.baseline != "sap":
            raise InputError(f"real-space blocks come from runs on the sap baseline; this run uses {c.baseline}")
        batch = prepare_batch([system], model_config, gather=False)
        diag, edge = predict_blocks(params, batch, edge_chunk=REAL_SPACE_EDGE_CHUNK)
        pairs, shifts, blocks = real_space_blocks(diag, edge, batch, 0)
        return base.plus(pairs, shifts, c.delta_scale * blocks)

    def baseline(self, ints, potential=None, blocks: LatticeBlocks | None = None) -> jax.Array:
        """H_base(k) at the k-points of ``ints`` (:class:`PeriodicIntegrals` or band
        integrals), (nk, nao, nao) complex128, Hartree: ``"minao"``: h(k) +
        ⟨φ_k|v_guess|φ_k⟩ (equal to F(k)[P_guess] at the training k-points); ``"sap"``:
        Σ_R e^{ik·T_R} H_base(R) of :meth:`sap_blocks`; else zeros."""
        if self.config.baseline == "sap":
            return jnp.asarray(blocks.bloch(np.asarray(ints.kpts)))
        if self.config.baseline != "minao":
            return jnp.zeros_like(ints.overlap)
        return ints.hcore + _potential_matrices(potential, ints.ao)

    def _offmesh_band(self, system: System, ints: PeriodicIntegrals):
        """Band integrals (S, h, Bloch AOs) of ``system`` at the half-shifted k-points."""
        c = self.config
        cell = to_cell(system, basis=c.basis, pseudo=c.pseudo, mesh=ints.mesh)
        return build_band_integrals(cell, offmesh_kpts(cell, c.kmesh), ints.functional, mesh=ints.mesh)

    def _offmesh(self, system: System, ints: PeriodicIntegrals, nao: int, potential, blocks=None) -> OffMesh:
        band = self._offmesh_band(system, ints)
        X, mask = real_orthogonalizers(np.asarray(band.overlap), nao)
        return OffMesh(
            kpts=band.kpts, hcore=band.hcore, ao=band.ao, X=jnp.asarray(X), mo_mask=jnp.asarray(mask),
            h_base=self.baseline(band, potential, blocks), G=self.filters(band, blocks),
        )

    def filters(self, ints, blocks: LatticeBlocks | None = None) -> jax.Array | None:
        """Overlap filters G(k) (nk, N, N) at the k-points of ``ints``
        (:func:`solvers.eigen.overlap_filter` at the config's ``overlap_filter``), ``None``
        without one. Of the S(k) prediction uses: the sap blocks' where given (they differ
        from PySCF's by the blocks' truncation, ~3e-7 for gth-dzvp Si, which G would pass on)."""
        tau = self.config.overlap_filter
        if not tau:
            return None
        S = blocks.bloch(np.asarray(ints.kpts), "overlap") if blocks is not None else np.asarray(ints.overlap)
        return jnp.asarray(overlap_filter(S, tau))

    def filtered_hamiltonian(self, h_base, h, S):
        """H = H_base + G (H_full − H_base) G at each k (numpy, (nk, N, N)): the network's part
        of ``h`` filtered as in training (G_L = S^{1/2} g(S) in place of G with the
        ``"lowdin"`` correction basis); ``h`` itself without a filter."""
        tau = self.config.overlap_filter
        if not tau:
            return h
        G = lowdin_overlap_filter(S, tau) if self.config.correction_basis == "lowdin" else overlap_filter(S, tau)
        return h_base + np.asarray(filtered(h - h_base, G))

    def correction_filter(self, G):
        """The filter of the network's correction in training, from the residuals' G = g(S)
        (B, nk, N, N): G itself, or S^{1/2} g(S) with the ``"lowdin"`` correction basis."""
        if G is None or self.config.correction_basis != "lowdin":
            return G
        return lowdin_filter_from_overlap_filter(jax.lax.stop_gradient(G), self.config.overlap_filter)

    def bloch_settings(self) -> BlochSettings:
        """What the Bloch AOs of a training cell depend on besides the cell."""
        c = self.config
        return BlochSettings(c.xc, c.basis, c.pseudo, tuple(c.mesh), tuple(c.kmesh), bool(c.offmesh_self_consistency))

    def _cell(self, system: System, nao: int):
        """Everything training needs of one cell: its integrals, real orthogonalizers,
        baseline H_base(k) and off-mesh data (Bloch AOs included)."""
        c = self.config
        ints = build_periodic_integrals(system, c.xc, c.basis, c.pseudo, c.kmesh, c.mesh)
        if ints.nao != nao:
            raise InputError("crystals of one training set must have the same atoms (same number of AOs)")
        X, mask = real_orthogonalizers(np.asarray(ints.overlap), nao)
        v = self.baseline_potential(ints)
        blocks = self.sap_blocks(system)
        base = np.asarray(self.baseline(ints, v, blocks))
        offmesh = self._offmesh(system, ints, nao, v, blocks) if c.offmesh_self_consistency else None
        return ints, X, mask, base, offmesh, self.filters(ints, blocks)

    @staticmethod
    def _bloch_record(ints: PeriodicIntegrals, offmesh) -> BlochRecord:
        """The Bloch AOs of ``ints`` and of ``offmesh`` (:class:`OffMesh`, band integrals or ``None``)."""
        arrays = {AO_FIELD: np.asarray(ints.ao)}
        if offmesh is not None:
            arrays[OFFMESH_AO_FIELD] = np.asarray(offmesh.ao)
        return BlochRecord(arrays)

    def prepare(self, systems, model_config, cache=None, progress=False, min_bucket=1, pool=None,
                resident=None, sizing=None) -> list[CrystalSet]:
        """One :class:`~vardft.crystal_stream.CrystalSet` of all ``systems`` (they must have
        the same atoms); integrals at the config's k-mesh and FFT mesh (:meth:`resolve`
        first). The Bloch AOs go to a store in ``cache``'s directory (read back per batch)
        or, without one, stay in memory (its own budget: ``resident`` and ``sizing`` are
        for molecules)."""
        systems = [System.from_any(s) for s in systems]
        batch = prepare_batch(systems, model_config)
        n_aos = {int(n) for n in np.asarray(batch.nao)}
        if len(n_aos) > 1:
            raise InputError("crystals of one training set must have the same atoms (same number of AOs)")
        nao = n_aos.pop()  # the batch's AO slots may be more (bucketed); the loss uses these
        cache = cache or IntegralCache(None)
        store = BlochStore(cache.directory, self.bloch_settings(), cache.record_bound(), memory_budget(cache.memory_bytes))
        ints, Xs, masks, bases, offmesh, filters = [], [], [], [], [], []
        for s in tqdm(systems, desc="integrals", unit="cell", disable=not progress, leave=False):
            i, X, mask, base, off, G = self._cell(s, nao)
            record = self._bloch_record(i, off)
            if store.directory is None:  # kept in memory: moved to the device once, not per batch
                record = BlochRecord(jax.device_put(record.arrays))
            store.keep(s, record)
            ints.append(i.replace(ao=None))
            Xs.append(X)
            masks.append(mask)
            bases.append(base)
            filters.append(G)
            if off is not None:
                offmesh.append(off.replace(ao=None))
            del i, off
        arrays = CrystalArrays(
            batch=batch,
            ints=_stack(ints),
            X=jnp.asarray(np.stack(Xs)),
            mo_mask=jnp.asarray(np.stack(masks)),
            h_base=jnp.asarray(np.stack(bases)),
            offmesh=_stack(offmesh) if offmesh else None,
            G=None if filters[0] is None else jnp.stack(filters),
        )

        def rebuild(system: System) -> BlochRecord:  # the AOs only: no baseline, no orthogonalizers
            c = self.config
            i = build_periodic_integrals(system, c.xc, c.basis, c.pseudo, c.kmesh, c.mesh)
            return self._bloch_record(i, self._offmesh_band(system, i) if c.offmesh_self_consistency else None)

        return [CrystalSet(systems=tuple(systems), arrays=arrays, store=store, rebuild=rebuild)]

    def training_hamiltonians(self, params, data: CrystalArrays, unfiltered: bool = False):
        """H(k) (B, nk, nao, nao) at the training k-points and, with off-mesh self-consistency,
        H(q) (B, nq, nao, nao) at the off-mesh ones (else ``None``): H_base + the network's
        Bloch sum, complex, Hartree — what the loss sees. ``unfiltered``: also
        H_base + ΔH before the overlap filter, at both (the filtered-fock target's)."""
        H_R = self.config.delta_scale * predict_hamiltonian(params, data.batch)
        return self.hamiltonians_of_blocks(H_R, data, unfiltered)

    def hamiltonians_of_blocks(self, H_R, data: CrystalArrays, unfiltered: bool = False):
        """:meth:`training_hamiltonians` of given real-space corrections ΔH(R) (B, nR, N, N)
        in the slots of ``data.batch`` (Hartree; ΔH(−R) = ΔH(R)ᵀ)."""
        nao = data.h_base.shape[-1]  # AO slots beyond it are bucket padding (zero rows and columns)

        def at(h_base, kpts, G):
            dH = bloch_sum_batch(H_R, data.batch, kpts)[..., :nao, :nao]
            G = self.correction_filter(G)
            return h_base + (dH if G is None else jax.vmap(filtered)(dH, G)), h_base + dH

        Hk, Hk_raw = at(data.h_base, data.ints.kpts, data.G)
        Hq, Hq_raw = (None, None) if data.offmesh is None else at(data.offmesh.h_base, data.offmesh.kpts, data.offmesh.G)
        return (Hk, Hq, Hk_raw, Hq_raw) if unfiltered else (Hk, Hq)

    def batch_terms(self, params, data: CrystalArrays):
        """Loss (B,) and metrics {energy, sc_rmse, sc_rmse_orthonormal} (B,) of the B crystals of ``data``."""
        return self.terms_of_blocks(self.config.delta_scale * predict_hamiltonian(params, data.batch), data)

    def terms_of_blocks(self, H_R, data: CrystalArrays):
        """:meth:`batch_terms` of given real-space corrections ΔH(R) (B, nR, N, N), Hartree
        (as :meth:`hamiltonians_of_blocks`): the loss of any ΔH, a network's or not."""
        c = self.config
        to_filtered_fock = c.self_consistency_target == "filtered-fock"
        Hk, Hq, Hk_raw, Hq_raw = self.hamiltonians_of_blocks(H_R, data, unfiltered=True)
        if not to_filtered_fock:
            Hk_raw = Hq_raw = None

        def one(args):
            h, i, x, m, g, hq, o, h_raw, hq_raw = args
            return crystal_loss(h, i, x, m, c.loss, c.self_consistency_basis, hq, o, g, h_raw, hq_raw)

        cells = (Hk, data.ints, data.X, data.mo_mask, data.G, Hq, data.offmesh, Hk_raw, Hq_raw)
        terms = over_cells(one, cells, c.cells_per_pass)
        metrics = {
            "energy": terms.energy,
            "sc_rmse": terms.self_consistency_rmse,
            "sc_rmse_orthonormal": terms.orthonormal_rmse,
        }
        return terms.loss, metrics

    def hamiltonian(self, params, model_config: ModelConfig, system: System, kpts, ints=None):
        """Predicted H(k) and S(k) of ``system`` at Cartesian ``kpts`` (nk, 3), 1/Bohr.

        H(k) = H_base(k) + Σ_R e^{ik·T_R} ΔH(R) with the run's baseline, exactly as in
        training: ``"minao"``, the potential of PySCF's initial-guess density at the run's
        k-mesh, on its FFT mesh, taken to every k (a whole-cell build); ``"sap"``, the
        real-space blocks of :meth:`sap_blocks` and their S(R) (cost linear in the atoms,
        and a supercell gets its primitive cell's blocks).

        Args:
            ints: optional :class:`PeriodicIntegrals` of ``system`` at the run's k-mesh and
                FFT mesh (reused for the baseline potential instead of being rebuilt).

        Returns:
            ``(H (nk, nao, nao), S (nk, nao, nao))`` complex128 numpy arrays, Hartree.
        """
        c = self.config
        kpts = np.asarray(kpts, dtype=np.float64).reshape(-1, 3)
        if c.baseline == "sap":
            base = self.sap_blocks(system)
            blocks = self._real_space(params, model_config, system, base)
            S = blocks.bloch(kpts, "overlap")
            h = blocks.bloch(kpts)
            return (self.filtered_hamiltonian(base.bloch(kpts), h, S) if c.overlap_filter else h), S
        batch = prepare_batch([system], model_config)
        nao = int(np.asarray(batch.nao)[0])
        H_R = c.delta_scale * predict_hamiltonian(params, batch)
        dH = np.asarray(bloch_sum_batch(H_R, batch, jnp.asarray(kpts))[0][:, :nao, :nao])
        cell = to_cell(system, basis=c.basis, pseudo=c.pseudo, mesh=c.mesh)
        if c.baseline == "none":
            S = np.asarray(cell.pbc_intor("int1e_ovlp", hermi=1, kpts=kpts), dtype=np.complex128).reshape(-1, nao, nao)
            return self.filtered_hamiltonian(np.zeros_like(dH), dH, S), S
        if ints is None:
            ints = build_periodic_integrals(system, c.xc, c.basis, c.pseudo, c.kmesh, c.mesh)
        v = self.baseline_potential(ints)
        functional = check_periodic_functional(c.xc)
        size = int(max(1, BAND_CHUNK_BYTES // bloch_ao_nbytes(1, ints.ngrid, nao, functional)))
        Hb, S = [], []
        for n, chunk in band_integral_chunks(cell, kpts, functional, size, mesh=ints.mesh):
            Hb.append(np.asarray(self.baseline(chunk, v))[:n])
            S.append(np.asarray(chunk.overlap)[:n])
        Hb, S = np.concatenate(Hb), np.concatenate(S)
        return self.filtered_hamiltonian(Hb, Hb + dH, S), S


TASKS = {"molecule": MoleculeTask, "crystal": CrystalTask}


def task_for(config: TrainConfig):
    """The task of a config's kind."""
    return TASKS[config.kind](config)
