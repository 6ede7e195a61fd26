"""Built-in structures by name, made from what installed packages ship.

Molecules: any name of ASE's G2 collection (``H2O``, ``CH3CH2OH``, ``C6H6``,
...) and the aliases below. Crystals (``si``, ``diamond``, ``hbn``) come from
:mod:`basis.crystal`. Datasets for training (many conformations) are in
:mod:`vardft.data`, not here.
"""

from __future__ import annotations

from ase.build import molecule
from ase.collections import g2

from basis.crystal import builtin_crystal
from basis.system import System

MOLECULE_ALIASES = {
    "water": "H2O",
    "methane": "CH4",
    "ammonia": "NH3",
    "ethanol": "CH3CH2OH",
    "benzene": "C6H6",
    "co2": "CO2",
}
CRYSTALS = ("si", "diamond", "hbn")


def _g2_name(name: str) -> str | None:

    name = MOLECULE_ALIASES.get(name.lower(), name)
    return name if name in g2.names else None


def is_builtin(name: str) -> bool:
    return name.lower() in CRYSTALS or _g2_name(name) is not None


def load(name: str) -> list[System]:
    """The built-in structure ``name`` as a one-element list of systems."""
    if name.lower() in CRYSTALS:
        return [builtin_crystal(name.lower())]

    g2name = _g2_name(name)
    if g2name is None:
        raise KeyError(name)
    return [System.from_atoms(molecule(g2name))]
