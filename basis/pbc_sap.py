"""A crystal baseline Hamiltonian built atom by atom: H_base(R) and S(R) at a cost linear in the atoms.

The baseline is the Kohn–Sham matrix of the superposition of atomic densities (SAD),

    H_base = T + V_nl + V_loc + v_H[ρ] + v_xc[ρ],   ρ = Σ_A ρ_A,

with ρ_A PySCF's minao guess of the isolated pseudo-atom in the run's basis (spherical), GTH
pseudopotentials (V_loc local, V_nl separable projectors) and the run's LDA/GGA functional.
It is what PySCF's own Fock build gives for the block-diagonal atomic density matrix (the
tests compare the two), but built without any whole-cell object — no FFT mesh, no Bloch AOs:

- T, S and the projectors are analytic two-centre integrals between an atom and its
  neighbours (PySCF molecular integrals on small clusters of atoms);
- V_loc + v_H is the sum of the atoms' *neutral* electrostatic potentials u_A = V_loc,A +
  v_H[ρ_A] (short-ranged: the atom is neutral), from radial tables;
- v_xc[ρ] is evaluated from the superposed density at the points of each atom's own
  quadrature grid, each grid weighted by a smooth partition of space
  (:func:`partition_function`), so each atom contributes the integrals over its share of
  space against the functions of the atoms that reach it.

A block H(i, j, T) therefore depends only on the atoms around i and j: a supercell of a
perfect crystal has the primitive cell's blocks to round-off (the folding check of issue 13),
and the cost grows linearly with the number of atoms. The one global number is the constant
that puts the average potential on PySCF's convention (:func:`electrostatic_offset`, which
depends on the atoms per volume only).

Conventions: O(i, j, n)_μν = ⟨φ_μ^i(r − x_i) | O | φ_ν^j(r − x_j − n·L)⟩ with L the lattice
vectors as rows (Bohr), μ, ν in PySCF's AO order within each atom; O(k) = Σ_n e^{ik·T_n} O(n)
is PySCF's Bloch convention (:func:`basis.pbc_integrals.real_space_integrals`).

Truncation (documented approximations, measured in ``tests/basis/test_pbc_sap.py``):
pairs of atoms whose most diffuse primitives overlap by less than :data:`PAIR_TOLERANCE` get
no block; an atom's grid integrates the functions of atoms whose most diffuse primitive
reaches :data:`AO_TOLERANCE` on it. Against PySCF on silicon (gth-szv, PBE): S, T and V_nl
to 1e-8, the electrostatic potential to 2e-5 and v_xc to 1e-4 Hartree (largest element).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import numpy as np
from pyscf import gto
from pyscf import scf as molscf
from pyscf.dft import gen_grid, libxc, radi
from scipy.interpolate import CubicSpline
from scipy.spatial import cKDTree
from scipy.special import erf, gamma

from basis.crystal import as_crystal, check_pseudo, lattice_neighbours
from basis.errors import InputError
from basis.functional import parse_functional
from basis.system import System, check_basis
from basis.units import BOHR_ANGSTROM

ATOM_GRID = (40, 146)
"""(radial, angular) points of each atom's quadrature grid (Treutler radii, Lebedev), with
fewer angular points near the nucleus (:data:`ANGULAR_PRUNING`). Pseudo-atoms have no cusp:
on Si (gth-szv, PBE) this grid gives H_base within 3e-5 Hartree of a (100, 434) unpruned
grid, as does the 4× larger (60, 194) unpruned one."""

ANGULAR_PRUNING = gen_grid.treutler_prune
"""PySCF's rule for the angular grid of each radial shell (Treutler–Ahlrichs: small near the
nucleus)."""

GRID_RADIUS_BOHR = 7.0
"""Quadrature points farther than this from their atom are dropped (its Hirshfeld share of
the density there is negligible in a solid; in vacuum the density is)."""

DENSITY_TOLERANCE = 1e-10
"""An atom's density (electrons/Bohr³) and neutral electrostatic potential (Hartree) are
taken as zero beyond the radius where both fall below this (:attr:`AtomTables.radius`;
Si gth-szv: 13 Bohr)."""

PARTITION_POWER = 10.0
"""Exponent p of the partition of space, f(r) = r^−p (:func:`partition_function`)."""

WEIGHT_CUTOFF = 1e-8
"""Quadrature points whose partitioned weight is below this (Bohr³) are dropped."""

PAIR_TOLERANCE = 1e-9
"""Overlap of the most diffuse primitives below which a pair of atoms gets no block."""

AO_TOLERANCE = 1e-4
"""Value of the most diffuse primitive on a centre's grid below which the centre's
quadrature leaves that atom's functions out."""

