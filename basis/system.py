"""Molecules and crystals as checked, immutable systems.

A :class:`System` holds what defines an electronic-structure problem apart
from the method: chemical symbols, Cartesian positions in Ångström, total
charge, spin (2S) and, for crystals, the lattice vectors in Ångström.
Constructors check the input and raise typed :mod:`basis.errors` exceptions.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from typing import Iterable, Sequence

import ase.io
import numpy as np
from ase import Atoms
from pyscf import gto
from pyscf.data import elements as _elements
from pyscf.data.nist import BOHR

from basis.errors import (
    BasisError,
    ElectronCountError,
    GeometryError,
    MalformedFileError,
    UnknownElementError,
)

MIN_DISTANCE_ANGSTROM = 0.1
"""Atoms closer than this are rejected as overlapping."""

MIN_CELL_VOLUME_ANGSTROM3 = 1e-3
"""Cells with a smaller volume are rejected as degenerate."""

MAX_COORDINATE_ANGSTROM = 1e4
"""Largest |x|, |y|, |z| of an atom and length of a lattice vector. A micrometre is
a hundred times the size of the largest molecule anyone computes with Gaussian
orbitals; beyond it a coordinate is a unit or typing error (1e300 overflowed to
NaN energies), and float64 still resolves 1e-12 Å at this size."""

MIN_PLANE_SPACING_ANGSTROM = 0.5
"""Smallest distance between neighbouring lattice planes of a cell (volume / area of
the face spanned by the other two vectors). Real crystals have spacings of 1–3 Å
per primitive cell; a cell thinner than this is degenerate or absurdly sheared, and
the number of lattice images PySCF sums over grows as 1/spacing (a Si cell with a
0.001 Å vector asked for 3 million images and crashed PySCF)."""

XYZ_EXTENSIONS = (".xyz", ".extxyz")
"""Files whose atom-count lines :func:`read_systems` checks before ASE reads them."""

_KNOWN_SYMBOLS = {s.lower(): s for s in _elements.ELEMENTS[1:]}


def canonical_symbol(symbol: str) -> str:
    """Return the element symbol with standard capitalisation.

    Raises:
        UnknownElementError: if ``symbol`` is not a chemical element.
    """
    key = str(symbol).strip().lower()
    if key not in _KNOWN_SYMBOLS:
        raise UnknownElementError(f"unknown element {symbol!r}")
    return _KNOWN_SYMBOLS[key]


def atomic_number(symbol: str) -> int:
    """Nuclear charge Z of an element symbol."""
    return _elements.charge(canonical_symbol(symbol))


@dataclasses.dataclass(frozen=True)
class System:
    """A checked molecule or crystal.

    Attributes:
        symbols: element symbols, one per atom, standard capitalisation.
        positions: (natom, 3) Cartesian coordinates, Ångström.
        charge: total charge (electrons removed).
        spin: number of unpaired electrons, 2S.
        cell: (3, 3) lattice vectors as rows, Ångström, or ``None`` for a molecule.
    """

    symbols: tuple[str, ...]
    positions: np.ndarray
    charge: int = 0
    spin: int = 0
    cell: np.ndarray | None = None

    def __post_init__(self):
        symbols = tuple(canonical_symbol(s) for s in self.symbols)
        if not symbols:
            raise MalformedFileError("the structure has no atoms")
        positions = np.asarray(self.positions, dtype=np.float64)
        if positions.shape != (len(symbols), 3):
            raise GeometryError(
                f"positions have shape {positions.shape}, expected ({len(symbols)}, 3)"
            )
        if not np.all(np.isfinite(positions)):
            raise GeometryError("coordinates contain NaN or infinity")
        if np.abs(positions).max() > MAX_COORDINATE_ANGSTROM:
            i = int(np.argmax(np.abs(positions).max(axis=1)))
            raise GeometryError(
                f"atom {i} ({symbols[i]}) has a coordinate of {np.abs(positions[i]).max():.3g} Å; "
                f"coordinates are limited to ±{MAX_COORDINATE_ANGSTROM:g} Å (Ångström expected)"
            )
        cell = None
        if self.cell is not None:
            cell = np.asarray(self.cell, dtype=np.float64)
            if cell.shape != (3, 3) or not np.all(np.isfinite(cell)):
                raise GeometryError("the cell must be a finite 3x3 matrix of lattice vectors")
            _check_cell(cell)
        charge = _integer(self.charge, "charge")
        spin = _integer(self.spin, "spin (2S, the number of unpaired electrons)")
        if spin < 0:
            raise ElectronCountError(f"spin {spin} is negative; spin is 2S, the number of unpaired electrons (0 or more)")
        positions = positions.copy()
        positions.flags.writeable = False
        if cell is not None:
            cell = cell.copy()
            cell.flags.writeable = False
        object.__setattr__(self, "symbols", symbols)
        object.__setattr__(self, "positions", positions)
        object.__setattr__(self, "cell", cell)
        object.__setattr__(self, "charge", charge)
        object.__setattr__(self, "spin", spin)
        self._check_distances()
        if self.n_electrons_all < 0:
            raise ElectronCountError(
                f"{self.formula} has {self.n_electrons_all + charge} electrons when neutral; "
                f"charge {charge} would leave {self.n_electrons_all}"
            )
        if spin > self.n_electrons_all:
            raise ElectronCountError(
                f"{self.formula} with charge {charge} has {self.n_electrons_all} electrons, "
                f"fewer than spin {spin} unpaired ones"
            )
        if (self.n_electrons_all - self.spin) % 2 != 0:
            raise ElectronCountError(
                f"{self.formula} with charge {self.charge} has {self.n_electrons_all} "
                f"electrons, which does not fit spin {self.spin}; restricted closed-shell "
                "calculations need an even electron count"
            )

    # ----------------------------------------------------------------- checks
    def _check_distances(self) -> None:
        d = self.positions[:, None, :] - self.positions[None, :, :]
        if self.cell is not None:
            frac = d @ np.linalg.inv(self.cell)
            d = (frac - np.round(frac)) @ self.cell
        r = np.linalg.norm(d, axis=-1)
        np.fill_diagonal(r, np.inf)
        if r.size and r.min() < MIN_DISTANCE_ANGSTROM:
            i, j = np.unravel_index(np.argmin(r), r.shape)
            direct = float(np.linalg.norm(self.positions[i] - self.positions[j]))
            across = self.cell is not None and direct - r[i, j] > MIN_DISTANCE_ANGSTROM
            where = " (across the cell boundary)" if across else ""
            raise GeometryError(
                f"atoms {i} ({self.symbols[i]}) and {j} ({self.symbols[j]}) are "
                f"{r[i, j]:.3f} Å apart{where}; closer than {MIN_DISTANCE_ANGSTROM} Å"
            )

    def require_closed_shell(self, n_electrons: int | None = None) -> None:
        """Raise :class:`ElectronCountError` unless the system is closed shell."""
        n = self.n_electrons_all if n_electrons is None else n_electrons
        if self.spin != 0 or n % 2 != 0:
            raise ElectronCountError(
                f"{self.formula} with charge {self.charge} has {n} electrons and spin "
                f"{self.spin}; only restricted closed-shell systems (even electron "
                "count, spin 0) are supported"
            )
        if n <= 0:
            raise ElectronCountError(f"{self.formula} with charge {self.charge} has no electrons")

    # ------------------------------------------------------------- properties
    @property
    def natom(self) -> int:
        return len(self.symbols)

    @property
    def atomic_numbers(self) -> np.ndarray:
        """(natom,) nuclear charges."""
        return np.array([atomic_number(s) for s in self.symbols], dtype=np.int64)

    @property
    def n_electrons_all(self) -> int:
        """All-electron count, sum(Z) - charge."""
        return int(self.atomic_numbers.sum()) - self.charge

    @property
    def is_periodic(self) -> bool:
        return self.cell is not None

    @property
    def formula(self) -> str:
        counts: dict[str, int] = {}
        for s in self.symbols:
            counts[s] = counts.get(s, 0) + 1
        return "".join(f"{s}{n if n > 1 else ''}" for s, n in counts.items())

    def atom_string(self) -> str:
        """PySCF ``atom=`` string in Ångström."""
        return "; ".join(
            f"{s} {x:.12f} {y:.12f} {z:.12f}" for s, (x, y, z) in zip(self.symbols, self.positions)
        )

    def replace(self, **changes) -> "System":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------ conversions
    def to_mole(self, basis: str, **kwargs):
        """Build a ``pyscf.gto.Mole`` (Ångström input) for a molecule.

        Raises:
            BasisError: unknown basis, or no functions for one of the elements.
        """

        if self.is_periodic:
            raise GeometryError("this system has a cell; use to_cell for crystals")
        check_basis(basis, self.symbols)
        mol = gto.Mole()
        mol.atom = [(s, tuple(p)) for s, p in zip(self.symbols, self.positions)]
        mol.unit = "Angstrom"
        mol.basis = basis
        mol.charge = self.charge
        mol.spin = self.spin
        mol.verbose = kwargs.pop("verbose", 0)
        for k, v in kwargs.items():
            setattr(mol, k, v)
        mol.build()
        check_electrons_fit(self, int(mol.nelectron), int(mol.nao_nr()), basis)
        return mol

    def to_atoms(self):
        """An ``ase.Atoms`` copy of this system."""

        if self.cell is None:
            return Atoms(symbols=list(self.symbols), positions=np.array(self.positions))
        return Atoms(
            symbols=list(self.symbols),
            positions=np.array(self.positions),
            cell=np.array(self.cell),
            pbc=True,
        )

    @classmethod
    def from_atoms(cls, atoms, charge: int | None = None, spin: int | None = None) -> "System":
        """From ``ase.Atoms``; a cell is kept only when any direction is periodic.

        Charge and spin default to ``atoms.info['charge']`` / ``['spin']`` or 0.
        """
        info = getattr(atoms, "info", {}) or {}
        if charge is None:
            charge = info.get("charge", 0)
        if spin is None:
            spin = info.get("spin", 0)
        cell = np.array(atoms.cell[:]) if any(atoms.pbc) else None
        return cls(
            symbols=tuple(atoms.get_chemical_symbols()),
            positions=np.array(atoms.get_positions()),
            charge=charge,
            spin=spin,
            cell=cell,
        )

    @classmethod
    def from_mole(cls, mol) -> "System":
        """From a built ``pyscf.gto.Mole`` (positions converted Bohr → Ångström)."""

        symbols = tuple(mol.atom_pure_symbol(i) for i in range(mol.natm))
        return cls(
            symbols=symbols,
            positions=np.asarray(mol.atom_coords(unit="Bohr")) * BOHR,
            charge=mol.charge,
            spin=mol.spin,
        )

    @classmethod
    def from_any(cls, obj) -> "System":
        """Coerce a System, ``ase.Atoms`` or PySCF ``Mole``/``Cell`` into a System."""
        if isinstance(obj, System):
            return obj
        if hasattr(obj, "get_chemical_symbols"):
            return cls.from_atoms(obj)
        if hasattr(obj, "atom_coords"):
            if hasattr(obj, "lattice_vectors"):
                symbols = tuple(obj.atom_pure_symbol(i) for i in range(obj.natm))
                return cls(
                    symbols=symbols,
                    positions=np.asarray(obj.atom_coords(unit="Bohr")) * BOHR,
                    charge=obj.charge,
                    spin=obj.spin,
                    cell=np.asarray(obj.lattice_vectors()) * BOHR,
                )
            return cls.from_mole(obj)
        raise TypeError(f"cannot make a System from {type(obj).__name__}")


def _integer(value, what: str) -> int:
    """``value`` as an int when it is a whole number (1, 1.0, numpy ints).

    Raises:
        ElectronCountError: a fraction, NaN, text or anything else.
    """
    if isinstance(value, (bool, np.bool_)):
        raise ElectronCountError(f"the {what} must be a whole number, not {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ElectronCountError(f"the {what} must be a whole number, not {value!r}") from None
    if not np.isfinite(number) or number != int(number):
        raise ElectronCountError(f"the {what} must be a whole number, not {value!r}")
    return int(number)


def _check_cell(cell: np.ndarray) -> None:
    """Lattice vectors (rows, Å): bounded lengths, non-zero volume, planes not too close.

    Raises:
        GeometryError: naming the bound that failed.
    """
    lengths = np.linalg.norm(cell, axis=1)
    if lengths.max() > MAX_COORDINATE_ANGSTROM:
        raise GeometryError(
            f"lattice vector {int(np.argmax(lengths)) + 1} is {lengths.max():.3g} Å long; "
            f"limited to {MAX_COORDINATE_ANGSTROM:g} Å"
        )
    volume = abs(float(np.linalg.det(cell)))
    if volume < MIN_CELL_VOLUME_ANGSTROM3:
        raise GeometryError(f"the cell volume {volume:.3g} Å^3 is near zero")
    # spacing of the planes spanned by the other two vectors: V / |a_j x a_k|
    areas = np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
    spacing = volume / areas
    d = int(np.argmin(spacing))
    if spacing[d] < MIN_PLANE_SPACING_ANGSTROM:
        raise GeometryError(
            f"the cell is degenerate: its lattice planes along vector {d + 1} are {spacing[d]:.3g} Å "
            f"apart (volume {volume:.3g} Å^3); at least {MIN_PLANE_SPACING_ANGSTROM} Å is needed"
        )


def check_electrons_fit(system: "System", n_electrons: int, nao: int, basis: str) -> None:
    """Raise :class:`ElectronCountError` when ``n_electrons`` cannot be placed in ``nao``
    spatial orbitals (two each), e.g. water with charge -6 in STO-3G (16 in 7)."""
    if n_electrons > 2 * nao:
        raise ElectronCountError(
            f"{system.formula} with charge {system.charge} has {n_electrons} electrons, more than "
            f"the {2 * nao} that fit in the {nao} orbitals of basis {basis}"
        )


def _check_xyz_counts(path: str) -> None:
    """Check every atom-count line of an xyz/extxyz file against the lines that follow,
    before ASE reads it (a count of 999999999 made ASE run for minutes).

    Raises:
        MalformedFileError: naming the line, the count and the lines available.
    """
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    while lines and not lines[-1].strip():
        lines.pop()
    i = 0
    while i < len(lines):
        fields = lines[i].split()
        if not fields:  # ASE stops reading at a blank line where a frame would start
            break
        try:
            count = int(fields[0])
        except ValueError:
            count = None
        if count is None:
            shown = lines[i].decode(errors="replace").strip()[:40]
            raise MalformedFileError(f"{path} line {i + 1}: expected the number of atoms, found {shown!r}")
        if count < 0:
            raise MalformedFileError(f"{path} line {i + 1}: the number of atoms {count} is negative")
        available = len(lines) - i - 2
        if count > available:
            raise MalformedFileError(
                f"{path} line {i + 1}: says {count} atoms, but only {max(available, 0)} lines follow"
            )
        i += count + 2


@functools.lru_cache(maxsize=512)
def _has_shells(basis: str, symbol: str) -> bool:
    """Whether PySCF has shells of ``basis`` for one element (parsed once per pair:
    prediction checks the basis of every molecule)."""
    return _load_shells(basis, symbol) is not None


def _load_shells(basis: str, symbol: str):
    """PySCF's shells of ``basis`` for one element, or ``None`` when unavailable."""

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            shells = gto.basis.load(basis, symbol)
    except Exception:  # PySCF raises several types for unknown names
        return None
    return shells or None


