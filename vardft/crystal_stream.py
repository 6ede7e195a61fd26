"""Bloch AO values of training crystals, loaded per batch: memory that does not grow with the cells.

A crystal's Bloch AO values on its FFT mesh (nk × nderiv × ngrid × nao complex128, at the
training k-points and at the half-shifted ones) are almost all of its training data:
0.33 GB per 2-atom Si cell at gth-szv, 1.1 GB at gth-dzvp, 5.6 GB per hBN cell. Everything
else (S(k), h(k), orthogonalizers, baselines, the graph) is a few MB and stays in memory.

With a cache directory, :class:`BlochStore` keeps each cell's Bloch AOs in one HDF5 file
there (atomic, checksummed, version-checked, bounded like the molecular records of
:mod:`vardft.stream`: past the bound or the disk reserve they are recomputed when
needed), and :class:`CrystalSet` reads only the cells of the batch asked for, so the
training process holds the current and the next batch's Bloch AOs whatever the number of
cells. Without a directory the store keeps every cell's arrays in memory (the old
behaviour, for tests and small sets).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from basis.system import System
from vardft.stream import RecordStore, ResidentRecords, read_arrays, write_arrays

BLOCH_VERSION = 1
"""Bump when the content or layout of a Bloch record file changes."""

AO_FIELD = "ao"
"""Bloch AOs at the training k-points, (nk, nderiv, ngrid, nao) complex128."""

OFFMESH_AO_FIELD = "offmesh_ao"
"""Bloch AOs at the half-shifted k-points, (nq, nderiv, ngrid, nao) complex128 (only
with off-mesh self-consistency)."""


@dataclasses.dataclass(frozen=True)
class BlochSettings:
    """What a crystal's Bloch AOs depend on besides its geometry (static, hashable)."""

    xc: str
    basis: str
    pseudo: str
    mesh: tuple[int, int, int]
    kmesh: tuple[int, int, int]
    offmesh: bool

    def key(self, system: System) -> str:
        """Hash of the cell (species, positions, lattice), these settings and :data:`BLOCH_VERSION`."""
        payload = {
            "v": BLOCH_VERSION,
            "symbols": list(system.symbols),
            "positions": np.round(np.asarray(system.positions), 10).tolist(),
            "cell": np.round(np.asarray(system.cell), 10).tolist(),
            "settings": [self.xc.lower(), self.basis.lower(), self.pseudo.lower(), list(self.mesh),
                         list(self.kmesh), self.offmesh],
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


@dataclasses.dataclass
class BlochRecord:
    """Bloch AO arrays of one crystal (numpy): ``arrays`` maps :data:`AO_FIELD` (and
    :data:`OFFMESH_AO_FIELD`) to (nk, nderiv, ngrid, nao) complex128."""

    arrays: dict

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())


def _fields(arrays) -> tuple[str, ...]:
    return (AO_FIELD,) + ((OFFMESH_AO_FIELD,) if OFFMESH_AO_FIELD in arrays else ())


def save_bloch_record(path: str, record: BlochRecord) -> None:
    """Write ``record`` atomically (temporary file + rename) with its checksum."""
    write_arrays(path, record.arrays, _fields(record.arrays), ("bloch_version", BLOCH_VERSION))


def load_bloch_record(path: str, verify: bool = True) -> BlochRecord | None:
    """The record in ``path``; ``None`` if missing, of another version, unreadable or
    damaged (then with a warning): it is recomputed."""
    found = read_arrays(path, _fields, ("bloch_version", BLOCH_VERSION), verify, "Bloch AOs")
    return None if found is None else BlochRecord(found[0])


class BlochStore(RecordStore):
    """Bloch records of crystals on disk (``directory``, files ``bloch-<key>.h5``) or in
    memory (``None``), with the size bound and disk reserve of :class:`vardft.stream.RecordStore`.

    With a directory, records are also held in memory (as device arrays) while they add up to
    at most ``memory_bytes``: a set that fits is never read from disk after it is prepared
    (reading a batch competes with the step for the cores: 1.69 against 1.08 s per step for
    16 Si gth-szv cells); beyond the budget the others are read per batch. Memory is bounded
    by the budget, not by the number of cells.
    """

    prefix = "bloch"

    def __init__(self, directory: str | None, settings, max_bytes: int | None = None, memory_bytes: int = 0):
        super().__init__(directory, settings, max_bytes)
        self.resident = ResidentRecords(memory_bytes)  # used with a directory

    def _hold(self, system: System, record: BlochRecord) -> BlochRecord:
        """``record``, moved to the device and held in memory if the budget has room."""
        arrays = self.resident.offer(self.settings.key(system), record.arrays)
        return record if arrays is record.arrays else BlochRecord(arrays)

    def lookup(self, system: System) -> BlochRecord | None:
        if self.directory is not None:
            held = self.resident.get(self.settings.key(system))
            if held is not None:
                return BlochRecord(held)
        record = super().lookup(system)
        if record is not None and self.directory is not None:
            record = self._hold(system, record)
        return record

    def keep(self, system: System, record: BlochRecord) -> bool:
        kept = super().keep(system, record)
        if self.directory is not None:
            self._hold(system, record)
        return kept

    def write_file(self, path: str, record: BlochRecord) -> None:
        save_bloch_record(path, record)

    def read_file(self, path: str, verify: bool) -> BlochRecord | None:
        return load_bloch_record(path, verify=verify)

    def sizes(self, system: System):
        raise NotImplementedError("Bloch records have no padded sizes")


def gather_rows(tree, idx):
    """Rows ``idx`` of every array of ``tree`` (stacked structures: a batch of them)."""
    return jax.tree.map(lambda a: a[idx], tree)


@dataclasses.dataclass
class CrystalSet:
    """Crystals of one training set: their arrays without Bloch AOs, and a store of those.

    ``take(idx)`` returns :class:`vardft.tasks.CrystalArrays` of cells ``idx`` with the
    Bloch AOs of exactly those cells filled in, read from ``store`` or recomputed
    (``rebuild(system)``) when the store had no room for them.

    Attributes:
        systems: the crystals.
        arrays: their stacked arrays, ``ints.ao`` (and ``offmesh.ao``) ``None``.
        store: where the Bloch AOs are.
        rebuild: recomputes one crystal's :class:`BlochRecord`.
    """

    systems: tuple[System, ...]
    arrays: Any
    store: BlochStore
    rebuild: Callable[[System], BlochRecord]

    def __len__(self) -> int:
        return len(self.systems)

    def records(self, idx: Sequence[int]) -> list[BlochRecord]:
        """Bloch records of cells ``idx`` (each distinct cell read or rebuilt once)."""
        return self.store.fetch(self.systems, idx, lambda missing: [self.rebuild(self.systems[i]) for i in missing])

    def take(self, idx):
        """The stacked arrays of cells ``idx`` (a batch, rows in the order of ``idx``)."""
        idx = [int(i) for i in np.asarray(idx)]
        arrays = gather_rows(self.arrays, jnp.asarray(idx, dtype=jnp.int32))
        records = self.records(idx)

        def stacked(field):  # each record moved once, stacked by XLA (half the time of np.stack + asarray)
            return jnp.stack([jax.device_put(r.arrays[field]) for r in records])

        ints = arrays.ints.replace(ao=stacked(AO_FIELD))
        offmesh = arrays.offmesh
        if offmesh is not None:
            offmesh = offmesh.replace(ao=stacked(OFFMESH_AO_FIELD))
        return arrays.replace(ints=ints, offmesh=offmesh)
