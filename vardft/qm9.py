"""The built-in ``qm9`` dataset: QM9's molecules as the ``qm9pack`` wheel ships them.

``qm9pack`` (PyPI, MIT) carries QM9 (Ramakrishnan et al., Sci. Data 1, 140022 (2014):
130,831 molecules of C, H, N, O, F with up to 9 heavy atoms, B3LYP/6-31G(2df,p)
geometries) as CSV files inside the wheel. They are read here directly (the package's own
loader needs pandas and the deprecated ``pkg_resources``); nothing is downloaded.

Splits are deterministic for a seed and by molecule: a seeded permutation of QM9's
indices gives the held-out molecules first and the training molecules after them, so a
smaller ``n_train`` trains on a prefix of a larger one and the held-out set does not
depend on ``n_train``. The size split (``max_heavy_atoms``) trains on molecules with at
most that many heavy atoms and holds out larger ones, as QH9-stable-ood does. Molecules
with an odd number of electrons (none in QM9's closed-shell set, but the check is kept)
are skipped and counted.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import importlib.util
import json
import os
import re

import numpy as np

from basis.errors import InputError, MalformedFileError
from basis.system import System

QM9_FILES = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
"""The CSV files of ``qm9pack`` that hold the molecules (in QM9's index order)."""

_Z = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}

_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


@dataclasses.dataclass(frozen=True)
class QM9Molecule:
    """One QM9 entry: its index (1..133885), SMILES, elements and geometry (``xyz``: the CSV's
    coordinate text, Å, parsed by :attr:`positions` only for the molecules used)."""

    index: int
    smiles: str
    symbols: tuple[str, ...]
    xyz: str = dataclasses.field(repr=False)

    @property
    def positions(self) -> np.ndarray:
        """``(n_atoms, 3)`` coordinates, Å. The CSV's text is a JSON-like nested list whose
        numbers may end in a bare point (``0.``, ``1.``: five linear molecules such as index 4,
        C#C), which JSON refuses; each number is read as a float instead."""
        numbers = [float(x) for x in _NUMBER.findall(self.xyz)]
        if len(numbers) != 3 * len(self.symbols):
            raise MalformedFileError(f"qm9 molecule {self.index}: {len(numbers)} coordinates for "
                                     f"{len(self.symbols)} atoms")
        return np.asarray(numbers, dtype=np.float64).reshape(-1, 3)

    @property
    def heavy_atoms(self) -> int:
        return sum(s != "H" for s in self.symbols)

    @property
    def n_electrons(self) -> int:
        return sum(_Z[s] for s in self.symbols)

    def system(self) -> System:
        return System(self.symbols, self.positions)


def qm9_directory() -> str:
    """The directory of ``qm9pack``'s CSV files, found without importing the package.

    Raises:
        InputError: ``qm9pack`` is not installed.
    """
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the qm9 dataset needs the qm9pack package: pip install qm9pack")
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


@functools.lru_cache(maxsize=1)
def read_qm9() -> tuple[QM9Molecule, ...]:
    """Every QM9 molecule, in index order, parsed from the CSVs once per process (~5 s;
    geometries stay text until :attr:`QM9Molecule.positions` is read)."""
    directory = qm9_directory()
    out = []
    for name in QM9_FILES:
        with open(os.path.join(directory, name), newline="") as fh:
            for row in csv.DictReader(fh):
                symbols = tuple(json.loads(row["Elements"].replace("'", '"')))
                out.append(QM9Molecule(int(row["Index"]), row["SMILES"], symbols, row["XYZ_Ang"]))
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class QM9Split:
    """Held-out and training molecules of a split, and how many were skipped (odd electrons)."""

    train: tuple[QM9Molecule, ...]
    validation: tuple[QM9Molecule, ...]
    skipped_odd: int


def qm9_split(seed: int = 0, n_train: int = 1000, n_validation: int = 100,
              max_heavy_atoms: int | None = None) -> QM9Split:
    """A deterministic split of QM9 by molecule.

    Args:
        seed: permutation seed.
        n_train: training molecules (a prefix of the permuted training pool).
        n_validation: held-out molecules.
        max_heavy_atoms: size split: train only on molecules with at most this many heavy
            atoms; the held-out molecules are then drawn from the larger ones.
    """
    if n_train < 1 or n_validation < 0:
        raise InputError(f"qm9: need n_train >= 1 and n_validation >= 0, got {n_train} and {n_validation}")
    molecules = read_qm9()
    kept = [m for m in molecules if m.n_electrons % 2 == 0]
    skipped = len(molecules) - len(kept)
    order = np.random.default_rng(seed).permutation(len(kept))
    permuted = [kept[i] for i in order]
    if max_heavy_atoms is None:
        validation, pool = permuted[:n_validation], permuted[n_validation:]
    else:
        validation = [m for m in permuted if m.heavy_atoms > max_heavy_atoms][:n_validation]
        pool = [m for m in permuted if m.heavy_atoms <= max_heavy_atoms]
    if n_train > len(pool):
        raise InputError(f"qm9: {n_train} training molecules asked, {len(pool)} available")
    return QM9Split(tuple(pool[:n_train]), tuple(validation), skipped)
