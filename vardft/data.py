"""Datasets of geometries and the HDF5 integral cache.

Built-in datasets are generated deterministically (seeded) from ASE's G2
collection: no downloads. Conformations are thermal-like: every atom is
displaced by a Gaussian whose width scales as 1/sqrt(mass), as in a classical
harmonic crystal at fixed temperature (width ``DISPLACEMENT_H`` for hydrogen).

Integrals are cached in HDF5, one file per geometry and settings, keyed by a
hash of everything they depend on; writes are atomic (temporary file +
rename), and a file written by another cache version is rebuilt, never reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from typing import Callable, Sequence

import h5py
import jax.numpy as jnp
import numpy as np
from ase.build import molecule
from ase.collections import g2
from ase.data import atomic_masses
from tqdm.auto import tqdm

from basis.crystal import read_crystal
from basis.errors import InputError, MalformedFileError
from basis.functional import parse_functional
from basis.integrals import DEFAULT_GRID_LEVEL, Integrals, build_integrals
from basis.system import System, read_systems
from vardft.checkpoint import atomic_output
from vardft.qm9 import qm9_split

DISPLACEMENT_H = 0.06
"""Gaussian displacement width of a hydrogen atom, Å (heavier atoms: × sqrt(m_H/m))."""

CACHE_VERSION = 2
"""Bump when the content or layout of cached integrals changes (2: a SHA-256 of the arrays)."""

HEAVY_ATOMS_MAX = 6
ELEMENTS_SMALL = frozenset("HCNOF")


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train/validation split of systems, all molecules or all crystals.

    Attributes:
        name: dataset or file name.
        train: systems to train on.
        validation: held-out systems (conformations, whole molecules for g2-small,
            or displaced and strained crystals that follow the training ones).
        kind: ``"molecule"`` or ``"crystal"`` (systems with a cell).
        train_labels: optional identifiers of the training systems, saved with a run
            (``qm9``: "index SMILES"), so that anyone can check a test molecule was
            never trained on.
    """

    name: str
    train: tuple[System, ...]
    validation: tuple[System, ...]
    kind: str = "molecule"
    train_labels: tuple[str, ...] = ()


def thermal_conformations(base: System, n: int, rng: np.random.Generator, width_h: float = DISPLACEMENT_H) -> list[System]:
    """``n`` displaced copies of ``base`` (mass-weighted Gaussian displacements, Å)."""

    masses = atomic_masses[base.atomic_numbers]
    sigma = width_h * np.sqrt(atomic_masses[1] / masses)
    out = []
    for _ in range(n):
        disp = rng.standard_normal(base.positions.shape) * sigma[:, None]
        disp -= disp.mean(axis=0)
        out.append(base.replace(positions=base.positions + disp))
    return out


def displaced_copies(systems: Sequence[System], copies: int, seed: int) -> list[System]:
    """``copies`` thermally displaced copies of each of ``systems`` (:func:`thermal_conformations`
    around it; a function of ``seed`` and the systems' order only), system by system."""
    out = []
    for k, system in enumerate(systems):
        out.extend(thermal_conformations(system, copies, np.random.default_rng([seed, 2, k])))
    return out


def _g2(name: str) -> System:

    return System.from_atoms(molecule(name))


def g2_small_names() -> list[str]:
    """Closed-shell molecules of ASE's G2 set made of H, C, N, O, F with ≤ 6 heavy atoms, sorted."""

    names = []
    for name in g2.names:
        atoms = molecule(name)
        symbols = atoms.get_chemical_symbols()
        if len(symbols) < 2 or not set(symbols) <= ELEMENTS_SMALL:
            continue
        if sum(s != "H" for s in symbols) > HEAVY_ATOMS_MAX:
            continue
        if sum(atoms.get_atomic_numbers()) % 2 or abs(atoms.get_initial_magnetic_moments().sum()) > 1e-6:
            continue
        names.append(name)
    return sorted(names)


