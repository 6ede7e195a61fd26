"""Streamed molecular training data: compact records on disk, batches loaded ahead of the step.

With the ``"jax"`` backend a molecule's training data is a :class:`MoleculeRecord`: the
:class:`~basis.integrals.CompactIntegrals` (overlap, core Hamiltonian, packed
density-fitting factor, grid points and weights, guess density, nuclear repulsion) plus
its baseline Hamiltonian and orthogonalizer — no AO values (the device computes them
from the basis set) and no unpacked DF factor. Records are built by worker processes
(PySCF only) and kept in the on-disk cache (HDF5, atomic, checksummed, version-checked,
size-bounded: past the bound a record is recomputed whenever it is needed, never
written). What the training process holds is the records of the current and the next
batch, independent of the number of molecules.

One :class:`StreamedSet` per size bucket fixes every padded shape once (AOs, auxiliary
functions, grid points, shells per angular momentum, graph slots), so one compiled step
serves every batch of the bucket.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import errno
import hashlib
import json
import multiprocessing
import os
import shutil
import threading
import time
import warnings
from typing import Any, Callable, Sequence

import flax.struct
import h5py
import jax
import numpy as np
from tqdm.auto import tqdm

from basis.errors import InputError
from basis.frame import frame_covariant
from basis.functional import parse_functional
from basis.integrals import CompactIntegrals, compact_integrals_from_mean_field, make_mean_field
from basis.sap import sap_hamiltonian
from basis.shells import AOShells, pad_ao_shells
from basis.system import System
from solvers.eigen import canonical_orthogonalizer, pad_orthogonalizer
from solvers.xc import FAR_AWAY
from vardft.checkpoint import atomic_output
from vardft.data import arrays_checksum, integral_key
from vardft.hamiltonian import prepare_batch

RECORD_VERSION = 1
"""Bump when the content or layout of a :class:`MoleculeRecord` file changes."""

RECORD_FIELDS = ("overlap", "hcore", "cderi_packed", "coords", "weights", "e_nuc", "dm_guess", "h_base", "X")
"""Arrays of a record, in checksum order."""

DISTILL_FIELD = "h_target"
"""The extra record field of what distillation learns: F[P_minao] (the ``"sap"`` baseline),
or PySCF's converged Kohn–Sham matrix (``distill_target="scf"``, a supervised comparison)."""


def record_fields(arrays) -> tuple[str, ...]:
    """The fields a record has (``arrays``: a dict or an open HDF5 file), in checksum order."""
    return RECORD_FIELDS + ((DISTILL_FIELD,) if DISTILL_FIELD in arrays else ())

AUX_ROUND = 64
"""Auxiliary functions are padded to a multiple of this (few distinct compiled shapes)."""

GRID_ROUND = 512
"""Grid points are padded to a multiple of this."""

SHELL_ROUND = 4
"""Shells per angular momentum are padded to a multiple of this."""

WORKER_THREADS = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                  "JAX_PLATFORMS": "cpu"}
"""Environment of the record workers: one thread each, so that workers and the training
step do not oversubscribe the cores (a thread pool per process on 2 cores collapsed
training 18–25× under contention); and JAX on the CPU, so that a worker never claims
the accelerator's memory (JAX takes most of a GPU's memory in each process using it)."""


