"""Crystals as input: files, ASE ``Atoms``, PySCF ``Cell``, built-in structures.

A crystal is a :class:`~basis.system.System` with a cell (lattice vectors as
rows, Ångström). This module reads and checks crystals, chooses GTH
pseudopotentials, builds k-point meshes and turns a crystal into a PySCF
``pyscf.pbc.gto.Cell``. Every problem the user can cause raises a typed
:mod:`basis.errors` exception with a one-line message.

Example:
    >>> from basis.crystal import read_crystal, to_cell, make_kpts
    >>> si = read_crystal("si")
    >>> cell = to_cell(si, basis="gth-szv", pseudo="gth-pade")
    >>> make_kpts(cell, (2, 2, 2)).shape
    (8, 3)
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np
from scipy.spatial import cKDTree
from ase.build import bulk
from ase.dft.kpoints import parse_path_string
from pyscf.pbc import gto as pbcgto
from pyscf.pbc.gto import pseudo as pp

from basis.errors import BasisError, GeometryError, InputError, MalformedFileError
from basis.functional import Functional, parse_functional
from basis.system import System, check_basis, check_electrons_fit, read_systems

SI_LATTICE_ANGSTROM = 5.431
"""Conventional cubic lattice constant of silicon (room temperature)."""

DIAMOND_LATTICE_ANGSTROM = 3.567
"""Conventional cubic lattice constant of diamond."""

HBN_LATTICE_ANGSTROM = 2.504
"""In-plane lattice constant of hexagonal boron nitride."""

HBN_VACUUM_ANGSTROM = 10.0
"""Length of the out-of-plane lattice vector of the ``hbn`` monolayer cell."""

VACUUM_GAP_ANGSTROM = 5.0
"""An empty slab thicker than this along a lattice vector marks a vacuum
direction; :func:`default_kmesh` samples it with a single k-point."""

DEFAULT_KPOINTS_PER_DIRECTION = 3

MAX_LATTICE_IMAGES = 200_000
"""Largest box of lattice images, prod(2 n_i + 1) with PySCF's ``cell.nimgs``, that
:func:`to_cell` hands on. The built-in crystals need about 2,000 (Si, gth-szv:
13^3 = 2197); a degenerate cell asked PySCF for millions and crashed it."""

BUILTIN_CRYSTALS = ("si", "diamond", "hbn")

_PSEUDO_FOR_FUNCTIONAL = {
    "pbe": "gth-pbe",
    "pbesol": "gth-pbesol",
    "blyp": "gth-blyp",
    "bp86": "gth-bp",
    "olyp": "gth-olyp",
    "hcth120": "gth-hcth120",
    "hcth407": "gth-hcth407",
}


# --------------------------------------------------------------- structures
def builtin_crystal(name: str) -> System:
    """One of the built-in crystals (primitive cells).

    Args:
        name: ``"si"`` (diamond-structure silicon, a = 5.431 Å), ``"diamond"``
            (a = 3.567 Å) or ``"hbn"`` (monolayer hexagonal BN, a = 2.504 Å,
            10 Å out-of-plane lattice vector).

    Raises:
        InputError: unknown name.
    """

    key = str(name).strip().lower()
    if key == "si":
        atoms = bulk("Si", "diamond", a=SI_LATTICE_ANGSTROM)
    elif key == "diamond":
        atoms = bulk("C", "diamond", a=DIAMOND_LATTICE_ANGSTROM)
    elif key == "hbn":
        a = HBN_LATTICE_ANGSTROM
        lattice = np.array(
            [[a, 0.0, 0.0], [-0.5 * a, 0.5 * np.sqrt(3.0) * a, 0.0], [0.0, 0.0, HBN_VACUUM_ANGSTROM]]
        )
        frac = np.array([[1.0 / 3.0, 2.0 / 3.0, 0.5], [2.0 / 3.0, 1.0 / 3.0, 0.5]])
        return System(symbols=("B", "N"), positions=frac @ lattice, cell=lattice)
    else:
        raise InputError(f"unknown built-in crystal {name!r} (built-in: {', '.join(BUILTIN_CRYSTALS)})")
    return System.from_atoms(atoms)


def as_crystal(system: System) -> System:
    """Return ``system`` unchanged if it has a cell.

    Raises:
        GeometryError: the system has no cell (a molecule).
    """
    if system.cell is None:
        raise GeometryError(
            f"{system.formula} has no cell; a crystal needs lattice vectors "
            "(CIF, POSCAR, or extxyz with Lattice=)"
        )
    return system


def read_crystal(source, index: int = 0) -> System:
    """A crystal from a built-in name, a structure file or an in-memory object.

    Args:
        source: a built-in name (``si``, ``diamond``, ``hbn``); a path to a CIF,
            POSCAR/CONTCAR, extxyz-with-cell or any file ``ase.io.read``
            understands; an ``ase.Atoms`` with a cell; a PySCF ``Cell``; or a
            :class:`System` with a cell.
        index: which frame of a multi-frame file.

    Returns:
        a :class:`System` with ``cell`` set (Ångström).

    Raises:
        MalformedFileError: missing, empty or unreadable file; no such frame.
        GeometryError: no cell, near-zero volume, atoms overlapping (also
            across the cell boundary), NaN coordinates.
        UnknownElementError, ElectronCountError: bad content.
    """
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if text.strip().lower() in BUILTIN_CRYSTALS and not os.path.exists(text):
            return builtin_crystal(text)
        systems = read_systems(text)
        if not -len(systems) <= index < len(systems):
            raise MalformedFileError(f"{text}: no frame {index} ({len(systems)} frames)")
        system = systems[index]
        if system.cell is None:
            raise GeometryError(
                f"{text}: the structure has no cell; a crystal needs lattice vectors "
                "(CIF, POSCAR, or extxyz with Lattice=)"
            )
        return system
    try:
        system = System.from_any(source)
    except TypeError:
        raise InputError(f"cannot read a crystal from {type(source).__name__}") from None
    return as_crystal(system)


# ------------------------------------------------------------ pseudopotentials
def default_pseudo(functional: Functional | str) -> str:
    """GTH pseudopotential family matching the functional.

    ``gth-pade`` for LDA, ``gth-pbe`` for PBE, and ``gth-<name>`` for the other
    GGAs PySCF ships GTH parameters for (pbesol, blyp, bp86, olyp, hcth120,
    hcth407).

    Raises:
        BasisError: no GTH pseudopotential matches the functional; pass one.
        FunctionalError: unknown functional.
    """
    if isinstance(functional, str):
        functional = parse_functional(functional)
    if functional.family == "lda":
        return "gth-pade"
    key = functional.name.replace("-", "").replace(",", "")
    if functional.family == "gga" and key in _PSEUDO_FOR_FUNCTIONAL:
        return _PSEUDO_FOR_FUNCTIONAL[key]
    raise BasisError(
        f"no GTH pseudopotential matches functional {functional.name!r}; choose one with --pseudo "
        "(e.g. gth-pbe)"
    )


def check_pseudo(pseudo: str, symbols: Sequence[str]) -> None:
    """Check that PySCF has pseudopotential ``pseudo`` for each element.

    Raises:
        BasisError: unknown pseudopotential family, or one element it lacks.
    """

    if not isinstance(pseudo, str) or not pseudo.strip():
        raise BasisError("the pseudopotential name is empty")
    missing = []
    for symbol in sorted(set(symbols)):
        try:
            ok = bool(pp.load(pseudo, symbol))
        except Exception:  # PySCF raises BasisNotFoundError, KeyError, RuntimeError
            ok = False
        if not ok:
            missing.append(symbol)
    if not missing:
        return
    try:
        known = bool(pp.load(pseudo, "Si")) or bool(pp.load(pseudo, "C"))
    except Exception:
        known = False
    if not known:
        raise BasisError(f"unknown pseudopotential {pseudo!r} (PySCF GTH families: gth-pade, gth-pbe, ...)")
    raise BasisError(f"pseudopotential {pseudo!r} has no parameters for element {missing[0]}")


# ---------------------------------------------------------------- PySCF Cell
def to_cell(
    system: System,
    basis: str = "gth-szv",
    pseudo: str = "gth-pade",
    *,
    mesh: Sequence[int] | None = None,
    precision: float | None = None,
    verbose: int = 0,
):
    """Build a ``pyscf.pbc.gto.Cell`` (Ångström input) for a crystal.

    Args:
        system: a crystal (``system.cell`` set).
        basis: a basis PySCF knows for every element, e.g. ``gth-szv``, ``gth-dzvp``.
        pseudo: GTH pseudopotential family, e.g. ``gth-pade`` (LDA), ``gth-pbe``.
        mesh: FFT mesh; PySCF's default from the basis and ``precision`` if None.
        precision: PySCF ``cell.precision`` (default 1e-8).

    Returns:
        a built ``Cell`` with ``dimension = 3`` (slabs keep their vacuum).

    Raises:
        GeometryError: no cell. BasisError: unknown basis or pseudopotential, or
        one without an element. ElectronCountError: open shell or no electrons.
    """

    as_crystal(system)
    check_basis(basis, system.symbols)
    check_pseudo(pseudo, system.symbols)
    cell = pbcgto.Cell()
    cell.atom = [(s, tuple(p)) for s, p in zip(system.symbols, system.positions)]
    cell.a = np.array(system.cell)
    cell.unit = "Angstrom"
    cell.basis = basis
    cell.pseudo = pseudo
    cell.charge = system.charge
    cell.spin = system.spin
    cell.dimension = 3
    cell.verbose = verbose
    if precision is not None:
        cell.precision = float(precision)
    if mesh is not None:
        cell.mesh = np.asarray(mesh, dtype=int)
    try:
        cell.build()
    except Exception as exc:  # PySCF raises RuntimeError/ValueError for bad cells
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GeometryError(f"PySCF cannot build the cell: {first}") from None
    nimgs = np.asarray(cell.nimgs, dtype=np.int64)
    images = int(np.prod(2 * nimgs + 1))
    if images > MAX_LATTICE_IMAGES:
        raise GeometryError(
            f"the cell needs {images} lattice images ({' x '.join(str(int(2 * n + 1)) for n in nimgs)}) for "
            f"basis {basis}, more than {MAX_LATTICE_IMAGES}; the cell is too small or too sheared"
        )
    system.require_closed_shell(int(cell.nelectron))
    check_electrons_fit(system, int(cell.nelectron), int(cell.nao_nr()), basis)
    return cell


# ------------------------------------------------------------------ k-points
def check_kmesh(kmesh: Sequence[int]) -> tuple[int, int, int]:
    """Return ``kmesh`` as three positive ints.

    Raises:
        InputError: not three positive integers.
    """
    try:
        values = tuple(int(k) for k in kmesh)
        exact = all(float(k) == int(k) for k in kmesh)
    except (TypeError, ValueError):
        raise InputError(f"k-point mesh {kmesh!r} must be three positive integers") from None
    if len(values) != 3 or not exact or min(values) < 1:
        raise InputError(f"k-point mesh {tuple(kmesh)!r} must be three positive integers")
    return values  # type: ignore[return-value]


def vacuum_directions(system: System, gap: float = VACUUM_GAP_ANGSTROM) -> tuple[bool, bool, bool]:
    """For each lattice vector, whether the atoms leave an empty slab thicker than ``gap`` Å."""
    as_crystal(system)
    cell = np.asarray(system.cell)
    frac = np.mod(system.positions @ np.linalg.inv(cell), 1.0)
    recip = np.linalg.inv(cell).T
    out = []
    for d in range(3):
        f = np.sort(frac[:, d])
        gaps = np.diff(np.concatenate([f, [f[0] + 1.0]]))
        thickness = 1.0 / np.linalg.norm(recip[d])  # distance between lattice planes
        out.append(bool(gaps.max() * thickness > gap))
    return tuple(out)  # type: ignore[return-value]


def default_kmesh(system: System, n: int = DEFAULT_KPOINTS_PER_DIRECTION) -> tuple[int, int, int]:
    """``n`` k-points along each periodic direction, 1 along vacuum directions."""
    return tuple(1 if vac else n for vac in vacuum_directions(system))  # type: ignore[return-value]


def lattice_neighbours(positions: np.ndarray, lattice: np.ndarray, radius: float):
    """Every periodic image x_j + n·L within ``radius`` of x_i, for atoms i, j of the cell.

    Args:
        positions: (natom, 3) Cartesian positions; lattice: (3, 3) lattice vectors as rows;
            radius: same length unit.

    Returns:
        ``(i, j, n, distance)``: atom indices (P,), integer shifts n (P, 3) and
        |x_j + n·L − x_i| (P,), ordered by i, then j, then n lexicographically; each atom
        is its own neighbour at n = 0 (distance 0). Time and memory grow with the number of
        pairs (a KD-tree over the images near the cell), not with natom².
    """
    pos = np.asarray(positions, dtype=np.float64)
    lattice = np.asarray(lattice, dtype=np.float64)
    natom = len(pos)
    inverse = np.linalg.inv(lattice)
    home = np.floor(pos @ inverse)  # the cell each atom sits in
    wrapped = pos - home @ lattice
    # wrapped fractions differ by less than 1: |n_a| ≤ radius / (plane spacing of a) + 1
    nmax = np.ceil(radius * np.linalg.norm(inverse.T, axis=1)).astype(np.int64) + 1
    grid = np.stack(np.meshgrid(*[np.arange(-m, m + 1) for m in nmax], indexing="ij"), axis=-1).reshape(-1, 3)
    images = (wrapped[None, :, :] + (grid @ lattice)[:, None, :]).reshape(-1, 3)
    found = cKDTree(images).query_ball_point(wrapped, r=radius * (1.0 + 1e-9) + 1e-12, return_sorted=False)
    i = np.repeat(np.arange(natom), [len(f) for f in found])
    image = np.concatenate([np.asarray(f, dtype=np.int64) for f in found]) if natom else np.zeros(0, np.int64)
    j = image % natom
    n = grid[image // natom] - home[j].astype(np.int64) + home[i].astype(np.int64)
    distance = np.linalg.norm(pos[j] + n @ lattice - pos[i], axis=-1)
    keep = distance < radius
    i, j, n, distance = i[keep], j[keep], n[keep], distance[keep]
    order = np.lexsort((n[:, 2], n[:, 1], n[:, 0], j, i))
    return i[order], j[order], n[order], distance[order]


def make_kpts(cell, kmesh: Sequence[int]) -> np.ndarray:
    """Γ-centred Monkhorst–Pack mesh, (nk, 3) Cartesian k-points in 1/Bohr.

    The same points as ``cell.make_kpts(kmesh)`` (fractions n/N_d, n = 0..N_d-1).
    """
    return np.asarray(cell.make_kpts(check_kmesh(kmesh)), dtype=np.float64)


def scaled_kpts(cell, kpts: np.ndarray) -> np.ndarray:
    """Cartesian k-points (1/Bohr) → fractions of the reciprocal lattice vectors."""
    return np.asarray(cell.get_scaled_kpts(np.asarray(kpts, dtype=np.float64)), dtype=np.float64)


TRIM_TOLERANCE = 1e-9
"""|2k − G| (in fractions of the reciprocal lattice vectors) below which k counts as
time-reversal invariant."""


def time_reversal_invariant(frac: np.ndarray) -> np.ndarray:
    """(nk,) bool: is each k-point (fractions of the reciprocal vectors, (nk, 3)) equal to
    −k up to a reciprocal lattice vector (2k ∈ G)? There every phase e^{ik·T} is ±1, so
    Bloch AOs, and H(k) and S(k) from real H(T), S(T), are real."""
    twice = 2.0 * np.asarray(frac, dtype=np.float64).reshape(-1, 3)
    return np.all(np.abs(twice - np.round(twice)) < TRIM_TOLERANCE, axis=1)


def absolute_kpts(cell, frac: np.ndarray) -> np.ndarray:
    """Fractions of the reciprocal lattice vectors → Cartesian k-points (1/Bohr)."""
    return np.asarray(cell.get_abs_kpts(np.asarray(frac, dtype=np.float64)), dtype=np.float64)


# -------------------------------------------------------------- band paths
DEFAULT_PATH_POINTS = 60


@dataclasses.dataclass(frozen=True)
class BandPath:
    """k-points along straight segments between high-symmetry points.

    Attributes:
        kpts_frac: (nk, 3) k-points in units of the reciprocal lattice vectors
            of ``system.cell``.
        x: (nk,) distance along the path in Cartesian k, 1/Å (as ASE's
            linear axis); no advance across a path break.
        labels: high-symmetry points in path order, ASE's letters (``G`` = Γ).
        label_indices: index into ``kpts_frac`` of each label.
        path: the path string (segments separated by commas).
    """

    kpts_frac: np.ndarray
    x: np.ndarray
    labels: tuple[str, ...]
    label_indices: tuple[int, ...]
    path: str


def band_path(system: System, path: str | None = None, npoints: int = DEFAULT_PATH_POINTS) -> BandPath:
    """High-symmetry path through the Brillouin zone of a crystal (ASE's ``cell.bandpath``).

    Args:
        system: a crystal. Directions with vacuum (:func:`vacuum_directions`)
            are treated as non-periodic, so a monolayer gets a 2D path.
        path: e.g. ``"GXWKGL"``, segments separated by commas (``"GX,KL"``);
            ASE's standard path for the lattice if None.
        npoints: total number of k-points along the path.

    Raises:
        InputError: a point the lattice does not have, or fewer than 2 points.
    """

    as_crystal(system)
    if path is not None and not str(path).replace(",", "").strip():
        raise InputError(f"the band path {path!r} is empty; give high-symmetry points, e.g. GXWKGL")
    if int(npoints) < 2:
        raise InputError(f"a band path needs at least 2 points, not {npoints}")
    pbc = [not v for v in vacuum_directions(system)]
    atoms = system.to_atoms()
    atoms.pbc = pbc
    try:
        bp = atoms.cell.bandpath(path=path, npoints=int(npoints), pbc=pbc)
    except (KeyError, ValueError) as exc:
        special = atoms.cell.bandpath(npoints=0, pbc=pbc).special_points
        bad = exc.args[0] if exc.args else path
        raise InputError(
            f"band path {path!r}: unknown high-symmetry point {bad!r} for this lattice "
            f"(known: {', '.join(sorted(special))})"
        ) from None
    except Exception as exc:  # ASE cannot classify a degenerate lattice
        raise InputError(f"cannot build a band path for this cell ({exc})") from None
    kpts = np.asarray(bp.kpts, dtype=np.float64)
    labels, indices, breaks = [], [], []
    start = 0
    for segment in parse_path_string(bp.path):
        if indices:
            breaks.append(start)
        for name in segment:
            target = np.asarray(bp.special_points[name])
            hits = np.flatnonzero(np.all(np.abs(kpts[start:] - target) < 1e-8, axis=1))
            if hits.size == 0:
                raise InputError(f"band path {bp.path!r}: point {name} is not on the sampled path")
            start += int(hits[0])
            labels.append(name)
            indices.append(start)
        start += 1
    step = 2.0 * np.pi * np.linalg.norm(np.diff(kpts @ np.linalg.inv(np.asarray(system.cell)).T, axis=0), axis=1)
    step[np.asarray(breaks, dtype=int) - 1] = 0.0
    x = np.concatenate([[0.0], np.cumsum(step)])
    return BandPath(kpts, x, tuple(labels), tuple(indices), bp.path)


__all__ = [
    "lattice_neighbours",
    "BUILTIN_CRYSTALS",
    "BandPath",
    "absolute_kpts",
    "as_crystal",
    "band_path",
    "builtin_crystal",
    "check_kmesh",
    "check_pseudo",
    "default_kmesh",
    "default_pseudo",
    "make_kpts",
    "read_crystal",
    "scaled_kpts",
    "to_cell",
    "vacuum_directions",
]


SUPERCELL_MATCH_ANGSTROM = 0.5
"""Largest distance between a supercell atom and the primitive-cell site it is matched to
(:func:`supercell_map`): displaced supercells (thermal displacements of ~0.05–0.1 Å) map,
a vacancy or a substituted atom does not."""


@dataclasses.dataclass(frozen=True)
class SupercellMap:
    """How the atoms of a supercell sit on the sites of a primitive cell.

    Attributes:
        matrix: (3, 3) int M with supercell lattice = M @ primitive lattice (rows);
            ``size = |det M|`` primitive cells per supercell.
        site: (natom_s,) int, the primitive atom each supercell atom sits on.
        translation: (natom_s, 3) int, the primitive lattice vector (in primitive lattice
            units) from that atom's primitive position to the supercell atom's site.
    """

    matrix: np.ndarray
    site: np.ndarray
    translation: np.ndarray

    @property
    def size(self) -> int:
        return int(round(abs(np.linalg.det(self.matrix))))


def supercell_map(primitive: System, supercell: System, tolerance: float = SUPERCELL_MATCH_ANGSTROM) -> SupercellMap:
    """Match each atom of ``supercell`` to a site x_a + n·L of ``primitive`` (same element).

    Args:
        primitive, supercell: crystals (positions and cells in Å); the supercell lattice must
            be an integer combination of the primitive one.
        tolerance: largest atom-to-site distance, Å.

    Raises:
        GeometryError: a molecule, lattices that are not integer multiples (to 1e-3 Å per
            vector: a strained supercell), an atom farther than ``tolerance`` from every site
            of its element, or two atoms on one site (each site of the supercell must be
            taken once: no vacancies or substitutions).
    """
    prim, sup = as_crystal(primitive), as_crystal(supercell)
    lp, ls = np.asarray(prim.cell, dtype=np.float64), np.asarray(sup.cell, dtype=np.float64)
    matrix = np.rint(ls @ np.linalg.inv(lp)).astype(np.int64)
    size = int(round(abs(np.linalg.det(matrix))))
    if size == 0 or np.abs(matrix @ lp - ls).max() > 1e-3:
        raise GeometryError(f"the cell of {sup.formula} is not an integer multiple of the cell of {prim.formula} "
                            "(unfolding needs a supercell of the primitive cell, unstrained)")
    if len(sup.symbols) != size * len(prim.symbols):
        raise GeometryError(f"{sup.formula} has {len(sup.symbols)} atoms; a {size}-fold supercell of {prim.formula} "
                            f"has {size * len(prim.symbols)}")
    frac_p = np.asarray(prim.positions) @ np.linalg.inv(lp)
    frac = np.asarray(sup.positions) @ np.linalg.inv(lp)
    site = np.empty(len(sup.symbols), np.int64)
    translation = np.empty((len(sup.symbols), 3), np.int64)
    for i, (symbol, f) in enumerate(zip(sup.symbols, frac)):
        candidates = [a for a, s in enumerate(prim.symbols) if s == symbol]
        shifts = np.rint(f[None, :] - frac_p[candidates])
        distance = np.linalg.norm((f[None, :] - frac_p[candidates] - shifts) @ lp, axis=1)
        best = int(np.argmin(distance)) if candidates else -1
        if best < 0 or distance[best] > tolerance:
            raise GeometryError(f"atom {i} ({symbol}) of {sup.formula} is farther than {tolerance} Å from every "
                                f"{symbol} site of {prim.formula}")
        site[i], translation[i] = candidates[best], shifts[best].astype(np.int64)
    # a site taken twice: same primitive atom, translations equal modulo the supercell lattice
    reduced = np.floor(translation @ np.linalg.inv(matrix) + 1e-9)  # supercell lattice units
    home = np.rint(translation - reduced @ matrix).astype(np.int64)
    keys = {(int(a), *map(int, n)) for a, n in zip(site, home)}
    if len(keys) != len(site):
        raise GeometryError(f"two atoms of {sup.formula} sit on one site of {prim.formula} (a vacancy or an "
                            "interstitial: the supercell must hold every site once)")
    return SupercellMap(matrix=matrix, site=site, translation=translation)