def _conformation_set(molecule_name: str) -> Callable[[int, int, int], Dataset]:
    def make(seed: int, n_train: int, n_validation: int) -> Dataset:
        base = _g2(molecule_name)
        # separate streams: the held-out frames do not depend on how many training frames are drawn
        train = thermal_conformations(base, n_train, np.random.default_rng([seed, 0]))
        validation = thermal_conformations(base, n_validation, np.random.default_rng([seed, 1]))
        return Dataset(molecule_name, tuple(train), tuple(validation))

    return make


def _g2_small(seed: int, n_train: int, n_validation: int) -> Dataset:
    """Held-out *molecules*: every 5th molecule (by sorted name, shifted by seed) is validation.

    ``n_train`` / ``n_validation`` are conformations per molecule. Each molecule
    draws from its own generator, seeded by ``(seed, k)``: the conformations of
    a smaller ``n_train`` are the first of a larger one, and the validation
    conformations do not depend on ``n_train``.
    """
    names = g2_small_names()
    offset = seed % 5
    train, val = [], []
    for k, name in enumerate(names):
        base = _g2(name)
        held_out = (k + offset) % 5 == 0
        n = n_validation if held_out else n_train
        rng = np.random.default_rng([seed, k])
        (val if held_out else train).extend(thermal_conformations(base, n, rng))
    return Dataset("g2-small", tuple(train), tuple(val))


CRYSTAL_DISPLACEMENT_ANGSTROM = 0.05
"""Standard deviation of the random atomic displacements of :func:`crystal_structures`."""

CRYSTAL_STRAIN = 0.01
"""Standard deviation of the random symmetric strain of :func:`crystal_structures`."""


def crystal_structures(
    name: str = "si",
    n: int = 4,
    seed: int = 0,
    displacement: float = CRYSTAL_DISPLACEMENT_ANGSTROM,
    strain: float = CRYSTAL_STRAIN,
) -> list[System]:
    """Displaced and strained copies of a built-in crystal, deterministic for a seed.

    The first ``n`` of a longer sequence are the same structures (one random stream).

    Args:
        name: ``"si"``, ``"diamond"`` or ``"hbn"``.
        n: number of structures.
        seed: numpy seed.
        displacement: Gaussian atomic displacements, standard deviation in Å.
        strain: symmetric strain ε with entries of this standard deviation; cell and
            positions are multiplied by (1 + ε) (in-plane only for ``hbn``).
    """
    base = read_crystal(name)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(int(n)):
        eps = rng.normal(scale=strain, size=(3, 3))
        eps = 0.5 * (eps + eps.T)
        if name.strip().lower() == "hbn":
            eps[2, :] = eps[:, 2] = 0.0
        deform = np.eye(3) + eps
        pos = base.positions @ deform + rng.normal(scale=displacement, size=base.positions.shape)
        out.append(System(base.symbols, pos, cell=base.cell @ deform))
    return out


def _crystal_set(name: str) -> Callable[[int, int, int], Dataset]:
    def make(seed: int, n_train: int, n_validation: int) -> Dataset:
        structures = crystal_structures(name, n_train + n_validation, seed=seed)
        return Dataset(name, tuple(structures[:n_train]), tuple(structures[n_train:]), kind="crystal")

    return make


QM9_OOD_MAX_HEAVY_ATOMS = 7
"""Size split ``qm9-ood`` (like QH9-stable-ood): train on QM9 molecules with at most this
many heavy atoms, hold out molecules with more (QM9's 8 and 9)."""


def _qm9(max_heavy_atoms: int | None):
    """QM9 molecules (:mod:`vardft.qm9`): a seeded split by molecule (and by size)."""
    name = "qm9" if max_heavy_atoms is None else "qm9-ood"

    def make(seed: int, n_train: int, n_validation: int) -> Dataset:
        split = qm9_split(seed, n_train, n_validation, max_heavy_atoms=max_heavy_atoms)
        return Dataset(
            name,
            tuple(m.system() for m in split.train),
            tuple(m.system() for m in split.validation),
            train_labels=tuple(f"{m.index} {m.smiles}" for m in split.train),
        )

    return make