_RADIAL_GRID = np.geomspace(1e-4, 40.0, 4000)
"""Bohr; the radial tables of the atomic density and potential."""


@dataclasses.dataclass(frozen=True)
class AtomTables:
    """Radial tables of one pseudo-atom (spherical), cubic splines in r (Bohr).

    Attributes:
        density: ρ_A(r), electrons/Bohr³ (its derivative gives ∇ρ).
        electrostatic: V_loc^GTH(r) + v_H[ρ_A](r), Hartree — the potential of the neutral
            pseudo-atom without exchange–correlation; it vanishes outside the atom.
    """

    symbol: str
    density: CubicSpline
    electrostatic: CubicSpline
    second_moment: float
    """∫ r² ρ_A(r) d³r, Bohr² × electrons."""
    radius: float
    """Bohr; beyond it the density and potential are below :data:`DENSITY_TOLERANCE` (zero in the tables)."""

    @property
    def potential_integral(self) -> float:
        """∫ (v_H[ρ_A] − Z_A/r) d³r = −(2π/3) ∫ r² ρ_A d³r (Hartree Bohr³): how much the
        neutral atom's potential integrates to beyond the ion's point-charge potential."""
        return -2.0 * math.pi / 3.0 * self.second_moment


def gth_local_potential(pseudo_params, r: np.ndarray) -> np.ndarray:
    """The GTH local potential V_loc(r) (Hartree) of PySCF's parameter list for one element."""
    z_ion = float(sum(pseudo_params[0]))
    r_loc = float(pseudo_params[1])
    coeffs = list(pseudo_params[3]) if pseudo_params[2] > 0 else []
    x = r / r_loc
    poly = sum(c * x ** (2 * i) for i, c in enumerate(coeffs)) if coeffs else 0.0
    return -z_ion * erf(x / math.sqrt(2.0)) / r + np.exp(-0.5 * x * x) * poly


def _atom(symbol: str, basis: str, pseudo: str) -> gto.Mole:
    return gto.M(atom=[(symbol, (0.0, 0.0, 0.0))], basis=basis, pseudo=pseudo, spin=None, verbose=0, unit="Bohr")


def atom_density_matrix(symbol: str, basis: str, pseudo: str) -> np.ndarray:
    """PySCF's minao guess of the isolated pseudo-atom in ``basis`` (nao, nao): spherical,
    each shell's electrons spread evenly over its m components."""
    dm = molscf.hf.init_guess_by_minao(_atom(symbol, basis, pseudo))
    return dm[0] + dm[1] if dm.ndim == 3 else dm


