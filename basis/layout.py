"""AO shell layout per element and the change of basis PySCF ↔ e3nn-jax irreps.

Everything about how PySCF orders and orients its atomic orbitals lives here:

* :func:`element_layout` — the shells ``(l, count)`` of one element in a PySCF
  basis, in PySCF's AO order, and the e3nn irreps string of its AO block.
* :func:`ao_offsets` — first AO index of each atom of a molecule.
* :func:`e3nn_to_pyscf` — the orthogonal matrix ``Q_l`` with
  ``Y_pyscf(u) = Q_l @ Y_e3nn(u)`` for the real spherical harmonics of degree
  ``l`` (PySCF: ``p`` as ``(px, py, pz)``, ``l >= 2`` as ``m = -l..l``; e3nn-jax:
  its own real basis). It is derived numerically, by fitting the two sets of
  harmonics at random directions, cached, and never typed in by hand.
* :func:`sph_rotation` / :func:`ao_rotation` — the matrix ``D(R)`` that rotates
  real spherical harmonics (``Y(R u) = D(R) Y(u)``) and its block-diagonal
  AO-space version for a molecule, in PySCF order. Rotating a molecule
  ``x -> R x`` maps an AO operator as ``H(R x) = D H(x) D^T``. Improper
  rotations (det R = -1) carry the parity ``(-1)^l`` automatically. These are
  built from PySCF's own Cartesian → spherical coefficients, independently of
  e3nn-jax, so tests can use them to check e3nn-based code.

Example:
    >>> import numpy as np
    >>> from basis.layout import element_layout, ao_rotation
    >>> element_layout("def2-svp", "O").irreps
    '3x0e+2x1o+1x2e'
    >>> D = ao_rotation("def2-svp", ("O", "H", "H"), np.eye(3))
    >>> D.shape
    (24, 24)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
from pyscf import gto

from basis.errors import BasisError
from basis.system import canonical_symbol, check_basis

__all__ = [
    "ElementLayout",
    "element_layout",
    "ao_offsets",
    "ao_permutation",
    "irreps_string",
    "real_sph_pyscf",
    "e3nn_to_pyscf",
    "sph_rotation",
    "ao_rotation",
]

CHANGE_OF_BASIS_TOL = 1e-12
"""Largest residual accepted when fitting one set of harmonics to the other."""

_N_FIT_POINTS_PER_DIM = 6


@dataclasses.dataclass(frozen=True)
class ElementLayout:
    """AO layout of one element in one basis.

    Attributes:
        symbol: element symbol.
        basis: basis name as given.
        shells: ``((l, count), ...)`` in PySCF AO order; consecutive shells of
            equal ``l`` (including general contractions) are merged.
        nao: number of spherical AOs of one atom, ``sum(count * (2l + 1))``.
        irreps: e3nn irreps string of the AO block, e.g. ``'3x0e+2x1o+1x2e'``;
            parity ``(-1)^l``. The AO vector in PySCF order equals the irreps
            vector after applying :func:`e3nn_to_pyscf` to each ``2l+1`` chunk.
    """

    symbol: str
    basis: str
    shells: tuple[tuple[int, int], ...]
    nao: int
    irreps: str

    @property
    def lmax(self) -> int:
        return max(l for l, _ in self.shells)

    def count(self, l: int) -> int:
        """Number of shells (contractions) of angular momentum ``l``."""
        return sum(c for ll, c in self.shells if ll == l)


def irreps_string(shells: Sequence[tuple[int, int]]) -> str:
    """e3nn irreps string of shells ``((l, count), ...)``, parity ``(-1)^l``."""
    return "+".join(f"{c}x{l}{'e' if l % 2 == 0 else 'o'}" for l, c in shells)


@functools.lru_cache(maxsize=None)
def element_layout(basis: str, symbol: str) -> ElementLayout:
    """Shells and irreps of one element's AO block, read from PySCF.

    Args:
        basis: PySCF basis name, e.g. ``"def2-svp"``.
        symbol: element symbol, any capitalisation.

    Returns:
        :class:`ElementLayout` (cached).

    Raises:
        UnknownElementError: not an element.
        BasisError: the basis is unknown or lacks the element.
    """

    symbol = canonical_symbol(symbol)
    check_basis(basis, [symbol])
    z = gto.charge(symbol)
    mol = gto.M(atom=[(symbol, (0.0, 0.0, 0.0))], basis=basis, spin=z % 2, verbose=0)
    if mol.cart:
        raise BasisError(f"basis {basis!r} uses Cartesian functions; only spherical AOs are supported")
    merged: list[list[int]] = []
    for ib in range(mol.nbas):
        l, nctr = int(mol.bas_angular(ib)), int(mol.bas_nctr(ib))
        if merged and merged[-1][0] == l:
            merged[-1][1] += nctr
        else:
            merged.append([l, nctr])
    shells = tuple((l, c) for l, c in merged)
    nao = sum(c * (2 * l + 1) for l, c in shells)
    if nao != mol.nao_nr():
        raise BasisError(f"unexpected AO count for {symbol} in {basis!r}")
    return ElementLayout(symbol, basis, shells, nao, irreps_string(shells))


def ao_offsets(basis: str, symbols: Sequence[str]) -> np.ndarray:
    """(natom + 1,) int: AOs of atom ``a`` are ``offsets[a]:offsets[a+1]`` in PySCF order."""
    sizes = [element_layout(basis, s).nao for s in symbols]
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def ao_permutation(basis: str, symbols: Sequence[str], perm: Sequence[int]) -> np.ndarray:
    """AO index map for a reordering of atoms.

    If the new molecule has atoms ``new[k] = old[perm[k]]``, an AO operator
    of it is ``H_new = H_old[idx][:, idx]`` with the returned ``idx`` (nao,).
    """
    offsets = ao_offsets(basis, symbols)
    return np.concatenate([np.arange(offsets[p], offsets[p + 1]) for p in perm]).astype(np.int64)


# --------------------------------------------------------------- harmonics
def _cart_exponents(l: int) -> np.ndarray:
    """(ncart, 3) exponents of PySCF's Cartesian order xx, xy, xz, yy, yz, zz, ..."""
    return np.array(
        [(lx, ly, l - lx - ly) for lx in range(l, -1, -1) for ly in range(l - lx, -1, -1)],
        dtype=np.int64,
    )