BUILTIN_DATASETS: dict[str, tuple[Callable[[int, int, int], Dataset], int, int]] = {
    # name: (generator, default train size, default validation size)
    "water": (_conformation_set("H2O"), 128, 16),
    "ethanol": (_conformation_set("CH3CH2OH"), 48, 12),
    "g2-small": (_g2_small, 2, 1),
    "qm9": (_qm9(None), 1000, 100),
    "qm9-ood": (_qm9(QM9_OOD_MAX_HEAVY_ATOMS), 1000, 100),
    "si": (_crystal_set("si"), 16, 4),
    "diamond": (_crystal_set("diamond"), 16, 4),
    "hbn": (_crystal_set("hbn"), 16, 4),
}


def load_dataset(
    source: str,
    seed: int = 0,
    n_train: int | None = None,
    n_validation: int | None = None,
    validation_fraction: float = 0.2,
) -> Dataset:
    """A built-in dataset by name, or frames of a structure file / ASE database.

    For molecule files, the last ``validation_fraction`` of a seeded permutation of
    the frames is held out. A file whose frames have a cell is a crystal set: every
    frame (the first ``n_train``) is a training structure, none is held out.

    Raises:
        MalformedFileError: neither a built-in name nor a readable file.
        InputError: a file mixing molecules and crystals.
    """
    key = source.strip().lower() if not os.path.exists(source) else source
    if key in BUILTIN_DATASETS:
        make, nt, nv = BUILTIN_DATASETS[key]
        return make(seed, nt if n_train is None else n_train, nv if n_validation is None else n_validation)
    if not os.path.exists(source):
        raise MalformedFileError(
            f"no such file or built-in dataset: {source} (built-in: {', '.join(BUILTIN_DATASETS)})"
        )
    systems = read_systems(source)
    periodic = {s.cell is not None for s in systems}
    if len(periodic) > 1:
        raise InputError(f"{source} mixes molecules and crystals (some frames have a cell, some not)")
    if periodic == {True}:
        crystals = [read_crystal(source, index=i) for i in range(len(systems))]
        return Dataset(os.path.basename(source), tuple(crystals[:n_train] if n_train else crystals), (), kind="crystal")
    perm = np.random.default_rng(seed).permutation(len(systems))
    n_val = n_validation if n_validation is not None else int(round(validation_fraction * len(systems)))
    if len(systems) > 1:
        n_val = min(max(n_val, 1), len(systems) - 1)
    else:
        n_val = 0
    n_tr = len(systems) - n_val if n_train is None else min(n_train, len(systems) - n_val)
    train = [systems[i] for i in perm[:n_tr]]
    val = [systems[i] for i in perm[len(systems) - n_val :]]
    return Dataset(os.path.basename(source), tuple(train), tuple(val))


