"""Crystal input: files, objects, built-ins, pseudopotentials, k-meshes, band paths, errors."""

import numpy as np
import pytest

from basis.crystal import (
    absolute_kpts,
    band_path,
    builtin_crystal,
    check_kmesh,
    default_kmesh,
    default_pseudo,
    make_kpts,
    read_crystal,
    scaled_kpts,
    to_cell,
    vacuum_directions,
)
from basis.errors import BasisError, FunctionalError, GeometryError, InputError, MalformedFileError
from basis.system import System

COORD_TOL = 1e-8  # Å, after a round trip through a text file
KPT_TOL = 1e-12  # fractional k-point coordinates


def test_builtin_crystals():
    si = builtin_crystal("si")
    assert si.symbols == ("Si", "Si")
    assert abs(abs(np.linalg.det(si.cell)) - 5.431**3 / 4) < 1e-9
    assert builtin_crystal("diamond").symbols == ("C", "C")
    hbn = builtin_crystal("hbn")
    assert hbn.symbols == ("B", "N")
    assert vacuum_directions(hbn) == (False, False, True)
    assert default_kmesh(hbn) == (3, 3, 1)
    assert default_kmesh(si) == (3, 3, 3)
    # B–N bond length of hexagonal BN
    d = np.linalg.norm(hbn.positions[0] - hbn.positions[1])
    assert abs(d - 2.504 / np.sqrt(3)) < 1e-9
    with pytest.raises(InputError):
        builtin_crystal("graphite")


@pytest.mark.parametrize("fmt,name", [("cif", "si.cif"), ("vasp", "POSCAR"), ("extxyz", "si.extxyz")])
def test_read_files_round_trip(tmp_path, fmt, name):
    import ase.io

    si = builtin_crystal("si")
    path = tmp_path / name
    ase.io.write(path, si.to_atoms(), format=fmt)
    back = read_crystal(path)
    assert back.symbols == si.symbols
    # CIF keeps lengths and angles, not the orientation: compare the metric and
    # fractional coordinates (modulo lattice vectors)
    assert np.allclose(back.cell @ back.cell.T, si.cell @ si.cell.T, atol=COORD_TOL)
    frac = back.positions @ np.linalg.inv(back.cell) - si.positions @ np.linalg.inv(si.cell)
    assert np.allclose(frac - np.round(frac), 0.0, atol=COORD_TOL)


def test_read_objects():
    si = builtin_crystal("si")
    assert read_crystal(si.to_atoms()).symbols == ("Si", "Si")
    cell = to_cell(si, "gth-szv", "gth-pade")
    back = read_crystal(cell)
    assert np.allclose(back.cell, si.cell, atol=COORD_TOL)
    assert np.allclose(back.positions, si.positions, atol=COORD_TOL)


def test_to_cell():
    cell = to_cell(builtin_crystal("si"), "gth-szv", "gth-pade")
    assert cell.nao_nr() == 8
    assert cell.nelectron == 8  # 4 valence electrons per Si
    assert cell.dimension == 3
    cell = to_cell(builtin_crystal("hbn"), "gth-dzvp", "gth-pbe", mesh=(9, 9, 31))
    assert tuple(cell.mesh) == (9, 9, 31)


def test_default_pseudo():
    assert default_pseudo("lda,vwn") == "gth-pade"
    assert default_pseudo("pbe") == "gth-pbe"
    with pytest.raises(BasisError):
        default_pseudo("b3lyp")
    with pytest.raises(FunctionalError):
        default_pseudo("not-a-functional")


def test_kmesh():
    cell = to_cell(builtin_crystal("si"), "gth-szv", "gth-pade")
    kpts = make_kpts(cell, (2, 2, 2))
    assert kpts.shape == (8, 3)
    assert np.allclose(kpts, cell.make_kpts([2, 2, 2]))
    frac = scaled_kpts(cell, kpts)
    assert np.allclose(np.sort(frac[:, 0]), [0] * 4 + [0.5] * 4, atol=KPT_TOL)
    assert np.allclose(absolute_kpts(cell, frac), kpts, atol=KPT_TOL)
    for bad in [(0, 1, 1), (2, 2), (1.5, 1, 1), ("a", 1, 1)]:
        with pytest.raises(InputError):
            check_kmesh(bad)


