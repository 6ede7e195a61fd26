"""The boundary to PySCF for crystals: k-space integrals and Bloch AOs on the FFT mesh.

:func:`build_periodic_integrals` turns a crystal into an immutable pytree of
arrays, everything the JAX periodic energy functional
(:mod:`solvers.periodic`) needs: S(k), the core Hamiltonian h(k) (kinetic +
GTH pseudopotential), Bloch AO values (and gradients for GGAs) on PySCF's
uniform FFT mesh, the Coulomb kernel 4π/G² on that mesh, the k-points and
their weights, and the Ewald nuclear energy. The settings are those of
``pyscf.pbc.dft.KRKS(cell, kpts, xc=xc)`` with its default FFT density
fitting, chosen in one place, :func:`make_periodic_mean_field`.

Bloch AOs follow PySCF: φ^k_μ(r) = Σ_T e^{ik·T} φ_μ(r − T), and matrices at k
are ⟨φ^k_μ|O|φ^k_ν⟩. Their memory is nk × nderiv × ngrid × nao complex128;
:func:`bloch_ao_nbytes` tells it before anything is built.

Example:
    >>> from basis.crystal import read_crystal
    >>> from basis.pbc_integrals import build_periodic_integrals
    >>> ints = build_periodic_integrals(read_crystal("si"), xc="lda,vwn", basis="gth-szv", kmesh=(2, 2, 2))
    >>> ints.overlap.shape, ints.ao.shape
    ((8, 8, 8), (8, 1, 42875, 8))
"""

from __future__ import annotations

from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from pyscf import gto
from pyscf.pbc import dft as pbcdft
from pyscf.pbc import tools
from pyscf.pbc.dft import numint

from basis.crystal import (check_kmesh, default_kmesh, default_pseudo, make_kpts, scaled_kpts,
                           time_reversal_invariant, to_cell)
from basis.errors import FunctionalError, InputError
from basis.functional import Functional, parse_functional
from basis.system import System

BLOCH_AO_BUDGET_BYTES = 6 * 2**30
"""Largest Bloch AO array :func:`build_periodic_integrals` builds in one piece
(nk × nderiv × ngrid × nao complex128); beyond it a clear error asks for a
smaller k-mesh or basis."""


@struct.dataclass
class PeriodicIntegrals:
    """Integrals of one crystal on a k-point mesh (atomic units: Hartree, Bohr).

    Array fields (pytree leaves):
        overlap: (nk, nao, nao) complex128 S(k).
        hcore: (nk, nao, nao) complex128 kinetic + GTH pseudopotential h(k).
        ao: (nk, nderiv, ngrid, nao) Bloch AO values on the FFT mesh; nderiv = 1
            (values) or 4 (values, d/dx, d/dy, d/dz). complex128, or float64 when every
            k-point is time-reversal invariant (a Γ-centred mesh of 1 or 2 points per
            direction, the training default): the values are real there, and half the
            memory and arithmetic.
        weights: (ngrid,) float64 quadrature weights, all equal to V / ngrid.
        coulG: (ngrid,) float64 Coulomb kernel 4π/|G|² in FFT order of
            ``mesh`` (0 at G = 0).
        kpts: (nk, 3) float64 Cartesian k-points, 1/Bohr.
        kweights: (nk,) float64 k-point weights, summing to 1 (1/nk).
        lattice: (3, 3) float64 lattice vectors as rows, Bohr.
        e_nuc: () float64 Ewald energy of the ion cores per cell, Hartree.
        dm_guess: (nk, nao, nao) complex128 PySCF's default (minao) initial P(k).

    Static fields (not traced): ``mesh`` (3 ints), ``kmesh`` (3 ints, or
    ``None`` for k-points not on a mesh), ``n_electrons`` (valence electrons
    per cell), ``basis``, ``pseudo``, ``functional``.

    The density matrices P(k) this pairs with are PySCF's ``dm_kpts``:
    Σ_k w_k tr(P(k) S(k)) = n_electrons.
    """

    overlap: jax.Array
    hcore: jax.Array
    ao: jax.Array
    weights: jax.Array
    coulG: jax.Array
    kpts: jax.Array
    kweights: jax.Array
    lattice: jax.Array
    e_nuc: jax.Array
    dm_guess: jax.Array
    mesh: tuple[int, int, int] = struct.field(pytree_node=False)
    kmesh: tuple[int, int, int] | None = struct.field(pytree_node=False)
    n_electrons: int = struct.field(pytree_node=False)
    basis: str = struct.field(pytree_node=False)
    pseudo: str = struct.field(pytree_node=False)
    functional: Functional = struct.field(pytree_node=False)

    @property
    def nao(self) -> int:
        return self.overlap.shape[-1]

    @property
    def nkpts(self) -> int:
        return self.overlap.shape[0]

    @property
    def ngrid(self) -> int:
        return self.weights.shape[0]

    @property
    def n_occupied(self) -> int:
        """Doubly occupied bands per k-point of an insulator."""
        return self.n_electrons // 2

    @property
    def cell_volume(self) -> jax.Array:
        """() cell volume, Bohr³."""
        return jnp.abs(jnp.linalg.det(self.lattice))