# ---------------------------------------------------------------- integral cache
def integral_key(system: System, xc: str, basis: str, grid_level: int) -> str:
    """Hash of everything the integrals depend on (and the cache version)."""
    payload = {
        "v": CACHE_VERSION,
        "symbols": list(system.symbols),
        "positions": np.round(system.positions, 10).tolist(),
        "charge": system.charge,
        "spin": system.spin,
        "xc": parse_functional(xc).name,
        "basis": basis.lower(),
        "grid_level": grid_level,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


_ARRAY_FIELDS = ("overlap", "hcore", "cderi", "ao", "weights", "e_nuc", "dm_guess")


def arrays_checksum(arrays: dict, fields: Sequence[str] = _ARRAY_FIELDS) -> str:
    """SHA-256 over the name, dtype, shape and bytes of each array named in ``fields``, in order."""
    h = hashlib.sha256()
    for name in fields:
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _save_integrals(path: str, ints: Integrals) -> None:


    arrays = {name: np.asarray(getattr(ints, name)) for name in _ARRAY_FIELDS}
    with atomic_output(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for name in _ARRAY_FIELDS:
                f.create_dataset(name, data=arrays[name])
            f.attrs["cache_version"] = CACHE_VERSION
            f.attrs["checksum"] = arrays_checksum(arrays)
            f.attrs["n_electrons"] = ints.n_electrons
            f.attrs["basis"] = ints.basis
            f.attrs["auxbasis"] = ints.auxbasis
            f.attrs["xc"] = ints.functional.name
            f.attrs["grid_level"] = ints.grid_level


def _load_integrals(path: str) -> Integrals | None:
    """The integrals cached in ``path``, or ``None`` when the file is from another cache
    version, unreadable, or fails its checksum (then with a warning): rebuild it."""

    try:
        with h5py.File(path, "r") as f:
            if int(f.attrs.get("cache_version", -1)) != CACHE_VERSION:
                return None
            arrays = {name: f[name][()] for name in _ARRAY_FIELDS}
            if str(f.attrs.get("checksum", "")) != arrays_checksum(arrays):
                warnings.warn(f"{path}: cached integrals fail their checksum (damaged file); rebuilding them",
                              stacklevel=3)
                return None
            return Integrals(
                **{name: jnp.asarray(a) for name, a in arrays.items()},
                n_electrons=int(f.attrs["n_electrons"]),
                basis=str(f.attrs["basis"]),
                auxbasis=str(f.attrs["auxbasis"]),
                functional=parse_functional(str(f.attrs["xc"])),
                grid_level=int(f.attrs["grid_level"]),
            )
    except (OSError, KeyError):
        return None


def default_cache_dir() -> str:
    """``$VARDFT_CACHE`` or ``~/.cache/vardft``."""
    return os.environ.get("VARDFT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vardft")


class IntegralCache:
    """Integrals on disk, one HDF5 file per (geometry, xc, basis, grid level).

    ``directory=None`` disables the disk cache (integrals are computed each time).
    ``max_bytes`` bounds the records of the ``"jax"`` backend (:mod:`vardft.stream`):
    past it they are recomputed when needed instead of being written (default:
    :meth:`record_bound`). ``memory_bytes``:
    how much of the crystals' Bloch AO records is also held in memory
    (:class:`vardft.crystal_stream.BlochStore`), and of the molecules' padded records on
    the device (:class:`vardft.stream.ResidentRecords`); ``None``, the default, is
    :data:`vardft.config.HOST_MEMORY_FRACTION` of the machine's memory (for molecules on a
    GPU, of the GPU's; for molecules less when the largest training step needs the room,
    none with several devices: :func:`vardft.tasks.resident_budget`).
    """

    def __init__(self, directory: str | None = None, max_bytes: int | None = None, memory_bytes: int | None = None):
        self.directory = directory
        self.max_bytes = max_bytes
        self.memory_bytes = memory_bytes
        self.hits = 0
        self.misses = 0

    def record_bound(self) -> int | None:
        """The bound of the ``"jax"`` backend's records: ``max_bytes``, else fixed at the
        first call (what the directory holds plus half of the free disk,
        :func:`vardft.stream.default_max_bytes`), so a run's training and held-out stores
        share one bound."""
        if self.max_bytes is None and self.directory is not None:
            from vardft.stream import default_max_bytes

            self.max_bytes = default_max_bytes(self.directory)
        return self.max_bytes

    def path(self, system: System, xc: str, basis: str, grid_level: int) -> str | None:
        if self.directory is None:
            return None
        return os.path.join(self.directory, f"{integral_key(system, xc, basis, grid_level)}.h5")

    def get(self, system: System, xc: str, basis: str, grid_level: int = DEFAULT_GRID_LEVEL,
            save: bool = True) -> Integrals:
        """The integrals of ``system``: read from the directory, else built (and written
        there unless ``save`` is False: geometries used once, such as displaced copies)."""
        path = self.path(system, xc, basis, grid_level)
        if path is not None and os.path.exists(path):
            ints = _load_integrals(path)
            if ints is not None:
                self.hits += 1
                return ints
        self.misses += 1
        ints = build_integrals(system, xc=xc, basis=basis, grid_level=grid_level)
        if path is not None and save:
            _save_integrals(path, ints)
        return ints

    def get_many(self, systems: Sequence[System], xc: str, basis: str, grid_level: int = DEFAULT_GRID_LEVEL, progress: bool = False) -> list[Integrals]:
        it = tqdm(systems, desc="integrals", unit="mol", disable=not progress, leave=False)
        return [self.get(s, xc, basis, grid_level) for s in it]


def check_dataset(dataset: Dataset) -> None:
    """Raise an InputError unless the dataset has training systems, all closed-shell and
    all of the dataset's kind (molecules without a cell, crystals with one)."""
    if not dataset.train:
        raise InputError(f"dataset {dataset.name} has no training systems")
    periodic = dataset.kind == "crystal"
    for s in dataset.train + dataset.validation:
        s.require_closed_shell()
        if s.is_periodic != periodic:
            raise InputError(f"dataset {dataset.name} mixes molecules and crystals")


# ------------------------------------------------------------------ padding and buckets
def pad_integrals(ints: Integrals, nao: int, naux: int | None = None, ngrid: int | None = None) -> Integrals:
    """Zero-pad ``ints`` to ``nao`` AOs, ``naux`` auxiliary functions and ``ngrid`` grid points.

    Padded AOs carry no density (their rows/columns of S, h, L and AO values are
    zero); padded auxiliary functions are zero rows of the DF factor L
    (nothing in J or K); padded grid points have zero AO values and zero
    weight (zero density: libxc returns zero energy density and potentials).
    The energy and Fock matrix of a padded density equal the unpadded ones.
    ``naux`` / ``ngrid`` of ``None`` keep the molecule's own.
    """

    p = nao - ints.nao
    q = 0 if naux is None else naux - ints.cderi.shape[0]
    r = 0 if ngrid is None else ngrid - ints.weights.shape[0]
    if min(p, q, r) < 0:
        raise ValueError(
            f"cannot pad integrals of shape (nao {ints.nao}, naux {ints.cderi.shape[0]}, "
            f"ngrid {ints.weights.shape[0]}) down to ({nao}, {naux}, {ngrid})"
        )
    if p == q == r == 0:
        return ints
    pad2 = lambda a: jnp.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, p), (0, p)])  # noqa: E731
    return ints.replace(
        overlap=pad2(ints.overlap),
        hcore=pad2(ints.hcore),
        cderi=jnp.pad(ints.cderi, [(0, q), (0, p), (0, p)]),
        ao=jnp.pad(ints.ao, [(0, 0), (0, r), (0, p)]),
        weights=jnp.pad(ints.weights, [(0, r)]),
        dm_guess=pad2(ints.dm_guess),
    )