def round_up(n: int, multiple: int) -> int:
    return -(-int(n) // multiple) * multiple


@dataclasses.dataclass(frozen=True)
class RecordSettings:
    """What a record depends on besides the geometry (static, picklable)."""

    xc: str
    basis: str
    grid_level: int
    baseline: str
    distill_target: str = "minao"

    @property
    def has_target(self) -> bool:
        """Whether records hold a distillation target (:data:`DISTILL_FIELD`)."""
        return self.baseline == "sap" or self.distill_target == "scf"

    def key(self, system: System) -> str:
        """Hash of the geometry, these settings and :data:`RECORD_VERSION`."""
        geometry = integral_key(system, self.xc, self.basis, self.grid_level)
        labels = "" if self.distill_target == "minao" else f":{self.distill_target}"  # earlier records keep their keys
        return hashlib.sha256(f"{RECORD_VERSION}:{geometry}:{self.baseline}{labels}".encode()).hexdigest()[:32]


@dataclasses.dataclass
class MoleculeRecord:
    """Compact training data of one molecule (in its own frame), numpy arrays.

    Attributes:
        arrays: ``RECORD_FIELDS`` → array; shapes as in :class:`CompactIntegrals`, plus
            ``h_base`` (nao, nao) baseline Hamiltonian (Hartree) and ``X`` (nao, nmo)
            canonical orthogonalizer; with the ``"sap"`` baseline also ``h_target``
            (nao, nao), the minao Kohn–Sham matrix that distillation learns.
        n_electrons: electron count.
        auxbasis: auxiliary basis description (PySCF's).
    """

    arrays: dict
    n_electrons: int
    auxbasis: str

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())


def keep_every_grid_point(mf) -> None:
    """Make PySCF's XC use the record's grid as stored (it would prune small-density points)."""
    if hasattr(mf, "small_rho_cutoff"):
        mf.small_rho_cutoff = 0.0


def minao_fock(mf) -> np.ndarray:
    """(nao, nao) Kohn–Sham/Fock matrix of PySCF's minao guess density on ``mf``'s own grid
    and density fitting: h + J − (a/2)K + V_xc, Hartree — the ``"minao"`` baseline, here
    computed by PySCF in a worker (no JAX compilation per molecule shape). Equal to
    :meth:`vardft.tasks.MoleculeTask.baseline` on the same integrals to round-off."""
    keep_every_grid_point(mf)
    dm = mf.get_init_guess()
    return np.asarray(mf.get_hcore() + np.asarray(mf.get_veff(mf.mol, dm)), dtype=np.float64)


SCF_LABEL_CONV_TOL = 1e-10
"""Hartree: energy convergence of the SCF labels (PySCF's default is 1e-9)."""


def converged_fock(mf, name: str = "molecule") -> np.ndarray:
    """(nao, nao) PySCF's converged Kohn–Sham/Fock matrix on ``mf``'s grid and density
    fitting, Hartree: the label of a supervised comparison run (``distill_target="scf"``).

    Raises:
        InputError: the SCF did not converge (no label is better than a wrong one).
    """
    keep_every_grid_point(mf)
    mf.conv_tol = SCF_LABEL_CONV_TOL
    mf.kernel()
    if not mf.converged:
        raise InputError(f"{name}: PySCF's SCF did not converge in {mf.max_cycle} cycles, so there is no label for it")
    return np.asarray(mf.get_fock(), dtype=np.float64)


def build_record(system: System, settings: RecordSettings) -> MoleculeRecord:
    """The complete record of a molecule already in its frame; runs in a worker (PySCF only).

    The baseline is made covariant as in training (:func:`basis.frame.frame_covariant`:
    averaged over the candidate frames of symmetric tops). With ``distill_target="scf"``
    the record also holds PySCF's converged Kohn–Sham matrix (:func:`converged_fock`)."""
    mf = make_mean_field(system, settings.xc, settings.basis, settings.grid_level)
    ints = compact_integrals_from_mean_field(mf)
    arrays = {name: np.asarray(getattr(ints, name)) for name in RECORD_FIELDS[:7]}
    arrays["X"] = canonical_orthogonalizer(arrays["overlap"])
    arrays["h_base"] = _record_baseline(mf, system, settings, arrays)
    if settings.distill_target == "scf":  # last: the SCF reuses mf's DF factor and grid
        arrays[DISTILL_FIELD] = converged_fock(mf, system.formula)
    return MoleculeRecord(arrays, ints.n_electrons, ints.auxbasis)


