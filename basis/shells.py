"""Host side of on-device AO evaluation: a molecule's Gaussian shells as arrays.

:func:`ao_shells` reads a PySCF ``Mole`` once and returns an :class:`AOShells`
pytree: shell centres, primitive exponents, contraction coefficients (with
PySCF's normalisation folded in) and where each AO goes in PySCF's AO order.
:func:`solvers.ao.eval_ao` turns it into AO values and gradients on any grid,
equal to ``pyscf.dft.numint.eval_ao``.

PySCF's spherical AO of a shell (centre ``A``, exponents ``α_p``, coefficients
``c_pk`` of contraction ``k``) at ``r``, with ``d = r - A``, is

    φ_km(r) = Σ_p c_pk exp(-α_p |d|²) · Σ_c d_x^lx d_y^ly d_z^lz T_cm,

where ``T = pyscf.gto.cart2sph(l)`` (which carries libcint's extra factors
``1/√(4π)`` for s and ``√(3/(4π))`` for p) and ``c`` runs over PySCF's
Cartesian order (:func:`cartesian_powers`). The coefficients are PySCF's own
``mol._libcint_ctr_coeff`` (primitive and contraction normalisation included).

Shells are grouped by their key ``(l, nprim)``: angular momentum and number of
primitives. Grouping by ``l`` alone would pad every shell to the group's
longest contraction; for def2-SVP most shells have one primitive and a few
have 3-5, and padding doubles the exponentials evaluated per grid point.

Buckets: :func:`pad_ao_shells` pads one molecule to common shapes (padded shells
have zero coefficients and write into a dump slot, so padded AOs are exactly
zero) and :func:`stack_ao_shells` pads a list to the common maximum
(:func:`common_shapes`) and stacks it on a new leading axis, for ``jax.vmap``.

Example:
    >>> from pyscf import gto
    >>> from basis.shells import ao_shells, stack_ao_shells
    >>> water = gto.M(atom="O 0 0 0; H 0 .76 .59; H 0 -.76 .59", basis="cc-pvdz")
    >>> shells = ao_shells(water)
    >>> shells.keys, shells.nao                  # (l, nprim) per group
    (((0, 1), (0, 3), (0, 8), (1, 1), (1, 3), (2, 1)), 24)
    >>> shells.coefficients[2].shape             # O 1s/2s: one shell, 8 primitives, 2 contractions
    (1, 8, 2)
    >>> ammonia = gto.M(atom="N 0 0 0; H 0 .94 .38; H .81 -.47 .38; H -.81 -.47 .38", basis="cc-pvdz")
    >>> bucket = stack_ao_shells([shells, ao_shells(ammonia)])
    >>> bucket.nao, bucket.ao_index[1].shape     # (nmol, nshell, nctr, 2l+1)
    (29, (2, 3, 1, 1))
"""

from __future__ import annotations

import functools
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from pyscf import gto

from basis.errors import BasisError

__all__ = [
    "AOShells",
    "ao_shells",
    "cart2sph_matrix",
    "cartesian_powers",
    "common_shapes",
    "pad_ao_shells",
    "stack_ao_shells",
]

PAD_EXPONENT = 1.0
"""Exponent of padded primitives (their coefficient is zero, so any finite value works)."""

GroupKey = tuple[int, int]
"""``(l, nprim)``: angular momentum and primitives per shell of one group."""