def size_buckets(systems: Sequence[System], basis: str, width: int, min_size: int = 1) -> list[list[System]]:
    """Group molecules into size buckets that share one padded, compiled step.

    Molecules are keyed by their AO count rounded up to a multiple of ``width``;
    a bucket with fewer than ``min_size`` molecules joins the next larger one
    (the last such bucket joins the largest). Molecules of one composition
    always share a bucket; dataset order is kept within a bucket.

    Args:
        systems: molecules.
        basis: AO basis (PySCF name) that decides the AO counts.
        width: bucket width in AOs (> 0).
        min_size: smallest bucket (e.g. the batch size).

    Returns:
        Buckets in ascending size, each a list of systems.
    """
    if width < 1:
        raise InputError(f"bucket width must be a positive number of AOs, got {width}")
    nao_of: dict[tuple, int] = {}
    keyed: dict[int, list[System]] = {}
    for s in systems:
        comp = (s.symbols, s.charge, s.spin)
        if comp not in nao_of:
            nao_of[comp] = s.to_mole(basis).nao_nr()
        keyed.setdefault(-(-nao_of[comp] // width), []).append(s)
    buckets: list[list[System]] = []
    pending: list[System] = []
    for key in sorted(keyed):
        pending = pending + keyed[key]
        if len(pending) >= min_size:
            buckets.append(pending)
            pending = []
    if pending:
        if buckets:
            buckets[-1] = buckets[-1] + pending
        else:
            buckets.append(pending)
    position = {id(s): k for k, s in enumerate(systems)}
    return [sorted(b, key=lambda s: position[id(s)]) for b in buckets]