@struct.dataclass
class BandIntegrals:
    """What the Fock matrix at arbitrary k-points needs besides the SCF density.

    Array fields:
        overlap: (nk, nao, nao) complex128 S(k).
        hcore: (nk, nao, nao) complex128 h(k).
        ao: (nk, nderiv, ngrid, nao) complex128 Bloch AO values on the SCF's mesh.
        kpts: (nk, 3) float64 Cartesian k-points, 1/Bohr.
    """

    overlap: jax.Array
    hcore: jax.Array
    ao: jax.Array
    kpts: jax.Array


def check_periodic_functional(xc: str | Functional) -> Functional:
    """Parse ``xc`` and check that the periodic energy supports it (LDA, GGA).

    Raises:
        FunctionalError: unknown, Hartree–Fock or hybrid functional.
    """
    functional = parse_functional(xc) if isinstance(xc, str) else xc
    if functional.family not in ("lda", "gga") or functional.exact_exchange != 0.0:
        raise FunctionalError(
            f"functional {functional.name!r}: crystals support LDA and GGA functionals only "
            "(no exact exchange yet)"
        )
    return functional


def bloch_ao_nbytes(nkpts: int, ngrid: int, nao: int, functional: Functional) -> int:
    """Bytes of the complex128 Bloch AO array (values, plus gradients for GGA)."""
    nderiv = 4 if functional.ao_deriv == 1 else 1
    return 16 * nkpts * nderiv * ngrid * nao


def make_periodic_mean_field(
    system: System,
    xc: str = "pbe",
    basis: str = "gth-szv",
    pseudo: str | None = None,
    kmesh: Sequence[int] | None = None,
    mesh: Sequence[int] | None = None,
):
    """The PySCF object whose settings vardft reproduces (not run).

    ``pyscf.pbc.dft.KRKS(cell, cell.make_kpts(kmesh), xc=xc)`` with its default
    FFT density fitting and uniform XC grid on ``cell.mesh``. This is the single
    place those settings are chosen; validation and tests compare against it.

    Args:
        system: a closed-shell crystal.
        xc: LDA or GGA functional name (PySCF's spelling).
        basis: e.g. ``gth-szv``, ``gth-dzvp``.
        pseudo: GTH family; the one matching ``xc`` if None (gth-pade for LDA,
            gth-pbe for PBE).
        kmesh: Γ-centred Monkhorst–Pack mesh; 3 per periodic direction and 1
            along vacuum if None.
        mesh: FFT mesh for Coulomb and XC; PySCF's default (``cell.mesh``) if
            None. A coarser mesh is less accurate but still matches PySCF run
            on the same mesh (what the tests use).

    Raises:
        InputError subclasses for bad crystal, functional, basis, pseudo or mesh.
    """

    functional = check_periodic_functional(xc)
    pseudo = default_pseudo(functional) if pseudo is None else pseudo
    kmesh = default_kmesh(system) if kmesh is None else check_kmesh(kmesh)
    cell = to_cell(system, basis=basis, pseudo=pseudo, mesh=mesh)
    mf = pbcdft.KRKS(cell, make_kpts(cell, kmesh), xc=functional.name)
    mf.verbose = 0
    mf.kmesh = tuple(kmesh)
    return mf


def bloch_ao(cell, coords: np.ndarray, kpts: np.ndarray, deriv: int) -> np.ndarray:
    """(nk, nderiv, ngrid, nao) complex128 Bloch AO values (PySCF's ``eval_ao_kpts``)."""

    ao = numint.eval_ao_kpts(cell, coords, kpts=np.asarray(kpts).reshape(-1, 3), deriv=deriv)
    ao = np.asarray(ao, dtype=np.complex128)
    nk, ngrid, nao = len(kpts), coords.shape[0], cell.nao_nr()
    return ao.reshape(nk, -1, ngrid, nao)