@functools.lru_cache(maxsize=None)
def atom_tables(symbol: str, basis: str, pseudo: str) -> AtomTables:
    """Radial density and neutral electrostatic potential of one pseudo-atom (cached)."""
    mol = _atom(symbol, basis, pseudo)
    dm = atom_density_matrix(symbol, basis, pseudo)
    r = _RADIAL_GRID
    direction = np.array([1.0, 2.0, 3.0]) / math.sqrt(14.0)  # any direction: ρ is spherical
    ao = mol.eval_gto("GTOval_sph", r[:, None] * direction)
    rho = np.einsum("pi,ij,pj->p", ao, dm, ao)
    inside = CubicSpline(r, 4.0 * math.pi * r * r * rho).antiderivative()(r)  # electrons within r
    beyond = CubicSpline(r, 4.0 * math.pi * r * rho).antiderivative()(r)
    v_hartree = inside / r + (beyond[-1] - beyond)
    u = gth_local_potential(mol._pseudo[mol.atom_pure_symbol(0)], r) + v_hartree
    small = (np.abs(rho) < DENSITY_TOLERANCE) & (np.abs(u) < DENSITY_TOLERANCE)
    radius = float(r[np.nonzero(~small)[0][-1] + 1])
    rho, u = np.where(r > radius, 0.0, rho), np.where(r > radius, 0.0, u)
    second = float(CubicSpline(r, 4.0 * math.pi * r**4 * rho).integrate(r[0], r[-1]))
    return AtomTables(
        symbol=mol.atom_pure_symbol(0), density=CubicSpline(r, rho), electrostatic=CubicSpline(r, u),
        second_moment=second, radius=radius,
    )


def electrostatic_offset(symbols: Sequence[str], volume: float, tables: dict) -> float:
    """Constant (Hartree) to add to the superposed neutral-atom potential so that its cell
    average follows PySCF's convention for periodic systems (the G = 0 Coulomb terms of the
    Hartree and ionic potentials dropped, the non-Coulomb part of the local pseudopotential
    kept): −Σ_A ∫ (v_H[ρ_A] − Z_A/r) d³r / V. It depends on the atoms per volume only, so a
    supercell has its primitive cell's offset."""
    return -sum(tables[s].potential_integral for s in symbols) / volume