def test_band_path_labels_and_breaks():
    si = builtin_crystal("si")
    bp = band_path(si, "GX,KL", npoints=20)
    assert bp.labels == ("G", "X", "K", "L")
    special = si.to_atoms().cell.bandpath(npoints=0).special_points
    for label, i in zip(bp.labels, bp.label_indices):
        assert np.allclose(bp.kpts_frac[i], special[label], atol=KPT_TOL)
    i_x, i_k = bp.label_indices[1:3]
    assert i_k == i_x + 1 and bp.x[i_k] == bp.x[i_x]  # no advance across the break
    assert np.all(np.diff(bp.x) >= 0)
    default = band_path(si, None, npoints=30)
    assert default.labels[0] == "G" and len(default.kpts_frac) == 30
    assert band_path(builtin_crystal("hbn"), None, npoints=12).labels == ("G", "M", "K", "G")
    with pytest.raises(InputError, match="unknown high-symmetry point"):
        band_path(si, "GQ", npoints=10)


def test_bad_crystals(tmp_path):
    xyz = tmp_path / "water.xyz"
    xyz.write_text("3\n\nO 0 0 0\nH 0 0.76 0.59\nH 0 -0.76 0.59\n")
    with pytest.raises(GeometryError, match="no cell"):
        read_crystal(xyz)
    with pytest.raises(GeometryError, match="no cell"):
        read_crystal(System(symbols=("He",), positions=[[0, 0, 0]]))
    with pytest.raises(GeometryError, match="volume"):
        System(symbols=("Si",), positions=[[0, 0, 0]], cell=[[3, 0, 0], [0, 3, 0], [0, 0, 1e-6]])
    with pytest.raises(GeometryError, match="across the cell boundary"):
        System(symbols=("Si", "Si"), positions=[[0.02, 0, 0], [2.97, 0, 0]], cell=np.eye(3) * 3.0)
    with pytest.raises(MalformedFileError):
        read_crystal(tmp_path / "missing.cif")
    empty = tmp_path / "empty.cif"
    empty.write_text("")
    with pytest.raises(MalformedFileError):
        read_crystal(empty)
    junk = tmp_path / "junk.cif"
    junk.write_text("this is not a CIF file\n_cell_length_a x\n")
    with pytest.raises(InputError):
        read_crystal(junk)
    si = builtin_crystal("si")
    with pytest.raises(BasisError, match="unknown basis"):
        to_cell(si, "gth-nonsense", "gth-pade")
    with pytest.raises(BasisError, match="pseudopotential"):
        to_cell(si, "gth-szv", "gth-nonsense")


def test_lattice_neighbours_equal_a_brute_force_search():
    """Every image within the radius, once, in (i, j, n) order, for atoms outside the home
    cell of a skewed lattice (against a direct search over a wide block of shifts)."""
    from basis.crystal import lattice_neighbours

    rng = np.random.default_rng(0)
    lattice = np.array([[4.0, 0.3, 0.0], [1.9, 3.5, 0.2], [0.4, -0.7, 6.0]])
    pos = rng.uniform(-1.0, 2.0, (5, 3)) @ lattice  # fractions outside [0, 1)
    radius = 7.5
    i, j, n, d = lattice_neighbours(pos, lattice, radius)
    span = np.arange(-8, 9)
    shifts = np.stack(np.meshgrid(span, span, span, indexing="ij"), axis=-1).reshape(-1, 3)
    want = []
    for a in range(len(pos)):
        for b in range(len(pos)):
            dist = np.linalg.norm(pos[b] + shifts @ lattice - pos[a], axis=1)
            want += [(a, b, *s) for s in shifts[dist < radius]]
    got = [(a, b, *s) for a, b, s in zip(i.tolist(), j.tolist(), n.tolist())]
    assert got == sorted(want)
    np.testing.assert_allclose(d, np.linalg.norm(pos[j] + n @ lattice - pos[i], axis=1))