def periodic_integrals_from_mean_field(mf, budget_bytes: int = BLOCH_AO_BUDGET_BYTES) -> PeriodicIntegrals:
    """Collect the integrals of a (not necessarily run) PySCF ``KRKS`` object.

    Raises:
        FunctionalError: a functional the periodic energy does not support.
        InputError: the Bloch AO array would exceed ``budget_bytes``.
    """


    cell = mf.cell
    functional = check_periodic_functional(mf.xc)
    kpts = np.asarray(mf.kpts, dtype=np.float64).reshape(-1, 3)
    mesh = tuple(int(m) for m in mf.with_df.mesh)
    if tuple(int(m) for m in mf.grids.mesh) != mesh:
        raise InputError(f"the XC grid mesh {tuple(mf.grids.mesh)} differs from the FFT mesh {mesh}")
    ngrid = int(np.prod(mesh))
    need = bloch_ao_nbytes(len(kpts), ngrid, cell.nao_nr(), functional)
    if need > budget_bytes:
        raise InputError(
            f"Bloch AO values need {need / 2**30:.1f} GiB ({len(kpts)} k-points x {ngrid} mesh points "
            f"x {cell.nao_nr()} AOs); use a smaller k-mesh or basis"
        )
    coords = np.asarray(cell.get_uniform_grids(mesh), dtype=np.float64)
    ao = bloch_ao(cell, coords, kpts, functional.ao_deriv)
    if np.all(time_reversal_invariant(scaled_kpts(cell, kpts))):
        ao = np.ascontiguousarray(ao.real)  # phases ±1: the imaginary part is round-off
    coulG = np.asarray(tools.get_coulG(cell, mesh=np.asarray(mesh)), dtype=np.float64)
    nk, nao = len(kpts), cell.nao_nr()
    kmesh = getattr(mf, "kmesh", None)
    return PeriodicIntegrals(
        overlap=jnp.asarray(np.asarray(mf.get_ovlp(cell, kpts), dtype=np.complex128).reshape(nk, nao, nao)),
        hcore=jnp.asarray(np.asarray(mf.get_hcore(cell, kpts), dtype=np.complex128).reshape(nk, nao, nao)),
        ao=jnp.asarray(ao),
        weights=jnp.full((ngrid,), cell.vol / ngrid, dtype=jnp.float64),
        coulG=jnp.asarray(coulG),
        kpts=jnp.asarray(kpts),
        kweights=jnp.full((nk,), 1.0 / nk, dtype=jnp.float64),
        lattice=jnp.asarray(np.asarray(cell.lattice_vectors(), dtype=np.float64)),
        e_nuc=jnp.asarray(float(cell.energy_nuc()), dtype=jnp.float64),
        dm_guess=jnp.asarray(np.asarray(mf.get_init_guess(), dtype=np.complex128).reshape(nk, nao, nao)),
        mesh=mesh,
        kmesh=None if kmesh is None else tuple(int(k) for k in kmesh),
        n_electrons=int(cell.nelectron),
        basis=str(cell.basis),
        pseudo=str(cell.pseudo),
        functional=functional,
    )


def build_periodic_integrals(
    system: System,
    xc: str = "pbe",
    basis: str = "gth-szv",
    pseudo: str | None = None,
    kmesh: Sequence[int] | None = None,
    mesh: Sequence[int] | None = None,
) -> PeriodicIntegrals:
    """Integrals of crystal ``system`` for ``xc`` in ``basis`` on a k-mesh.

    See :func:`make_periodic_mean_field` for the arguments and defaults.
    """
    return periodic_integrals_from_mean_field(make_periodic_mean_field(system, xc, basis, pseudo, kmesh, mesh))


def build_band_integrals(
    cell,
    kpts: np.ndarray,
    functional: Functional | str,
    mesh: Sequence[int] | None = None,
) -> BandIntegrals:
    """S(k), h(k) and Bloch AOs on the FFT mesh at arbitrary k-points (1/Bohr).

    Matrices as ``mf.get_ovlp(cell, kpts)`` / ``mf.get_hcore(cell, kpts)`` of a
    ``KRKS`` object; ``mesh`` defaults to ``cell.mesh`` (the SCF's mesh).
    Call it on chunks of k-points to bound memory.
    """

    functional = check_periodic_functional(functional)
    kpts = np.asarray(kpts, dtype=np.float64).reshape(-1, 3)
    mesh = np.asarray(cell.mesh if mesh is None else mesh, dtype=int)
    mf = pbcdft.KRKS(cell, kpts, xc=functional.name)
    mf.with_df.mesh = mesh
    nk, nao = len(kpts), cell.nao_nr()
    coords = np.asarray(cell.get_uniform_grids(mesh), dtype=np.float64)
    return BandIntegrals(
        overlap=jnp.asarray(np.asarray(mf.get_ovlp(cell, kpts), dtype=np.complex128).reshape(nk, nao, nao)),
        hcore=jnp.asarray(np.asarray(mf.get_hcore(cell, kpts), dtype=np.complex128).reshape(nk, nao, nao)),
        ao=jnp.asarray(bloch_ao(cell, coords, kpts, functional.ao_deriv)),
        kpts=jnp.asarray(kpts),
    )