def real_sph_pyscf(l: int, xyz: np.ndarray) -> np.ndarray:
    """PySCF's real solid harmonics of degree ``l`` at points ``xyz``.

    Uses PySCF's own Cartesian → spherical coefficients (``gto.cart2sph``), so
    the order and signs are exactly those of PySCF's spherical AOs.

    Args:
        l: angular momentum.
        xyz: (n, 3) points (any length; the result scales as ``|r|^l``).

    Returns:
        (n, 2l+1) values in PySCF order.
    """

    xyz = np.asarray(xyz, dtype=np.float64)
    exps = _cart_exponents(l)
    cart = np.prod(xyz[:, None, :] ** exps[None, :, :], axis=-1)
    return cart @ np.asarray(gto.cart2sph(l), dtype=np.float64)


def _fit_points(l: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed + 7919 * l)
    u = rng.normal(size=(_N_FIT_POINTS_PER_DIM * (2 * l + 1) + 8, 3))
    return u / np.linalg.norm(u, axis=1, keepdims=True)


def _lstsq_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """M with ``b = a @ M.T`` exactly (checked), for row-wise samples a, b."""
    m, *_ = np.linalg.lstsq(a, b, rcond=None)
    resid = np.abs(a @ m - b).max() / max(np.abs(b).max(), 1e-300)
    if resid > CHANGE_OF_BASIS_TOL:
        raise RuntimeError(f"harmonics fit failed (relative residual {resid:.2e})")
    return m.T