# --------------------------------------------------------------- the crystal
@dataclasses.dataclass(frozen=True)
class LatticeBlocks:
    """S(n) and H_base(n) of a crystal as atom-pair blocks (numpy, Hartree, Bohr).

    Attributes:
        pairs: (P, 2) int atoms (i, j) of the cell.
        shifts: (P, 3) int cell shifts n of atom j (translation T = n · lattice).
        overlap: (P, m, m) blocks ⟨φ^i|φ^j(· − T)⟩, m the largest AO count of an atom;
            rows/columns beyond an atom's AO count are zero.
        hamiltonian: (P, m, m) blocks of H_base, same layout.
        ao_offsets: (natom + 1,) first AO of each atom in PySCF's order (and nao).
        lattice: (3, 3) Bohr, rows.
    """

    pairs: np.ndarray
    shifts: np.ndarray
    overlap: np.ndarray
    hamiltonian: np.ndarray
    ao_offsets: np.ndarray
    lattice: np.ndarray

    @property
    def nao(self) -> int:
        return int(self.ao_offsets[-1])

    def plus(self, pairs: np.ndarray, shifts: np.ndarray, blocks: np.ndarray) -> "LatticeBlocks":
        """These blocks with ``blocks`` (P', m', m', m' ≤ m) added to H at pairs (i, j, n);
        pairs not present yet are appended (with zero overlap)."""
        natom = len(self.ao_offsets) - 1
        lookup = _PairLookup(self.pairs, self.shifts, natom)
        where = lookup.find(pairs[:, 0], pairs[:, 1], shifts)
        new = where < 0
        H = np.concatenate([self.hamiltonian, np.zeros((int(new.sum()),) + self.hamiltonian.shape[1:])])
        S = np.concatenate([self.overlap, np.zeros((int(new.sum()),) + self.overlap.shape[1:])])
        where[new] = len(self.pairs) + np.arange(int(new.sum()))
        m = blocks.shape[1]
        np.add.at(H, where, np.pad(blocks, ((0, 0), (0, H.shape[1] - m), (0, H.shape[2] - m))))
        return dataclasses.replace(
            self, pairs=np.concatenate([self.pairs, pairs[new]]), shifts=np.concatenate([self.shifts, shifts[new]]),
            overlap=S, hamiltonian=H,
        )

    def bloch(self, kpts: np.ndarray, which: str = "hamiltonian") -> np.ndarray:
        """Dense O(k) = Σ_n e^{ik·T_n} O(n), (nk, nao, nao) complex128, at Cartesian ``kpts`` (1/Bohr)."""
        blocks = getattr(self, which)
        kpts = np.asarray(kpts, dtype=np.float64).reshape(-1, 3)
        phase = np.exp(1j * (kpts @ (self.shifts @ self.lattice).T))  # (nk, P)
        flat, mask = self._scatter_index
        out = np.empty((len(kpts), self.nao * self.nao), dtype=np.complex128)
        for q in range(len(kpts)):
            values = (phase[q][:, None, None] * blocks)[mask]
            out[q] = np.bincount(flat, values.real, minlength=self.nao**2)
            out[q] += 1j * np.bincount(flat, values.imag, minlength=self.nao**2)
        return out.reshape(len(kpts), self.nao, self.nao)

    def bloch_pair(self, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(H(k), S(k))`` dense (nao, nao) complex128 at one Cartesian k-point (1/Bohr),
        sharing the phases and the scatter (what a band solver needs per k-point)."""
        phase = np.exp(1j * (self.shifts @ self.lattice @ np.asarray(k, dtype=np.float64).reshape(3)))
        flat, mask = self._scatter_index
        out = []
        for blocks in (self.hamiltonian, self.overlap):
            values = (phase[:, None, None] * blocks)[mask]
            matrix = np.bincount(flat, values.real, minlength=self.nao**2) + 1j * np.bincount(
                flat, values.imag, minlength=self.nao**2
            )
            out.append(matrix.reshape(self.nao, self.nao))
        return out[0], out[1]

    def bloch_pair_sparse(self, k: np.ndarray):
        """``(H(k), S(k))`` as scipy CSR matrices (nao, nao) complex128 at one Cartesian
        k-point (1/Bohr): memory linear in the atoms (an atom's neighbours, not all atoms)."""
        import scipy.sparse as sp

        phase = np.exp(1j * (self.shifts @ self.lattice @ np.asarray(k, dtype=np.float64).reshape(3)))
        flat, mask = self._scatter_index
        rows, cols = np.divmod(flat, self.nao)
        return tuple(
            sp.csr_matrix(((phase[:, None, None] * blocks)[mask], (rows, cols)), shape=(self.nao, self.nao))
            for blocks in (self.hamiltonian, self.overlap)
        )

    @functools.cached_property
    def _scatter_index(self) -> tuple[np.ndarray, np.ndarray]:
        """Flat AO-matrix index of every real element of the padded blocks, and their mask."""
        m = self.overlap.shape[1]
        sizes = np.diff(self.ao_offsets)
        slot = np.arange(m)
        rows = self.ao_offsets[self.pairs[:, 0]][:, None] + slot
        cols = self.ao_offsets[self.pairs[:, 1]][:, None] + slot
        mask = (slot < sizes[self.pairs[:, 0]][:, None])[:, :, None] & (slot < sizes[self.pairs[:, 1]][:, None])[:, None, :]
        return (rows[:, :, None] * self.nao + cols[:, None, :])[mask], mask



class _PairLookup:
    """Row index of the pair (i, j, n) in a pair list, or −1 (vectorised)."""

    def __init__(self, pairs: np.ndarray, shifts: np.ndarray, natom: int):
        self.natom = natom
        self.span = int(np.abs(shifts).max()) * 2 + 1 if len(shifts) else 1
        keys = self._keys(pairs[:, 0], pairs[:, 1], shifts)
        self.order = np.argsort(keys)
        self.sorted = keys[self.order]

    def _keys(self, i, j, n) -> np.ndarray:
        half = self.span // 2
        n = np.asarray(n, dtype=np.int64) + half
        inside = np.all((n >= 0) & (n < self.span), axis=-1)
        cell = (n[..., 0] * self.span + n[..., 1]) * self.span + n[..., 2]
        keys = (np.asarray(i, np.int64) * self.natom + np.asarray(j, np.int64)) * self.span**3 + cell
        return np.where(inside, keys, -1)

    def find(self, i, j, n) -> np.ndarray:
        keys = self._keys(i, j, n)
        at = np.clip(np.searchsorted(self.sorted, keys), 0, len(self.sorted) - 1)
        hit = (self.sorted[at] == keys) & (keys >= 0)
        return np.where(hit, self.order[at], -1)


def _row_blocks(matrix: np.ndarray, row_sizes: np.ndarray, col_sizes: np.ndarray, m: int) -> np.ndarray:
    """A matrix over the AOs of atoms (rows) × atoms (columns) as padded blocks (nrow, ncol, m, m)."""
    def slots(sizes):
        atom = np.repeat(np.arange(len(sizes)), sizes)
        start = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        return atom, np.arange(int(np.sum(sizes))) - start[atom]

    ra, rs = slots(row_sizes)
    ca, cs = slots(col_sizes)
    out = np.zeros((len(row_sizes), len(col_sizes), m, m))
    out[ra[:, None], ca[None, :], rs[:, None], cs[None, :]] = matrix
    return out


def _cluster_mole(symbols: Sequence[str], coords: np.ndarray, basis: str) -> gto.Mole:
    mol = gto.Mole()
    mol.atom = [(s, tuple(c)) for s, c in zip(symbols, coords)]
    mol.basis = basis
    mol.unit = "Bohr"
    mol.verbose = 0
    mol.cart = False
    mol.spin = None  # an integral container: any electron count is fine
    return mol.build(dump_input=False, parse_arg=False)


class _Neighbours:
    """The images (j, n) around each atom of the cell within a radius, from one
    :func:`basis.crystal.lattice_neighbours` list (ordered by j, then n)."""

    def __init__(self, pos: np.ndarray, lattice: np.ndarray, radius: float):
        i, self.j, self.n, self.distance = lattice_neighbours(pos, lattice, radius)
        self.start = np.searchsorted(i, np.arange(len(pos) + 1))

    def around(self, atom: int, radius: float) -> tuple[np.ndarray, np.ndarray]:
        """(atom indices j, shifts n) of the images within ``radius`` of ``atom``."""
        part = slice(self.start[atom], self.start[atom + 1])
        keep = self.distance[part] < radius
        return self.j[part][keep], self.n[part][keep]


def _min_exponent(mol: gto.Mole, symbol: str) -> float:
    return min(float(np.min(mol.bas_exp(b))) for b in range(mol.nbas) if mol.atom_pure_symbol(mol.bas_atom(b)) == symbol)


def pair_radius(alpha_min: float) -> float:
    """Distance (Bohr) beyond which the most diffuse primitives (exponent α) overlap by less
    than :data:`PAIR_TOLERANCE`: exp(−α d² / 2) = tolerance."""
    return math.sqrt(2.0 * math.log(1.0 / PAIR_TOLERANCE) / alpha_min)


def ao_tail(alpha_min: float) -> float:
    """Distance (Bohr) at which the most diffuse primitive falls to :data:`AO_TOLERANCE`."""
    return math.sqrt(math.log(1.0 / AO_TOLERANCE) / alpha_min)


def _projector_overlaps(pp_mol: gto.Mole, cluster: gto.Mole, pseudo_params) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per angular momentum l: (⟨p_i^{lm}|φ_μ⟩ (nproj, 2l+1, nao_cluster), h^l (nproj, nproj)).

    GTH projectors p_i^{lm}(r) = N_i^l r^{l + 2(i−1)} exp(−r²/(2 r_l²)) Y_lm(r̂), with
    N_i^l = √2 / (r_l^{l + (4i−1)/2} √Γ(l + (4i−1)/2)), as in Goedecker–Teter–Hutter / HGH.
    """
    out = []
    center = pp_mol.atom_coord(0)
    for l, (r_l, n_proj, h) in enumerate(pseudo_params[5:]):
        if n_proj == 0:
            continue
        alpha = 0.5 / r_l**2
        shell = gto.M(atom=[("Ghost", tuple(center))], basis={"Ghost": [[l, [alpha, 1.0]]]}, unit="Bohr", verbose=0)
        norm_shell = gto.gto_norm(l, alpha)  # PySCF's normalised χ_lm = norm · r^l e^{−αr²} Y_lm
        rows = []
        for i in range(n_proj):
            intor = ("int1e_ovlp", "int1e_r2_origi", "int1e_r4_origi")[i]
            n_i = math.sqrt(2.0) / (r_l ** (l + (4 * (i + 1) - 1) / 2.0) * math.sqrt(gamma(l + (4 * (i + 1) - 1) / 2.0)))
            rows.append(n_i / norm_shell * gto.intor_cross(intor, shell, cluster, comp=1))
        out.append((np.stack(rows), np.asarray(h, dtype=np.float64)))
    return out


@dataclasses.dataclass(frozen=True)
class _AtomGrid:
    """One element's quadrature grid around its atom at the origin (Bohr).

    Attributes:
        points: (n, 3) points within :data:`GRID_RADIUS_BOHR`.
        weights: (n,) quadrature weights.
        tree: KD-tree of ``points`` (for the atoms' radial tables).
    """

    points: np.ndarray
    weights: np.ndarray
    tree: cKDTree


def _atom_grid(atom: gto.Mole) -> _AtomGrid:
    """Quadrature grid of one atom at the origin within :data:`GRID_RADIUS_BOHR` (Treutler
    radial grid, Lebedev angular grid)."""
    symbol = atom.atom_pure_symbol(0)
    grids = gen_grid.gen_atomic_grids(atom, atom_grid={symbol: ATOM_GRID}, radi_method=radi.treutler, prune=ANGULAR_PRUNING)
    points, weights = grids[symbol]
    inside = np.linalg.norm(points, axis=1) < GRID_RADIUS_BOHR
    points, weights = points[inside], weights[inside]
    return _AtomGrid(points, weights, cKDTree(points))


def _superposition(grid: _AtomGrid, atoms_rel: np.ndarray, atom_symbols: Sequence[str], tables, gradient: bool):
    """Σ_A ρ_A, ∇Σ_A ρ_A (n, 3), Σ_A u_A (n,) and Σ_A f(|r − A|) (the partition's
    denominator, :func:`partition_function`) at the points of ``grid``, from the radial
    tables of the atoms at ``atoms_rel`` (Bohr, in the grid's frame) within their
    :attr:`AtomTables.radius` of each point (the partition's sum runs over the same atoms)."""
    n = len(grid.points)
    radii = np.array([tables[s].radius for s in atom_symbols])
    found = grid.tree.sparse_distance_matrix(cKDTree(atoms_rel), radii.max(), output_type="ndarray")
    found = found[found["v"] < radii[found["j"]]]
    point, atom, r = found["i"], found["j"], np.maximum(found["v"], _RADIAL_GRID[0])
    total = np.bincount(point, partition_function(found["v"]), minlength=n)
    rho, v, grad = np.zeros(n), np.zeros(n), np.zeros((n, 3))
    kind = np.asarray(atom_symbols)[atom]
    for symbol in sorted(set(atom_symbols)):
        sel = kind == symbol
        p, ri, t = point[sel], r[sel], tables[symbol]
        rho += np.bincount(p, t.density(ri), minlength=n)
        v += np.bincount(p, t.electrostatic(ri), minlength=n)
        if gradient:
            radial = t.density(ri, 1) / ri
            d = grid.points[p] - atoms_rel[atom[sel]]
            for x in range(3):
                grad[:, x] += np.bincount(p, radial * d[:, x], minlength=n)
    return rho, grad, v, total


def partition_function(r: np.ndarray) -> np.ndarray:
    """The weight f(r) of an atom at distance r (Bohr) in the partition of space
    w_A = f(|r − A|) / Σ_B f(|r − B|): smooth, so that each atom's grid integrates its share
    accurately, and singular at the nucleus, so that every atom's core lies on its own grid."""
    return np.maximum(r, 1e-6) ** -PARTITION_POWER


def _share_of_space(grid: _AtomGrid, near_rel, near_symbols, tables, functional):
    """The points of atom C's grid that carry its share of space, with what is integrated there.

    Returns ``(points, weights, v_xc, v_es, flux)``: points relative to C (Bohr), weights
    times the partition w_C (Bohr³, those above :data:`WEIGHT_CUTOFF`), the XC potential
    ∂e/∂ρ and the electrostatic potential Σ_A u_A of the superposed density (Hartree), and
    for a GGA the vector 2 w ∂e/∂σ ∇ρ (3, n) that multiplies ∇(φ_μ φ_ν), else None.
    ``near_rel``: positions (Bohr, relative to C) of the atoms whose densities reach the grid.
    """
    gga = functional.family == "gga"
    rho, grad, v_es, total = _superposition(grid, near_rel, near_symbols, tables, gga)
    w = grid.weights * partition_function(np.linalg.norm(grid.points, axis=1)) / total
    keep = w > WEIGHT_CUTOFF
    w, rho, grad, v_es = w[keep], rho[keep], grad[keep], v_es[keep]
    vxc = libxc.eval_xc(functional.name, np.concatenate([rho[None], grad.T]) if gga else rho, spin=0, deriv=1)[1]
    flux = 2.0 * w * np.asarray(vxc[1]) * grad.T if gga else None
    return grid.points[keep], w, np.asarray(vxc[0]), v_es, flux


def _grid_potential(points, weights, v_local, flux, cluster, origin) -> np.ndarray:
    """Σ_points w (v_local φ_μ φ_ν + flux · ∇(φ_μ φ_ν)) for the functions φ of ``cluster``
    (nao, nao); ``points`` relative to ``origin`` (Bohr)."""
    gga = flux is not None
    ao = cluster.eval_gto("GTOval_sph_deriv1" if gga else "GTOval_sph", points + origin)
    phi = ao[0] if gga else ao
    half = phi * (0.5 * weights * v_local)[:, None]
    if gga:
        half = half + ao[1] * flux[0][:, None] + ao[2] * flux[1][:, None] + ao[3] * flux[2][:, None]
    v = phi.T @ half
    return v + v.T


TERMS = ("kinetic", "electrostatic", "xc", "nonlocal")
"""The parts of H_base, each checkable on its own against PySCF."""


def lattice_blocks(system: System, basis: str, pseudo: str, xc: str, terms: Sequence[str] = TERMS) -> LatticeBlocks:
    """S(n) and the SAP baseline H_base(n) of a crystal, atom by atom (see the module docstring).

    ``terms`` selects parts of H_base (:data:`TERMS`), for checks.

    Raises:
        GeometryError: no cell. BasisError: unknown basis or pseudopotential.
        InputError: a hybrid or meta-GGA functional.
    """
    as_crystal(system)
    functional = parse_functional(xc)
    if functional.exact_exchange or functional.family not in ("lda", "gga"):
        raise InputError(f"the crystal SAP baseline needs a LDA or GGA functional, not {xc!r}")
    check_basis(basis, system.symbols)
    check_pseudo(pseudo, system.symbols)
    symbols = tuple(system.symbols)
    pos = np.asarray(system.positions, dtype=np.float64) / BOHR_ANGSTROM
    lattice = np.asarray(system.cell, dtype=np.float64) / BOHR_ANGSTROM
    natom = len(symbols)
    elements = sorted(set(symbols))
    atoms = {s: _atom(s, basis, pseudo) for s in elements}
    nao_of = {s: atoms[s].nao for s in elements}
    alpha = {s: _min_exponent(atoms[s], s) for s in elements}
    tables = {s: atom_tables(s, basis, pseudo) for s in elements}
    sizes = np.array([nao_of[s] for s in symbols])
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    m = int(sizes.max())
    a_min = min(alpha.values())
    r_pair = pair_radius(a_min)
    grids = {s: _atom_grid(atoms[s]) for s in elements}

    # pair list: every image (j, n) within r_pair of each atom i
    density_reach = GRID_RADIUS_BOHR + max(t.radius for t in tables.values())
    neighbours = _Neighbours(pos, lattice, max(r_pair, density_reach, GRID_RADIUS_BOHR + ao_tail(a_min)))
    found = [neighbours.around(i, r_pair) for i in range(natom)]
    pairs = np.concatenate([np.stack([np.full(len(js), i), js], axis=1) for i, (js, _) in enumerate(found)])
    shifts = np.concatenate([ns for _, ns in found])
    lookup = _PairLookup(pairs, shifts, natom)
    S = np.zeros((len(pairs), m, m))
    H = np.zeros((len(pairs), m, m))

    # two-centre terms, one row of atoms at a time
    for i, (js, ns) in enumerate(found):
        home = _cluster_mole([symbols[i]], pos[i][None], basis)
        cluster = _cluster_mole([symbols[j] for j in js], pos[js] + ns @ lattice, basis)
        p = lookup.find(np.full(len(js), i), js, ns)
        S[p] = _row_blocks(gto.intor_cross("int1e_ovlp", home, cluster), sizes[[i]], sizes[js], m)[0]
        if "kinetic" in terms:
            H[p] = _row_blocks(gto.intor_cross("int1e_kin", home, cluster), sizes[[i]], sizes[js], m)[0]

    # potential terms, one atom's quadrature grid (or projectors) at a time
    for c in range(natom):
        near, near_n = neighbours.around(c, density_reach)
        points, weights, v_xc, v_es, flux = _share_of_space(
            grids[symbols[c]], pos[near] + near_n @ lattice - pos[c], [symbols[j] for j in near], tables, functional
        )
        reach = np.linalg.norm(points, axis=1).max() + ao_tail(a_min)
        js, ns = neighbours.around(c, reach)
        cluster = _cluster_mole([symbols[j] for j in js], pos[js] + ns @ lattice, basis)
        v_local = (v_xc if "xc" in terms else 0.0) + (v_es if "electrostatic" in terms else 0.0)
        v = _grid_potential(points, weights, v_local, flux if "xc" in terms else None, cluster, pos[c])
        pp_mol = atoms[symbols[c]].copy()
        pp_mol.set_geom_(pos[c][None], unit="Bohr", symmetry=False)
        for proj, h in _projector_overlaps(pp_mol, cluster, pp_mol._pseudo[symbols[c]]) if "nonlocal" in terms else ():
            v += np.einsum("iml,ij,jmn->ln", proj, h, proj)
        blocks = _row_blocks(v, sizes[js], sizes[js], m)  # (a, b, m, m)
        a, b = np.meshgrid(np.arange(len(js)), np.arange(len(js)), indexing="ij")
        a, b = a.ravel(), b.ravel()
        p = lookup.find(js[a], js[b], ns[b] - ns[a])
        keep = p >= 0  # pairs beyond the pair radius are below the pair tolerance
        np.add.at(H, p[keep], blocks[a[keep], b[keep]])
    if "electrostatic" in terms:
        H += electrostatic_offset(symbols, abs(np.linalg.det(lattice)), tables) * S
    return LatticeBlocks(pairs=pairs, shifts=shifts, overlap=S, hamiltonian=H, ao_offsets=offsets, lattice=lattice)


__all__ = [
    "LatticeBlocks",
    "AtomTables",
    "ao_tail",
    "electrostatic_offset",
    "atom_density_matrix",
    "atom_tables",
    "gth_local_potential",
    "lattice_blocks",
    "pair_radius",
]
