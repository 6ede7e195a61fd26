"""Input limits at the reader (issue 15): every bad structure is a typed error, at once.

Atom counts are checked against the file before ASE reads it, coordinates and lattice
vectors are bounded, degenerate cells and cells needing too many lattice images are
refused before PySCF uses them, and charge and spin are whole numbers that fit the
electrons.
"""

import time

import numpy as np
import pytest

from basis.crystal import MAX_LATTICE_IMAGES, band_path, read_crystal, to_cell
from basis.errors import ElectronCountError, GeometryError, InputError, MalformedFileError
from basis.system import (
    MAX_COORDINATE_ANGSTROM,
    MIN_PLANE_SPACING_ANGSTROM,
    System,
    read_systems,
)

WATER = (("O", "H", "H"), [[0.0, 0.0, 0.0], [0.0, 0.0, 0.96], [0.93, 0.0, -0.24]])
WATER_XYZ = "3\nwater\nO 0.0 0.0 0.0\nH 0.0 0.0 0.96\nH 0.93 0.0 -0.24\n"

READ_SECONDS = 10.0
"""A malformed count must be refused at once; ASE took more than 300 s."""


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ------------------------------------------------------------ xyz atom counts
@pytest.mark.parametrize(
    "text, match",
    [
        ("999999999\nwater\nO 0 0 0\nH 0 0 0.96\nH 0.93 0 -0.24\n", r"line 1: says 999999999 atoms, but only 3 lines follow"),
        (WATER_XYZ + "5\nsecond\nO 0 0 0\n", r"line 6: says 5 atoms, but only 1 lines follow"),
        ("three\nwater\nO 0 0 0\n", r"line 1: expected the number of atoms"),
        ("-3\nwater\nO 0 0 0\n", r"line 1: the number of atoms -3 is negative"),
    ],
)
def test_xyz_count_disagreeing_with_the_file(tmp_path, text, match):
    path = _write(tmp_path, "bad.xyz", text)
    start = time.perf_counter()
    with pytest.raises(MalformedFileError, match=match):
        read_systems(path)
    assert time.perf_counter() - start < READ_SECONDS


def test_xyz_with_trailing_blank_lines_still_reads(tmp_path):
    path = _write(tmp_path, "two.xyz", WATER_XYZ + WATER_XYZ + "\n\n")
    assert len(read_systems(path)) == 2


# ----------------------------------------------------------------- coordinates
@pytest.mark.parametrize("x", [1e300, -2 * MAX_COORDINATE_ANGSTROM])
def test_coordinates_are_bounded(x):
    positions = np.array(WATER[1])
    positions[1, 2] = x
    with pytest.raises(GeometryError, match=r"atom 1 \(H\) has a coordinate of .* limited to"):
        System(WATER[0], positions)


def test_coordinates_bounded_in_a_file(tmp_path):
    path = _write(tmp_path, "far.xyz", "3\nwater\nO 0 0 0\nH 0 0 1e300\nH 0.93 0 -0.24\n")
    with pytest.raises(GeometryError, match="frame 0: atom 1"):
        read_systems(path)


# ----------------------------------------------------------------------- cells
def _si_with_third_vector(vector):
    si = read_crystal("si")
    cell = np.array(si.cell)
    cell[2] = vector
    return System(si.symbols, si.positions @ np.linalg.inv(si.cell) @ cell, cell=cell)


def test_degenerate_cell_is_refused_before_pyscf():
    # volume 0.0074 Å^3 passed the volume check and crashed PySCF (3 million images)
    with pytest.raises(GeometryError, match=r"degenerate: its lattice planes along vector \d are"):
        _si_with_third_vector([0.001, 0.0, 0.0])


def test_sheared_but_valid_cell_passes():
    si = read_crystal("si")
    cell = np.array(si.cell)
    cell[2] = cell[2] + cell[0]  # same lattice, another cell
    System(si.symbols, si.positions, cell=cell)


def test_lattice_vector_length_is_bounded():
    si = read_crystal("si")
    cell = np.array(si.cell)
    cell[2] *= 1e5
    with pytest.raises(GeometryError, match="lattice vector 3 is"):
        System(si.symbols, si.positions, cell=cell)


def test_lattice_images_are_bounded(monkeypatch):
    import basis.crystal

    monkeypatch.setattr(basis.crystal, "MAX_LATTICE_IMAGES", 100)
    with pytest.raises(GeometryError, match=r"lattice images \(13 x 13 x 13\)"):
        to_cell(read_crystal("si"), basis="gth-szv", pseudo="gth-pade")
    assert MAX_LATTICE_IMAGES > 13**3


def test_plane_spacing_constant_is_documented_bound():
    # a cell just above the bound is accepted
    cell = np.diag([5.0, 5.0, 1.01 * MIN_PLANE_SPACING_ANGSTROM])
    System(("H", "H"), [[0.0, 0.0, 0.0], [0.74, 0.0, 0.0]], cell=cell)


def test_empty_band_path():
    with pytest.raises(InputError, match="band path '' is empty"):
        band_path(read_crystal("si"), "")
    with pytest.raises(InputError, match="is empty"):
        band_path(read_crystal("si"), " , ")


# ----------------------------------------------------------------- charge, spin
@pytest.mark.parametrize("charge", [0.5, "one", float("nan")])
def test_charge_must_be_a_whole_number(charge):
    with pytest.raises(ElectronCountError, match="charge must be a whole number"):
        System(*WATER, charge=charge)


def test_whole_numbers_of_other_types_are_accepted():
    assert System(*WATER, charge=np.int64(2)).charge == 2
    assert System(*WATER, charge=2.0).charge == 2


def test_negative_spin():
    with pytest.raises(ElectronCountError, match="spin -2 is negative"):
        System(*WATER, spin=-2)


def test_charge_beyond_the_electrons():
    with pytest.raises(ElectronCountError, match="charge 12 would leave -2"):
        System(*WATER, charge=12)
    with pytest.raises(ElectronCountError, match="fewer than spin 4"):
        System(("H", "H"), [[0, 0, 0], [0, 0, 0.74]], spin=4)


def test_fractional_charge_in_a_file(tmp_path):
    path = _write(tmp_path, "half.xyz", "3\ncharge=0.5\nO 0 0 0\nH 0 0 0.96\nH 0.93 0 -0.24\n")
    with pytest.raises(ElectronCountError, match="frame 0: the charge must be a whole number"):
        read_systems(path)


def test_electrons_that_do_not_fit_the_basis():
    # water with charge -6: 16 electrons, 7 STO-3G orbitals
    with pytest.raises(ElectronCountError, match="16 electrons, more than the 14 that fit in the 7 orbitals of basis sto-3g"):
        System(*WATER, charge=-6).to_mole("sto-3g")


def test_overlap_inside_the_cell_is_not_called_across_the_boundary():
    cell = np.eye(3) * 6.0
    with pytest.raises(GeometryError) as err:
        System(("H", "H"), [[1.0, 1.0, 1.0], [1.0, 1.0, 1.05]], cell=cell)
    assert "across the cell boundary" not in str(err.value)
    with pytest.raises(GeometryError, match="across the cell boundary"):
        System(("H", "H"), [[0.01, 1.0, 1.0], [5.98, 1.0, 1.0]], cell=cell)