@functools.lru_cache(maxsize=None)
def _e3nn_to_pyscf_cached(l: int) -> np.ndarray:

    u = _fit_points(l)
    irrep = e3nn.Irrep(l, (-1) ** l)
    # eager float64 evaluation, also when first called while an outer function is traced
    with jax.ensure_compile_time_eval(), jax.enable_x64(True):
        y_e3nn = np.asarray(
            e3nn.spherical_harmonics(str(irrep), jnp.asarray(u, dtype=jnp.float64), normalize=True).array,
            dtype=np.float64,
        )
    y_pyscf = real_sph_pyscf(l, u)
    q = _lstsq_map(y_e3nn, y_pyscf)
    # Both bases are orthonormal up to one common factor per l: remove it.
    scale = np.sqrt(np.trace(q @ q.T) / (2 * l + 1))
    q = q / scale
    if np.abs(q @ q.T - np.eye(2 * l + 1)).max() > CHANGE_OF_BASIS_TOL:
        raise RuntimeError(f"change of basis for l={l} is not orthogonal")
    q.flags.writeable = False
    return q


def e3nn_to_pyscf(l: int) -> np.ndarray:
    """Orthogonal (2l+1, 2l+1) change of basis: ``v_pyscf = Q @ v_e3nn``.

    Derived numerically from PySCF's and e3nn-jax's real spherical harmonics at
    random directions (``Y_pyscf(u) ∝ Q Y_e3nn(u)``), cached. For ``l = 1`` it
    is the identity; for ``l >= 2`` it is orthogonal but not a signed
    permutation. The inverse map is ``Q.T``.
    """
    if l < 0:
        raise ValueError(f"l must be >= 0, got {l}")
    return _e3nn_to_pyscf_cached(int(l))


def sph_rotation(l: int, rot: np.ndarray) -> np.ndarray:
    """(2l+1, 2l+1) ``D`` with ``Y_pyscf(R u) = D @ Y_pyscf(u)`` for all u.

    Built from PySCF's Cartesian → spherical coefficients only (no e3nn).
    Works for improper rotations: the parity ``(-1)^l`` is included.

    Args:
        l: angular momentum.
        rot: (3, 3) orthogonal matrix acting on column vectors.
    """
    rot = np.asarray(rot, dtype=np.float64)
    if rot.shape != (3, 3) or np.abs(rot @ rot.T - np.eye(3)).max() > 1e-8:
        raise ValueError("rot must be a 3x3 orthogonal matrix")
    u = _fit_points(l, seed=1)
    return _lstsq_map(real_sph_pyscf(l, u), real_sph_pyscf(l, u @ rot.T))


def ao_rotation(basis: str, symbols: Sequence[str], rot: np.ndarray) -> np.ndarray:
    """(nao, nao) AO-space rotation of a molecule, PySCF AO order.

    For a molecule with atoms ``symbols`` at positions ``x``, moving the atoms to
    ``R x + t`` changes every AO operator (Hamiltonian, overlap, density) as
    ``A(R x + t) = D @ A(x) @ D.T`` and AO values as
    ``ao_{Rx+t}(R r + t) = ao_x(r) @ D.T``. Block diagonal over atoms and shells.

    Args:
        basis: PySCF basis name.
        symbols: element symbols of the atoms, in order.
        rot: (3, 3) rotation or improper rotation (e.g. ``-I`` for inversion).
    """
    offsets = ao_offsets(basis, symbols)
    lmax = max(element_layout(basis, s).lmax for s in symbols)
    d_l = [sph_rotation(l, rot) for l in range(lmax + 1)]
    d = np.zeros((offsets[-1], offsets[-1]))
    for a, s in enumerate(symbols):
        i = offsets[a]
        for l, count in element_layout(basis, s).shells:
            n = 2 * l + 1
            for _ in range(count):
                d[i : i + n, i : i + n] = d_l[l]
                i += n
    return d
