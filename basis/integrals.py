"""The one boundary to PySCF integrals and grids.

:func:`build_integrals` turns a checked :class:`~basis.system.System` into an
immutable pytree of float64 arrays: everything the JAX energy functional needs
for one geometry. After this point all physics is a pure function of arrays.
No four-index electron-repulsion tensor is ever built: Coulomb and exchange use
PySCF's density-fitting factor, the one ``mf.density_fit()`` would use.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from pyscf import dft, lib, scf
from pyscf.dft import numint

from basis.functional import Functional, parse_functional
from basis.shells import AOShells, ao_shells
from basis.system import System

DEFAULT_GRID_LEVEL = 3
"""PySCF's default ``grids.level``."""

BACKENDS = ("host", "jax")
"""Where the semi-local XC term is evaluated: ``"host"`` (libxc through PySCF in a host
callback, AO values stored) or ``"jax"`` (:mod:`solvers.xc_jax` on the device, no
callback). :class:`CompactIntegrals` are always ``"jax"``."""


class _Sizes:
    """Sizes shared by both kinds of molecular integrals."""

    overlap: jax.Array
    n_electrons: int

    @property
    def nao(self) -> int:
        return self.overlap.shape[-1]

    @property
    def n_occupied(self) -> int:
        return self.n_electrons // 2


@struct.dataclass
class Integrals(_Sizes):
    """Integrals of one molecule (atomic units: Hartree, Bohr).

    Array fields (pytree leaves, float64):
        overlap: (nao, nao) S.
        hcore: (nao, nao) kinetic + nuclear attraction.
        cderi: (naux, nao, nao) density-fitting factor L with
            (ij|kl) ≈ Σ_Q L_Qij L_Qkl (PySCF's ``with_df._cderi``, unpacked).
        ao: (nderiv, ngrid, nao) AO values on the XC grid; nderiv = 1 (values)
            or 4 (values, d/dx, d/dy, d/dz). ngrid = 0 for Hartree–Fock.
        weights: (ngrid,) quadrature weights.
        e_nuc: () nuclear repulsion energy, Hartree.
        dm_guess: (nao, nao) PySCF's default (minao) initial density matrix.

    Static fields (not traced): ``n_electrons``, ``basis``, ``auxbasis``,
    ``functional`` (the :class:`~basis.functional.Functional` the grid was
    built for), ``grid_level``, ``backend`` (one of :data:`BACKENDS`).
    """

    overlap: jax.Array
    hcore: jax.Array
    cderi: jax.Array
    ao: jax.Array
    weights: jax.Array
    e_nuc: jax.Array
    dm_guess: jax.Array
    n_electrons: int = struct.field(pytree_node=False)
    basis: str = struct.field(pytree_node=False)
    auxbasis: str = struct.field(pytree_node=False)
    functional: Functional = struct.field(pytree_node=False)
    grid_level: int = struct.field(pytree_node=False, default=DEFAULT_GRID_LEVEL)
    backend: str = struct.field(pytree_node=False, default="host")


@struct.dataclass
class CompactIntegrals(_Sizes):
    """What the device needs for the energy of one molecule, and nothing it can compute.

    Compared with :class:`Integrals` there are no AO values on the grid (the device
    evaluates them from ``shells``, block by block) and the density-fitting factor is
    kept in PySCF's packed lower-triangular form: memory O(naux·nao²/2 + ngrid) instead
    of O(naux·nao² + 4·ngrid·nao). For a QM9-sized molecule at def2-SVP that is
    ~90 MB instead of ~0.6 GB.

    Array fields (pytree leaves, float64):
        overlap, hcore, dm_guess: (nao, nao) as in :class:`Integrals`.
        cderi_packed: (naux, nao(nao+1)/2) L with the pair (i ≥ j) at index
            i(i+1)/2 + j (PySCF's ``lib.pack_tril`` order). This order does not depend
            on nao, so zero-padding the last axis pads the AO axis.
        coords: (ngrid, 3) grid points, Bohr.
        weights: (ngrid,) quadrature weights (zero on padded points).
        e_nuc: () nuclear repulsion, Hartree.
        shells: :class:`basis.shells.AOShells`, the basis on the molecule's atoms.

    Static fields as in :class:`Integrals`; the XC term always runs in JAX.
    """

    overlap: jax.Array
    hcore: jax.Array
    cderi_packed: jax.Array
    coords: jax.Array
    weights: jax.Array
    e_nuc: jax.Array
    dm_guess: jax.Array
    shells: AOShells
    n_electrons: int = struct.field(pytree_node=False)
    basis: str = struct.field(pytree_node=False)
    auxbasis: str = struct.field(pytree_node=False)
    functional: Functional = struct.field(pytree_node=False)
    grid_level: int = struct.field(pytree_node=False, default=DEFAULT_GRID_LEVEL)
    backend: str = struct.field(pytree_node=False, default="jax")


def make_mean_field(system: System, xc: str, basis: str, grid_level: int = DEFAULT_GRID_LEVEL):
    """The PySCF mean-field object whose settings vardft reproduces (not run).

    ``pyscf.dft.RKS(mol, xc=xc).density_fit()``, or ``pyscf.scf.RHF(mol).density_fit()``
    for ``xc='hf'``, with PySCF's default auxiliary basis and grid (level 3).
    This is the single place those settings are chosen; validation and tests
    compare against the object it returns.
    """

    functional = parse_functional(xc)
    system.require_closed_shell()
    mol = system.to_mole(basis)
    if functional.family == "hf":
        mf = scf.RHF(mol).density_fit()
    else:
        mf = dft.RKS(mol, xc=functional.name).density_fit()
        mf.grids.level = grid_level
    mf.verbose = 0
    return mf