@struct.dataclass
class AOShells:
    """Contracted real-spherical Gaussian shells of one molecule, in groups.

    A group holds the shells of one key ``(l, nprim)`` in PySCF's shell order;
    groups are sorted by key. Array fields are tuples with one entry per group
    (pytree leaves; a stacked bucket has an extra leading molecule axis on
    every leaf):

        centers[i]: (nshell, 3) float64 shell centres, Bohr.
        exponents[i]: (nshell, nprim) float64 primitive exponents, Bohr⁻².
        coefficients[i]: (nshell, nprim, nctr) float64 contraction coefficients
            including PySCF's normalisation; a PySCF shell with ``nctr > 1``
            (general contraction, e.g. cc-pVXZ) keeps its contractions on the
            last axis; zero for padded contractions and shells.
        ao_index[i]: (nshell, nctr, 2l+1) int32 position of each AO in PySCF's
            AO order; padded contractions and shells point at ``nao``, a dump
            slot that is dropped.

    Padded shells have exponents :data:`PAD_EXPONENT` and centre 0.

    Static fields (not traced; equal across a bucket):
        ls: angular momentum of each group.
        nao: number of AOs (columns of the evaluated AO matrix).
        cart2sph: per group, PySCF's (ncart, 2l+1) Cartesian → spherical matrix
            (:func:`cart2sph_matrix`) as nested tuples (hashable).
    """

    centers: tuple[jax.Array, ...]
    exponents: tuple[jax.Array, ...]
    coefficients: tuple[jax.Array, ...]
    ao_index: tuple[jax.Array, ...]
    ls: tuple[int, ...] = struct.field(pytree_node=False)
    nao: int = struct.field(pytree_node=False)
    cart2sph: tuple[tuple[tuple[float, ...], ...], ...] = struct.field(pytree_node=False)

    @property
    def keys(self) -> tuple[GroupKey, ...]:
        """``(l, nprim)`` of each group (from static shapes; works on tracers)."""
        return tuple((l, int(e.shape[-1])) for l, e in zip(self.ls, self.exponents))

    def nshell(self, key: GroupKey) -> int:
        """Number of (padded) shells of group ``key``; 0 if absent."""
        return int(self.centers[self.keys.index(key)].shape[-2]) if key in self.keys else 0

    def nctr(self, key: GroupKey) -> int:
        """Contractions per shell of group ``key``; 0 if absent."""
        return int(self.coefficients[self.keys.index(key)].shape[-1]) if key in self.keys else 0


# --------------------------------------------------------------- angular part
def cartesian_powers(l: int) -> np.ndarray:
    """(ncart, 3) int exponents ``(lx, ly, lz)`` in PySCF's Cartesian order.

    ``ncart = (l+1)(l+2)/2``; the order is xx, xy, xz, yy, yz, zz for ``l = 2``
    (``lx`` descending, then ``ly`` descending). Pure Python: the device side
    uses it to build the monomials the matrices of :func:`cart2sph_matrix` act on.

    >>> cartesian_powers(2).tolist()
    [[2, 0, 0], [1, 1, 0], [1, 0, 1], [0, 2, 0], [0, 1, 1], [0, 0, 2]]
    """
    if l < 0:
        raise ValueError(f"l must be >= 0, got {l}")
    powers = [(lx, ly, l - lx - ly) for lx in range(l, -1, -1) for ly in range(l - lx, -1, -1)]
    return np.array(powers, dtype=np.int64).reshape(-1, 3)