def band_integral_chunks(
    cell,
    kpts: np.ndarray,
    functional: Functional | str,
    chunk_size: int,
    mesh: Sequence[int] | None = None,
) -> Iterator[tuple[int, BandIntegrals]]:
    """:class:`BandIntegrals` for consecutive pieces of a list of k-points.

    S(k) and h(k) come from one PySCF call for all k-points (small); the Bloch
    AOs, the large part, are evaluated one chunk at a time. Every chunk has
    ``chunk_size`` k-points (the last padded by repeating its final point) so
    that one compiled function serves them all.

    Yields:
        (n_valid, chunk): the first ``n_valid`` k-points of ``chunk`` are new.
    """

    functional = check_periodic_functional(functional)
    kpts = np.asarray(kpts, dtype=np.float64).reshape(-1, 3)
    mesh = np.asarray(cell.mesh if mesh is None else mesh, dtype=int)
    size = max(1, min(int(chunk_size), len(kpts)))
    nk, nao = len(kpts), cell.nao_nr()
    mf = pbcdft.KRKS(cell, kpts, xc=functional.name)
    mf.with_df.mesh = mesh
    overlap = np.asarray(mf.get_ovlp(cell, kpts), dtype=np.complex128).reshape(nk, nao, nao)
    hcore = np.asarray(mf.get_hcore(cell, kpts), dtype=np.complex128).reshape(nk, nao, nao)
    coords = np.asarray(cell.get_uniform_grids(mesh), dtype=np.float64)
    for start in range(0, nk, size):
        idx = np.minimum(np.arange(start, start + size), nk - 1)
        yield min(size, nk - start), BandIntegrals(
            overlap=jnp.asarray(overlap[idx]),
            hcore=jnp.asarray(hcore[idx]),
            ao=jnp.asarray(bloch_ao(cell, coords, kpts[idx], functional.ao_deriv)),
            kpts=jnp.asarray(kpts[idx]),
        )


def lattice_shifts(cell, rcut: float | None = None) -> np.ndarray:
    """(nR, 3) integer cell shifts n of the translations T = n · lattice PySCF sums over.

    The same set as ``cell.get_lattice_Ls(rcut=rcut)`` (all T whose images of
    basis functions overlap the home cell's within ``rcut``, default ``cell.rcut``),
    as integers, the zero shift first.
    """
    Ls = np.asarray(cell.get_lattice_Ls(rcut=rcut), dtype=np.float64)
    shifts = np.rint(Ls @ np.linalg.inv(np.asarray(cell.lattice_vectors()))).astype(np.int64)
    shifts = np.unique(shifts, axis=0)
    order = np.argsort(np.abs(shifts).sum(axis=1), kind="stable")
    return shifts[order]


def real_space_integrals(cell, shifts: np.ndarray, intor: str = "int1e_ovlp") -> np.ndarray:
    """One-electron integrals between the home cell and its translated images.

    O(R)_μν = ⟨φ_μ(r) | O | φ_ν(r − T_R)⟩ with T_R = shifts[R] · lattice, no
    lattice sum; for ``int1e_ovlp`` and ``int1e_kin`` PySCF's k-space matrices are
    O(k) = Σ_R e^{ik·T_R} O(R).

    Args:
        cell: a built ``Cell``.
        shifts: (nR, 3) integer cell shifts.
        intor: a one-electron PySCF integral without the nuclear potential.

    Returns:
        (nR, nao, nao) float64.
    """

    mol = cell.to_mol()
    coords = np.asarray(mol.atom_coords(unit="Bohr"))
    lattice = np.asarray(cell.lattice_vectors())
    shifted = mol.copy()
    out = np.empty((len(shifts), mol.nao_nr(), mol.nao_nr()))
    for i, n in enumerate(np.asarray(shifts, dtype=np.float64)):
        shifted.set_geom_(coords + n @ lattice, unit="Bohr", symmetry=False)
        out[i] = gto.intor_cross(intor, mol, shifted)
    return out


__all__ = [
    "BLOCH_AO_BUDGET_BYTES",
    "BandIntegrals",
    "PeriodicIntegrals",
    "bloch_ao",
    "band_integral_chunks",
    "bloch_ao_nbytes",
    "build_band_integrals",
    "build_periodic_integrals",
    "check_periodic_functional",
    "lattice_shifts",
    "make_periodic_mean_field",
    "periodic_integrals_from_mean_field",
    "real_space_integrals",
]