def _unpack_cderi(cderi_packed: np.ndarray, nao: int) -> np.ndarray:

    return np.asarray(lib.unpack_tril(cderi_packed), dtype=np.float64).reshape(-1, nao, nao)


def _packed_cderi(mf) -> np.ndarray:
    """(naux, nao(nao+1)/2) density-fitting factor of ``mf`` in PySCF's packed order."""
    if mf.with_df._cderi is None:
        # in memory whatever the process already holds (PySCF goes to disk below its max_memory)
        mf.with_df.max_memory = max(mf.with_df.max_memory, 10**6)
        mf.with_df.build()
    # loop() reads the factor in blocks whether PySCF kept it in memory or on disk
    return np.vstack([np.asarray(b, dtype=np.float64) for b in mf.with_df.loop()])


def _grid(mf, functional: Functional) -> tuple[np.ndarray, np.ndarray, int]:
    """``(coords (ngrid, 3), weights (ngrid,), level)`` of ``mf``'s XC grid; empty for HF."""
    if not functional.needs_grid:
        return np.zeros((0, 3)), np.zeros((0,)), 0
    if mf.grids.coords is None:
        mf.grids.build(with_non0tab=False)
    return np.asarray(mf.grids.coords), np.asarray(mf.grids.weights), int(mf.grids.level)


def _common_fields(mf, functional: Functional) -> dict:
    mol = mf.mol
    return dict(
        overlap=jnp.asarray(mf.get_ovlp()),
        hcore=jnp.asarray(mf.get_hcore()),
        e_nuc=jnp.asarray(mol.energy_nuc(), dtype=jnp.float64),
        dm_guess=jnp.asarray(mf.get_init_guess()),
        n_electrons=int(mol.nelectron),
        basis=str(mol.basis),
        auxbasis=str(mf.with_df.auxmol.basis if mf.with_df.auxmol is not None else mf.with_df.auxbasis),
        functional=functional,
    )


def _functional_of(mf) -> Functional:
    return parse_functional(getattr(mf, "xc", "hf") if hasattr(mf, "grids") else "hf")


def integrals_from_mean_field(mf) -> Integrals:
    """Collect the integrals of a (not necessarily run) PySCF mean-field object."""

    mol = mf.mol
    functional = _functional_of(mf)
    nao = mol.nao_nr()
    cderi = _unpack_cderi(_packed_cderi(mf), nao)
    coords, weights, grid_level = _grid(mf, functional)
    if functional.needs_grid:
        ao = numint.eval_ao(mol, coords, deriv=functional.ao_deriv)
        ao = np.asarray(ao, dtype=np.float64).reshape(-1, coords.shape[0], nao)
    else:
        ao = np.zeros((1, 0, nao))
    return Integrals(
        cderi=jnp.asarray(cderi),
        ao=jnp.asarray(ao),
        weights=jnp.asarray(weights, dtype=jnp.float64),
        grid_level=grid_level,
        **_common_fields(mf, functional),
    )


def compact_integrals_from_mean_field(mf) -> CompactIntegrals:
    """The :class:`CompactIntegrals` of a (not necessarily run) PySCF mean-field object."""
    functional = _functional_of(mf)
    coords, weights, grid_level = _grid(mf, functional)
    return CompactIntegrals(
        cderi_packed=jnp.asarray(_packed_cderi(mf)),
        coords=jnp.asarray(coords, dtype=jnp.float64),
        weights=jnp.asarray(weights, dtype=jnp.float64),
        shells=ao_shells(mf.mol),
        grid_level=grid_level,
        **_common_fields(mf, functional),
    )


def build_integrals(system: System, xc: str = "pbe", basis: str = "def2-svp", grid_level: int = DEFAULT_GRID_LEVEL) -> Integrals:
    """Integrals of ``system`` for functional ``xc`` in ``basis``.

    Args:
        system: a closed-shell molecule.
        xc: PySCF functional name; decides the auxiliary basis (J-fit for pure
            functionals, JK-fit for hybrids and HF, as PySCF chooses) and
            whether AO gradients are stored.
        basis: any basis name PySCF knows.
        grid_level: PySCF grid level (default 3, PySCF's default).

    Raises:
        InputError subclasses for unknown functional/basis or open-shell systems.
    """
    return integrals_from_mean_field(make_mean_field(system, xc, basis, grid_level))


def build_compact_integrals(system: System, xc: str = "pbe", basis: str = "def2-svp",
                            grid_level: int = DEFAULT_GRID_LEVEL) -> CompactIntegrals:
    """:class:`CompactIntegrals` of ``system`` (the settings of :func:`build_integrals`).

    Example:
        >>> from basis import System
        >>> water = System(("O", "H", "H"), [[0, 0, 0], [0, 0, 0.96], [0.93, 0, -0.24]])
        >>> c = build_compact_integrals(water, xc="pbe", basis="sto-3g", grid_level=1)
        >>> c.nao, c.cderi_packed.shape[1] == c.nao * (c.nao + 1) // 2
        (7, True)
    """
    return compact_integrals_from_mean_field(make_mean_field(system, xc, basis, grid_level))