@functools.lru_cache(maxsize=None)
def _cart2sph_tuple(l: int) -> tuple[tuple[float, ...], ...]:
    # normalized=None: libcint's s/p factors included, as numint.eval_ao applies them
    t = np.asarray(gto.cart2sph(l), dtype=np.float64)
    if t.shape != ((l + 1) * (l + 2) // 2, 2 * l + 1):
        raise RuntimeError(f"unexpected cart2sph shape {t.shape} for l={l}")
    return tuple(tuple(float(v) for v in row) for row in t)


def cart2sph_matrix(l: int) -> np.ndarray:
    """(ncart, 2l+1) PySCF's Cartesian → real-spherical matrix for ``eval_ao``.

    ``pyscf.gto.cart2sph(l)``: rows in :func:`cartesian_powers` order, columns in
    PySCF's spherical order (``px, py, pz`` for p; ``m = -l..l`` for ``l >= 2``),
    with libcint's factor ``1/√(4π)`` (s) and ``√(3/(4π))`` (p).
    """
    return np.array(_cart2sph_tuple(int(l)))


# --------------------------------------------------------------- from PySCF
def ao_shells(mol: gto.Mole) -> AOShells:
    """The shells of a built PySCF ``Mole`` (spherical AOs only).

    Within a group, shells are padded to the group's largest ``nctr``
    (padded contractions: zero coefficients, dump slot).

    Args:
        mol: a built ``pyscf.gto.Mole`` with ``cart=False``.

    Returns:
        :class:`AOShells` with numpy leaves; ``nao == mol.nao_nr()``.

    Raises:
        BasisError: ``mol.cart`` is True (Cartesian AOs are not supported).
    """
    if mol.cart:
        raise BasisError("Cartesian AOs (mol.cart=True) are not supported; build the molecule with cart=False")
    nao = int(mol.nao_nr())
    ao_loc = mol.ao_loc_nr()
    by_key: dict[GroupKey, list[int]] = {}
    for ib in range(mol.nbas):
        by_key.setdefault((int(mol.bas_angular(ib)), int(mol.bas_nprim(ib))), []).append(ib)
    groups = []
    for l, nprim in sorted(by_key):
        ids = by_key[(l, nprim)]
        nctr = max(int(mol.bas_nctr(ib)) for ib in ids)
        centers = np.zeros((len(ids), 3))
        exps = np.zeros((len(ids), nprim))
        coefs = np.zeros((len(ids), nprim, nctr))
        index = np.full((len(ids), nctr, 2 * l + 1), nao, dtype=np.int32)
        for s, ib in enumerate(ids):
            # (nprim, nctr) as libcint uses them: primitive and contraction normalisation included
            c = np.asarray(mol._libcint_ctr_coeff(ib), dtype=np.float64)
            centers[s] = mol.bas_coord(ib)
            exps[s] = mol.bas_exp(ib)
            coefs[s, :, : c.shape[1]] = c
            index[s, : c.shape[1]] = ao_loc[ib] + np.arange(c.shape[1] * (2 * l + 1)).reshape(-1, 2 * l + 1)
        groups.append((l, centers, exps, coefs, index))
    return _build(groups, nao)


def _build(groups, nao: int) -> AOShells:
    """AOShells from ``[(l, centers, exponents, coefficients, ao_index), ...]``.

    Leaves stay numpy arrays (host side: no device transfer per small array; the
    jitted :func:`solvers.ao.eval_ao` and stacking move them once)."""
    return AOShells(
        centers=tuple(np.asarray(g[1], dtype=np.float64) for g in groups),
        exponents=tuple(np.asarray(g[2], dtype=np.float64) for g in groups),
        coefficients=tuple(np.asarray(g[3], dtype=np.float64) for g in groups),
        ao_index=tuple(np.asarray(g[4], dtype=np.int32) for g in groups),
        ls=tuple(int(g[0]) for g in groups),
        nao=int(nao),
        cart2sph=tuple(_cart2sph_tuple(int(g[0])) for g in groups),
    )


# --------------------------------------------------------------- buckets
def common_shapes(shells_list: Sequence[AOShells]) -> tuple[dict[GroupKey, int], dict[GroupKey, int], int]:
    """Bucket shapes that fit every molecule of ``shells_list``.

    Returns:
        ``(nshell, nctr, nao)``: per group key the largest shell count and
        contraction count, and the largest AO count; the arguments
        :func:`pad_ao_shells` takes.
    """
    if not shells_list:
        raise ValueError("common_shapes needs at least one molecule")
    keys = sorted(set().union(*(s.keys for s in shells_list)))
    nshell = {k: max(s.nshell(k) for s in shells_list) for k in keys}
    nctr = {k: max(s.nctr(k) for s in shells_list) for k in keys}
    return nshell, nctr, max(s.nao for s in shells_list)


def pad_ao_shells(
    shells: AOShells,
    nshell: Mapping[GroupKey, int],
    nao: int,
    nctr: Mapping[GroupKey, int] | None = None,
) -> AOShells:
    """Pad one molecule's shells to bucket shapes.

    Padded shells and contractions have zero coefficients and write into the
    dump slot; AO columns ``shells.nao .. nao-1`` are zero everywhere.

    Args:
        shells: unstacked shells (:func:`ao_shells`).
        nshell: shells per group key ``(l, nprim)``; a key the molecule lacks
            (with a count > 0) adds an all-padding group; a key of the molecule
            missing here keeps its own count.
        nao: number of AO columns (>= ``shells.nao``).
        nctr: contractions per shell per key; None or a missing key keeps the
            group's own (1 for added groups).

    Returns:
        Padded :class:`AOShells` (groups sorted by key).

    Raises:
        ValueError: a requested size is smaller than the molecule's, or
            ``shells`` is a stacked bucket.

    Example:
        >>> from pyscf import gto
        >>> from basis.shells import ao_shells, pad_ao_shells
        >>> h2 = ao_shells(gto.M(atom="H 0 0 0; H 0 0 .74", basis="sto-3g"))
        >>> padded = pad_ao_shells(h2, {(0, 3): 3, (1, 1): 2}, nao=12)
        >>> padded.keys, padded.nao, padded.ao_index[1].ravel().tolist()
        (((0, 3), (1, 1)), 12, [12, 12, 12, 12, 12, 12])
    """
    if shells.centers and shells.centers[0].ndim != 2:
        raise ValueError("pad_ao_shells takes the shells of one molecule, not a stacked bucket")
    if nao < shells.nao:
        raise ValueError(f"cannot pad {shells.nao} AOs down to {nao}")
    nctr = {} if nctr is None else nctr
    keys = sorted(set(shells.keys) | {(int(k[0]), int(k[1])) for k, n in nshell.items() if n > 0})
    groups = []
    for key in keys:
        l, nprim = key
        if key in shells.keys:
            i = shells.keys.index(key)
            centers, exps = np.asarray(shells.centers[i]), np.asarray(shells.exponents[i])
            coefs, index = np.asarray(shells.coefficients[i]), np.asarray(shells.ao_index[i])
            index = np.where(index == shells.nao, nao, index)  # old dump slot -> new one
        else:
            centers, exps = np.zeros((0, 3)), np.zeros((0, nprim))
            coefs, index = np.zeros((0, nprim, 1)), np.zeros((0, 1, 2 * l + 1), dtype=np.int32)
        ns, nc = coefs.shape[0], coefs.shape[2]
        ns2, nc2 = int(nshell.get(key, ns)), int(nctr.get(key, nc))
        if ns2 < ns or nc2 < nc:
            raise ValueError(f"cannot pad group {key} of shape (nshell {ns}, nctr {nc}) down to ({ns2}, {nc2})")
        groups.append(
            (
                l,
                np.pad(centers, [(0, ns2 - ns), (0, 0)]),
                np.pad(exps, [(0, ns2 - ns), (0, 0)], constant_values=PAD_EXPONENT),
                np.pad(coefs, [(0, ns2 - ns), (0, 0), (0, nc2 - nc)]),
                np.pad(index, [(0, ns2 - ns), (0, nc2 - nc), (0, 0)], constant_values=nao),
            )
        )
    return _build(groups, nao)


def stack_ao_shells(shells_list: Sequence[AOShells]) -> AOShells:
    """Pad molecules to their :func:`common_shapes` and stack them on a new axis 0.

    For ``jax.vmap(eval_ao, in_axes=(0, 0))`` over a size bucket.

    Args:
        shells_list: unstacked shells of one or more molecules.

    Returns:
        :class:`AOShells` whose leaves have a leading axis ``len(shells_list)``.
    """
    nshell, nctr, nao = common_shapes(shells_list)
    padded = [pad_ao_shells(s, nshell, nao, nctr) for s in shells_list]
    return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *padded)