def check_basis(basis: str, symbols: Iterable[str]) -> None:
    """Check that PySCF knows ``basis`` and that it has functions for each element.

    Raises:
        BasisError: unknown basis name, or the first element it does not cover.
    """
    if not isinstance(basis, str) or not basis.strip():
        raise BasisError("the basis name is empty")
    symbols = sorted(set(symbols))
    missing = [s for s in symbols if not _has_shells(basis, s)]
    if not missing:
        return
    if len(missing) == len(symbols) and not any(_has_shells(basis, p) for p in ("H", "C", "Si")):
        raise BasisError(f"unknown basis {basis!r}: PySCF has no basis set of that name")
    raise BasisError(f"basis {basis!r} has no functions for element {missing[0]}")


def read_systems(path: str | os.PathLike, charge: int | None = None, spin: int | None = None) -> list[System]:
    """Read every frame of a structure file (xyz, extxyz, CIF, POSCAR, ASE db, ...).

    Args:
        path: file readable by ``ase.io.read``; multi-frame files give several systems.
        charge, spin: override the per-frame values (default: ``info`` or 0).

    Returns:
        list of :class:`System`, one per frame.

    Raises:
        MalformedFileError: missing, empty or unparsable file.
        UnknownElementError, GeometryError, ElectronCountError: bad content.
    """

    path = os.fspath(path)
    if not os.path.exists(path):
        raise MalformedFileError(f"no such file: {path}")
    if os.path.isdir(path):
        raise MalformedFileError(f"{path} is a directory, not a structure file")
    if os.path.getsize(path) == 0:
        raise MalformedFileError(f"{path} is empty")
    if path.lower().endswith(XYZ_EXTENSIONS):
        _check_xyz_counts(path)
    try:
        frames = ase.io.read(path, index=":")
    except KeyError as exc:
        raise UnknownElementError(f"{path}: unknown element {exc.args[0]!r}") from None
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MalformedFileError(f"{path}: cannot read structure ({first})") from None
    if not isinstance(frames, list):
        frames = [frames]
    if not frames:
        raise MalformedFileError(f"{path}: no structures found")
    systems = []
    for k, atoms in enumerate(frames):
        try:
            systems.append(System.from_atoms(atoms, charge=charge, spin=spin))
        except (GeometryError, ElectronCountError, MalformedFileError) as exc:
            raise type(exc)(f"{path}, frame {k}: {exc}") from None
    return systems


def molecules_equal(a: System, b: System, atol: float = 1e-10) -> bool:
    """True when two systems have the same symbols, charge, spin and positions."""
    return (
        a.symbols == b.symbols
        and a.charge == b.charge
        and a.spin == b.spin
        and np.allclose(a.positions, b.positions, atol=atol, rtol=0)
    )


def stack_positions(systems: Sequence[System]) -> np.ndarray:
    """(nframe, natom, 3) positions of systems with identical symbols."""
    return np.stack([s.positions for s in systems])