def _record_baseline(mf, system: System, settings: RecordSettings, arrays: dict) -> np.ndarray:
    """H_base of a record; with the ``"sap"`` baseline also F[P_minao] in ``arrays``."""
    if settings.baseline == "none":
        return np.zeros_like(arrays["overlap"])

    def fock(s: System) -> np.ndarray:
        return minao_fock(make_mean_field(s, settings.xc, settings.basis, settings.grid_level))

    minao = frame_covariant(lambda: minao_fock(mf), fock, system, settings.basis)
    if settings.baseline == "sap":
        arrays[DISTILL_FIELD] = minao
        return sap_hamiltonian(mf.mol)[0]
    return minao


# ------------------------------------------------------------------ disk store
def write_arrays(path: str, arrays: dict, fields: Sequence[str], version: tuple[str, int], attrs: dict | None = None) -> None:
    """Write ``arrays[fields]`` to the HDF5 file ``path`` atomically (temporary file +
    rename) with their checksum, the ``version`` attribute ``(name, value)`` and ``attrs``."""
    with atomic_output(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for name in fields:
                f.create_dataset(name, data=arrays[name])
            f.attrs[version[0]] = version[1]
            f.attrs["checksum"] = arrays_checksum(arrays, fields)
            for key, value in (attrs or {}).items():
                f.attrs[key] = value


def read_arrays(path: str, fields: Callable, version: tuple[str, int], verify: bool, what: str):
    """``(arrays, attrs)`` of a file written by :func:`write_arrays` (``fields(file)``: the
    names to read); ``None`` if missing, of another version, unreadable or damaged (then
    with a warning naming ``what``). ``verify=False`` skips the checksum (for a file this
    process has already verified or written)."""
    try:
        with h5py.File(path, "r") as f:
            if int(f.attrs.get(version[0], -1)) != version[1]:
                return None
            arrays = {name: f[name][()] for name in fields(f)}
            if verify and str(f.attrs.get("checksum", "")) != arrays_checksum(arrays, fields(arrays)):
                warnings.warn(f"{path}: cached {what} fails its checksum (damaged file); recomputing it", stacklevel=3)
                return None
            return arrays, dict(f.attrs)
    except (OSError, KeyError):
        return None


TARGET_FIELDS = ("h_base", DISTILL_FIELD, "X")
"""What distillation reads of a record (:class:`TargetSet`); records written since it
existed also carry a checksum of each of these (``checksum:NAME``), so that they can be
read and verified alone (:func:`load_fields`)."""


def save_record(path: str, record: MoleculeRecord) -> None:
    """Write ``record`` atomically with its checksum and those of its :data:`TARGET_FIELDS`."""
    own = {f"checksum:{name}": arrays_checksum(record.arrays, (name,)) for name in TARGET_FIELDS
           if name in record.arrays}
    write_arrays(path, record.arrays, record_fields(record.arrays), ("record_version", RECORD_VERSION),
                 {"n_electrons": record.n_electrons, "auxbasis": record.auxbasis, **own})


def load_fields(path: str, names: Sequence[str]) -> dict | None:
    """``{name: array}`` of a record's ``names`` alone, each verified against its own
    checksum; ``None`` if the file is missing, of another version, written without those
    checksums (older records: read them whole), unreadable or damaged (with a warning)."""
    try:
        with h5py.File(path, "r") as f:
            if int(f.attrs.get("record_version", -1)) != RECORD_VERSION:
                return None
            sums = {name: f.attrs.get(f"checksum:{name}") for name in names}
            if any(v is None for v in sums.values()):
                return None
            arrays = {name: f[name][()] for name in names}
    except (OSError, KeyError):
        return None
    if any(str(sums[name]) != arrays_checksum(arrays, (name,)) for name in names):
        warnings.warn(f"{path}: cached record fails its checksum (damaged file); recomputing it", stacklevel=2)
        return None
    return arrays


def load_record(path: str, verify: bool = True) -> MoleculeRecord | None:
    """The record in ``path``; ``None`` if missing, of another version, unreadable or
    damaged (then with a warning): it is rebuilt. ``verify=False`` skips the checksum."""
    found = read_arrays(path, record_fields, ("record_version", RECORD_VERSION), verify, "record")
    if found is None:
        return None
    arrays, attrs = found
    return MoleculeRecord(arrays, int(attrs["n_electrons"]), str(attrs["auxbasis"]))


DISK_RESERVE_BYTES = 5 * 10**9
"""The disk cache never leaves less than this free on its file system (a QM9 record is
~0.1 GB: 1,100 of them filled a 79 GB disk before the reserve existed)."""

DEFAULT_DISK_SHARE = 0.5
"""Without ``--cache-gb``, a run's record cache takes at most this share of the space free
when training starts (besides the records it already holds): a QM9 cache that ran to the 5 GB reserve
left too little disk for installing packages on the same machine."""


def stored_bytes(directory: str) -> int:
    """Bytes of the ``.h5`` files in ``directory`` (what a store's bound counts)."""
    return sum(e.stat().st_size for e in os.scandir(directory) if e.name.endswith(".h5"))


def default_max_bytes(directory: str) -> int:
    """The default bound of a run's record cache (no ``--cache-gb``): what ``directory`` holds now plus
    :data:`DEFAULT_DISK_SHARE` of the free space of its file system."""
    os.makedirs(directory, exist_ok=True)
    return stored_bytes(directory) + int(DEFAULT_DISK_SHARE * shutil.disk_usage(directory).free)


class RecordStore:
    """Records of molecules on disk (``directory``) or in memory (``directory=None``).
    Subclasses store other records (:class:`vardft.crystal_stream.BlochStore`) by
    overriding :attr:`prefix`, :meth:`write_file` and :meth:`read_file`.

    The disk store holds at most ``max_bytes`` of records (files already in the
    directory count; ``None``: no bound — a run's stores get
    :meth:`vardft.data.IntegralCache.record_bound`) and never fills its file system
    beyond :data:`DISK_RESERVE_BYTES` of free space (a full disk met while writing counts the same); a record that does not
    fit is not written, and is rebuilt each time it is needed. The in-memory store (no
    directory) keeps every record.
    """

    prefix = "rec"
    """File names are ``{prefix}-{key}.h5`` (every ``.h5`` file of the directory counts
    towards ``max_bytes``)."""

    def __init__(self, directory: str | None, settings, max_bytes: int | None = None):
        self.directory = directory
        self.settings = settings
        self.max_bytes = max_bytes
        self.memory: dict[str, MoleculeRecord] = {}
        self.verified: set[str] = set()  # files whose checksum this process has checked (or written)
        self.written = self.rebuilt = self.read = 0
        self.used = 0
        self.disk_full = False
        self.warned = False
        if directory is not None:
            os.makedirs(directory, exist_ok=True)
            self.used = stored_bytes(directory)

    def write_file(self, path: str, record) -> None:
        save_record(path, record)

    def read_file(self, path: str, verify: bool):
        return load_record(path, verify=verify)

    def path(self, system: System) -> str | None:
        if self.directory is None:
            return None
        return os.path.join(self.directory, f"{self.prefix}-{self.settings.key(system)}.h5")

    def lookup(self, system: System) -> MoleculeRecord | None:
        if self.directory is None:
            return self.memory.get(self.settings.key(system))
        path = self.path(system)
        if not os.path.exists(path):
            return None
        record = self.read_file(path, verify=path not in self.verified)
        if record is not None:
            self.read += 1
            self.verified.add(path)
        return record

    def lookup_fields(self, system: System, names: Sequence[str]) -> dict | None:
        """``{name: array}`` of a stored record's ``names`` without reading the rest
        (:func:`load_fields`), or ``None`` (then :meth:`lookup` the whole record)."""
        if self.directory is None:
            record = self.memory.get(self.settings.key(system))
            return None if record is None else {name: record.arrays[name] for name in names}
        return load_fields(self.path(system), names)

    def sizes(self, system: System) -> tuple[int, int] | None:
        """``(naux, ngrid)`` of a stored record without reading its arrays, or ``None``."""
        if self.directory is None:
            record = self.memory.get(self.settings.key(system))
            return None if record is None else record_sizes(record)
        try:
            with h5py.File(self.path(system), "r") as f:
                if int(f.attrs.get("record_version", -1)) != RECORD_VERSION:
                    return None
                return int(f["cderi_packed"].shape[0]), int(f["weights"].shape[0])
        except (OSError, KeyError):
            pass
        try:
            with open(self.sizes_path(system)) as f:
                found = json.load(f)
            if found.get("record_version") == RECORD_VERSION:
                return int(found["naux"]), int(found["ngrid"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
        return None

    def sizes_path(self, system: System) -> str:
        return os.path.join(self.directory, f"{self.prefix}-{self.settings.key(system)}.sizes.json")

    def remember_sizes(self, system: System, sizes: tuple[int, int]) -> None:
        """Note ``(naux, ngrid)`` of a record the store had no room for (a few bytes, next to
        the records), so that preparing the same molecules again fixes their bucket's shapes
        without rebuilding them (resuming a QM9 run whose 400 unkept records were rebuilt
        for their sizes alone took 15 minutes). Nothing is lost when even this fails."""
        if self.directory is None:
            return
        with contextlib.suppress(OSError):
            with atomic_output(self.sizes_path(system)) as tmp, open(tmp, "w") as f:
                json.dump({"record_version": RECORD_VERSION, "naux": int(sizes[0]), "ngrid": int(sizes[1])}, f)

    def fetch(self, systems: Sequence[System], idx: Sequence[int], rebuild) -> list:
        """Records of ``systems[i]`` for ``i`` in ``idx`` (in that order): each distinct one
        looked up once, the missing ones made by ``rebuild(indices) -> records`` (counted)."""
        found = {i: self.lookup(systems[i]) for i in dict.fromkeys(idx)}
        missing = [i for i, record in found.items() if record is None]
        if missing:
            self.rebuilt += len(missing)
            found.update(zip(missing, rebuild(missing)))
        return [found[i] for i in idx]

    def keep(self, system: System, record: MoleculeRecord) -> bool:
        """Store a complete record; False when the size bound leaves no room."""
        if self.directory is None:
            self.memory[self.settings.key(system)] = record
            return True
        if self.max_bytes is not None and self.used + record.nbytes > self.max_bytes:
            self._warn_once(f"full at its bound of {self.max_bytes / 1e9:.3g} GB")
            return False
        if self.disk_full or shutil.disk_usage(self.directory).free - record.nbytes < DISK_RESERVE_BYTES:
            self._stop_writing()
            return False
        try:
            self.write_file(self.path(system), record)
        except OSError as e:  # the temporary file is gone (atomic_output); the record is not lost, only not kept
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            self._stop_writing()
            return False
        self.verified.add(self.path(system))
        self.used += os.path.getsize(self.path(system))
        self.written += 1
        return True

    def _stop_writing(self) -> None:
        """The disk reserve is reached: no more records are written by this store."""
        self._warn_once(f"keeping {DISK_RESERVE_BYTES / 1e9:g} GB of disk free")
        self.disk_full = True

    def _warn_once(self, why: str) -> None:
        if not self.warned:
            warnings.warn(
                f"record cache {self.directory}: {why}, records past it are not written; they are rebuilt "
                "when needed (--cache-gb bounds the cache, --cache none keeps none)", stacklevel=4)
            self.warned = True


def _exit_with_parent(parent: int) -> None:
    """Worker initializer: end the worker once ``parent`` (the training process) is gone.
    Workers of a QM9 run killed for memory were otherwise left idle for hours, holding
    0.9 GB between them."""

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


@contextlib.contextmanager
def worker_pool(workers: int):
    """A pool of ``workers`` spawned processes, one BLAS/OpenMP thread each (``None`` for 0)."""
    if workers < 1:
        yield None
        return
    saved = {k: os.environ.get(k) for k in WORKER_THREADS}
    os.environ.update(WORKER_THREADS)  # inherited by the spawned workers; this process's libraries are loaded
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=_exit_with_parent, initargs=(os.getpid(),))
    try:
        list(pool.map(int, range(workers)))  # start every worker now, under this environment
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        yield pool
    finally:
        pool.shutdown(cancel_futures=True)


# ------------------------------------------------------------------ bucket shapes
@dataclasses.dataclass(frozen=True)
class BucketShapes:
    """Padded shapes every batch of one bucket shares (one compiled step).

    ``graph``: (atoms, edges, aos) slots of :func:`vardft.hamiltonian.prepare_batch`;
    ``nao`` = aos; ``naux`` and ``ngrid`` rounded up (:data:`AUX_ROUND`, :data:`GRID_ROUND`);
    ``shells``: ((group key (l, nprim), shells), ...) and ``nctr``: ((key, contractions
    per shell), ...) of :func:`basis.shells.pad_ao_shells`.
    """

    graph: tuple[int, int, int]
    naux: int
    ngrid: int
    shells: tuple
    nctr: tuple

    @property
    def nao(self) -> int:
        return self.graph[2]


def record_sizes(record: MoleculeRecord) -> tuple[int, int]:
    """``(naux, ngrid)`` of a record."""
    return int(record.arrays["cderi_packed"].shape[0]), int(record.arrays["weights"].shape[0])


def molecule_sizes(naux: int, ngrid: int, shells: AOShells) -> dict:
    """The sizes of one molecule that bucket shapes are the maxima of."""
    return {
        "naux": int(naux),
        "ngrid": int(ngrid),
        "shells": {k: shells.nshell(k) for k in shells.keys},
        "nctr": {k: shells.nctr(k) for k in shells.keys},
    }


def bucket_shapes(graph: tuple[int, int, int], sizes: Sequence[dict]) -> BucketShapes:
    shells: dict = {}
    nctr: dict = {}
    for s in sizes:
        for k, n in s["shells"].items():
            shells[k] = max(shells.get(k, 0), n)
            nctr[k] = max(nctr.get(k, 0), s["nctr"][k])
    return BucketShapes(
        graph=tuple(int(g) for g in graph),
        naux=round_up(max(s["naux"] for s in sizes), AUX_ROUND),
        ngrid=round_up(max(max(s["ngrid"] for s in sizes), 1), GRID_ROUND),
        shells=tuple((k, round_up(n, SHELL_ROUND)) for k, n in sorted(shells.items())),
        nctr=tuple(sorted(nctr.items())),
    )


def pad_shells(shells: AOShells, shapes: BucketShapes) -> AOShells:
    """A molecule's AO shells padded to a bucket's shapes."""
    return pad_ao_shells(shells, dict(shapes.shells), shapes.nao, dict(shapes.nctr))


def pad_record(record: MoleculeRecord, shells: AOShells, shapes: BucketShapes, settings: RecordSettings
               ) -> tuple[CompactIntegrals, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """``(CompactIntegrals, h_base, X, mo_mask, h_target)`` of one record padded to
    ``shapes`` (numpy leaves; ``h_target`` None without one); ``shells``: the molecule's
    AO shells already padded (:func:`pad_shells`).

    Padded AOs and auxiliary functions are zero; padded grid points sit far away with
    zero weight. Energy and Fock of the padded integrals equal the record's.
    """
    a = record.arrays
    n, N = a["overlap"].shape[0], shapes.nao
    npair, Npair = n * (n + 1) // 2, N * (N + 1) // 2
    pad2 = lambda m: np.pad(m, [(0, N - n), (0, N - n)])  # noqa: E731
    ngrid = a["weights"].shape[0]
    coords = np.concatenate([a["coords"], np.full((shapes.ngrid - ngrid, 3), FAR_AWAY)])
    X, mask = pad_orthogonalizer(a["X"], N, N)
    ints = CompactIntegrals(
        overlap=pad2(a["overlap"]),
        hcore=pad2(a["hcore"]),
        cderi_packed=np.pad(a["cderi_packed"], [(0, shapes.naux - a["cderi_packed"].shape[0]), (0, Npair - npair)]),
        coords=coords,
        weights=np.pad(a["weights"], (0, shapes.ngrid - ngrid)),
        e_nuc=np.asarray(a["e_nuc"]),
        dm_guess=pad2(a["dm_guess"]),
        shells=shells,
        n_electrons=record.n_electrons,
        basis=settings.basis,
        auxbasis=record.auxbasis,
        functional=parse_functional(settings.xc),
        grid_level=settings.grid_level,
    )
    target = pad2(a[DISTILL_FIELD]) if DISTILL_FIELD in a else None
    return ints, pad2(a["h_base"]), X, mask, target


# ------------------------------------------------------------------ streamed sets
class ResidentRecords:
    """Padded molecule records held on the device up to ``budget`` bytes, shared by the
    size buckets of a run: a held molecule is not read, padded or copied to the device
    again. On a GPU the per-batch read, padding and host-to-device copy of ~200 MB per
    QM9 molecule, not the step, bounded training (1.16 s per step of 8 against 0.055 s
    for the step itself, measured on an H200); on a 2-core CPU the same work beside the
    step made it 1.36× slower. Beyond the budget records are read per batch as before, so
    memory is bounded by the budget, not by the number of molecules.
    """

    def __init__(self, budget: int):
        self.budget = int(budget)
        self.held_bytes = 0
        self._held: dict = {}
        self._lock = threading.Lock()  # the batch loader and held-out evaluation both take batches

    def __len__(self) -> int:
        return len(self._held)

    def get(self, key):
        return self._held.get(key)

    def offer(self, key, padded):
        """``padded`` (a :func:`pad_record` tuple), on the device and held if the budget has
        room; otherwise returned as it is."""
        nbytes = sum(int(np.asarray(leaf).nbytes) for leaf in jax.tree.leaves(padded))
        with self._lock:
            if key in self._held:
                return self._held[key]
            if self.held_bytes + nbytes > self.budget:
                return padded
            self._held[key] = jax.device_put(padded)
            self.held_bytes += nbytes
            return self._held[key]


@dataclasses.dataclass
class StreamedSet:
    """One size bucket of molecules whose arrays are loaded per batch.

    ``take(idx)`` returns the padded, stacked arrays of the molecules ``idx`` (the same
    shapes for every batch of equal length) and the indices into them; records come
    from ``resident`` (padded, on the device) when it holds them, else from ``store``,
    or are rebuilt (``rebuild(ks)``) when the store has no room for them.
    ``shells``: each molecule's AO shells (unpadded).
    """

    systems: tuple[System, ...]
    shells: tuple[AOShells, ...]
    shapes: BucketShapes
    store: RecordStore
    rebuild: Callable[[list[int]], list[MoleculeRecord]]
    make_arrays: Callable
    model_config: object
    resident: ResidentRecords | None = None
    _padded_shells: dict = dataclasses.field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.systems)

    def records(self, idx: Sequence[int]) -> list[MoleculeRecord]:
        return self.store.fetch(self.systems, idx, self.rebuild)

    def padded_shells(self, k: int) -> AOShells:
        """The AO shells of molecule ``k`` padded to the bucket (padded once: a few kB each)."""
        if k not in self._padded_shells:
            self._padded_shells[k] = pad_shells(self.shells[k], self.shapes)
        return self._padded_shells[k]

    def take(self, idx):
        """The stacked arrays of molecules ``idx`` (a batch, rows in the order of ``idx``)."""
        idx = [int(i) for i in np.asarray(idx)]
        batch = prepare_batch([self.systems[i] for i in idx], self.model_config, pad_to=self.shapes.graph)
        keys = {i: (self.shapes, self.store.settings.key(self.systems[i])) for i in dict.fromkeys(idx)}
        held = {i: self.resident.get(key) for i, key in keys.items()} if self.resident is not None else {}
        missing = [i for i in keys if held.get(i) is None]
        for i, record in zip(missing, self.records(missing)):
            padded = pad_record(record, self.padded_shells(i), self.shapes, self.store.settings)
            held[i] = padded if self.resident is None else self.resident.offer(keys[i], padded)
        return self.make_arrays(batch, [held[i] for i in idx])


@flax.struct.dataclass
class TargetArrays:
    """What a distillation step reads of a batch (:meth:`vardft.tasks.MoleculeTask.distill_terms`):
    ``batch`` (the model input), ``h_base`` and ``h_target`` (B, N, N), Hartree, and the
    padded orthogonalizers ``X`` (B, N, N) with their ``mo_mask`` (B, N) as in a whole record."""

    batch: Any
    h_base: jax.Array
    h_target: jax.Array
    X: jax.Array
    mo_mask: jax.Array


@dataclasses.dataclass
class TargetSet:
    """The baseline and distillation target of every molecule of one streamed size bucket,
    held in memory (unpadded, float64): what distillation steps read, without the grid
    and DF arrays of a whole record. Distillation read and padded those for every step,
    which made a QM9 distillation step 3× slower (17–22 s against 6.5 s) once records
    were no longer held in memory."""

    systems: tuple[System, ...]
    graph: tuple[int, int, int]
    nao: int
    h_base: tuple[np.ndarray, ...]
    h_target: tuple[np.ndarray, ...]
    X: tuple[np.ndarray, ...]
    model_config: object

    @classmethod
    def of(cls, streamed: StreamedSet, progress: bool = False) -> TargetSet:
        """The targets of ``streamed``: each record's :data:`TARGET_FIELDS` alone, or (older
        records, and records the store had no room for) the whole record read or rebuilt once."""
        base, target, X = [], [], []
        for i in tqdm(range(len(streamed)), desc="distillation targets", unit="mol", disable=not progress, leave=False):
            arrays = streamed.store.lookup_fields(streamed.systems[i], TARGET_FIELDS)
            if arrays is None:
                arrays = streamed.records([i])[0].arrays
            base.append(np.array(arrays["h_base"]))
            target.append(np.array(arrays[DISTILL_FIELD]))
            X.append(np.array(arrays["X"]))
        return cls(streamed.systems, streamed.shapes.graph, streamed.shapes.nao, tuple(base), tuple(target),
                   tuple(X), streamed.model_config)

    def __len__(self) -> int:
        return len(self.systems)

    def take(self, idx) -> TargetArrays:
        """:class:`TargetArrays` of molecules ``idx`` (rows in the order of ``idx``), padded to the bucket."""
        idx = [int(i) for i in np.asarray(idx)]
        batch = prepare_batch([self.systems[i] for i in idx], self.model_config, pad_to=self.graph)

        def padded(m):
            return np.pad(m, [(0, self.nao - m.shape[0]), (0, self.nao - m.shape[1])])

        orthogonalizers = [pad_orthogonalizer(self.X[i], self.nao, self.nao) for i in idx]
        return TargetArrays(batch=batch, h_base=np.stack([padded(self.h_base[i]) for i in idx]),
                            h_target=np.stack([padded(self.h_target[i]) for i in idx]),
                            X=np.stack([x for x, _ in orthogonalizers]), mo_mask=np.stack([m for _, m in orthogonalizers]))


def distillation_sets(sets: Sequence, progress: bool = False) -> list:
    """What distillation steps read of a run's sets: each streamed set's :class:`TargetSet`
    (records that have a distillation target); in-memory sets as they are."""
    return [TargetSet.of(s, progress) if isinstance(s, StreamedSet) and s.store.settings.has_target
            else s for s in sets]


def bounded_map(pool, fn, items: Sequence, *args, ahead: int = 2):
    """``fn(item, *args)`` for each item, in order, through ``pool`` (or inline without one),
    with at most ``ahead`` per worker in flight: finished results never pile up in memory."""
    if pool is None:
        for item in items:
            yield fn(item, *args)
        return
    limit = max(1, ahead * pool._max_workers)
    pending: list = []
    items = list(items)
    nxt = 0
    while nxt < len(items) or pending:
        while nxt < len(items) and len(pending) < limit:
            pending.append(pool.submit(fn, items[nxt], *args))
            nxt += 1
        yield pending.pop(0).result()
