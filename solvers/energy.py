"""Total energy E[P] of a closed-shell density matrix, and Fock = ∂E/∂P.

    E[P] = tr(P h) + E_J[P] + E_K[P] + E_xc[ρ_P] + E_nuc
    E_J  = ½ Σ_Q d_Q²,              d_Q = Σ_ij L_Qij P_ij
    E_K  = −(a/4) Σ_Q tr(L_Q P L_Q P)   (a: fraction of exact exchange)

with the density-fitting factor L of :class:`basis.integrals.Integrals` (or, packed,
of :class:`basis.integrals.CompactIntegrals`). The Fock matrix is the symmetrised
gradient of this one function; there is no separately hand-written Fock builder. For
symmetric P it equals PySCF's ``h + J − (a/2) K + V_xc``.

The semi-local XC term runs where ``ints.backend`` says: ``"host"`` (libxc in a host
callback) or ``"jax"`` (:mod:`solvers.xc_jax`, on stored AO values for
:class:`Integrals`, on AO values computed block by block for :class:`CompactIntegrals`).
Either way its gradient is V_xc through the value-and-gradient identity
``E = sg(E) + ⟨sg(V), P − sg(P)⟩``: exact first derivatives, no second ones. Exact
exchange is written the same way, from K = Σ_Q L_Q P L_Q built once.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from basis.integrals import CompactIntegrals, Integrals
from solvers.xc import (
    xc_energy_and_potential_from_shells,
    xc_energy_and_potential_jax,
    xc_energy_from_density_matrix,
)


class EnergyComponents(NamedTuple):
    """Energy terms, Hartree, each of shape ()."""

    one_electron: jax.Array  # kinetic + nuclear attraction, tr(P h)
    hartree: jax.Array  # classical Coulomb E_J
    exchange: jax.Array  # exact exchange E_K (already scaled by its fraction)
    xc: jax.Array  # semi-local exchange-correlation
    nuclear: jax.Array  # nuclear repulsion

    @property
    def total(self) -> jax.Array:
        return self.one_electron + self.hartree + self.exchange + self.xc + self.nuclear


EXCHANGE_CHUNK_BYTES = 32 * 2**20
"""Bytes of unpacked density-fitting factor the exchange term holds at once (packed input)."""


def _pair_weights(nao: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, columns (PySCF's packed order, pair i ≥ j at i(i+1)/2 + j) and the weight of
    each packed pair in a symmetric contraction (1 on the diagonal, 2 off it)."""
    rows, cols = np.tril_indices(nao)
    return rows, cols, np.where(rows == cols, 1.0, 2.0)


def _unpack_index(nao: int) -> np.ndarray:
    """(nao, nao) position of element (i, j) in the packed lower triangle."""
    i, j = np.maximum.outer(np.arange(nao), np.arange(nao)), np.minimum.outer(np.arange(nao), np.arange(nao))
    return i * (i + 1) // 2 + j


def _coulomb_packed(P, cderi_packed):
    rows, cols, w = _pair_weights(P.shape[-1])
    d = cderi_packed @ (P[rows, cols] * w)
    return 0.5 * jnp.dot(d, d)


def _exchange_matrix(P, cderi, orbitals=None):
    """K = Σ_Q L_Q P L_Q (nao, nao) from the dense factor (naux, nao, nao); with
    ``orbitals`` Y (nao, r), P = Y Yᵀ, as Σ_Q (L_Q Y)(L_Q Y)ᵀ (r/nao of the work)."""
    if orbitals is None:
        return jnp.einsum("qij,jk,qkl->il", cderi, P, cderi, optimize=[(0, 1), (0, 1)])
    A = jnp.einsum("qij,ja->qia", cderi, orbitals)
    return jnp.einsum("qia,qja->ij", A, A)


def _exchange_matrix_packed(P, cderi_packed, orbitals=None):
    """:func:`_exchange_matrix` from the packed factor, unpacking a chunk of Q at a time."""
    naux, npair = cderi_packed.shape
    nao = P.shape[-1]
    chunk = int(max(1, min(naux, EXCHANGE_CHUNK_BYTES // (8 * nao * nao))))
    nchunk = -(-naux // chunk)
    L = jnp.pad(cderi_packed, [(0, nchunk * chunk - naux), (0, 0)]).reshape(nchunk, chunk, npair)
    index = _unpack_index(nao)

    def body(acc, Lp):
        return acc + _exchange_matrix(P, Lp[:, index], orbitals), None

    K, _ = jax.lax.scan(body, jnp.zeros((nao, nao), P.dtype), L)
    return K


def _exchange(P, ints, orbitals=None):
    """E_K = −(a/4) tr(P K) with K = Σ_Q L_Q P L_Q, whose gradient is −(a/2) K (exact
    first derivatives through the value-and-gradient identity, none of second order).

    Building K once costs two products per Q (with ``orbitals``, two thin ones); autodiff
    of tr(L P L P) needed K twice and the forward products again."""
    sg = jax.lax.stop_gradient
    Ps = sg(P)
    Y = None if orbitals is None else sg(orbitals)
    if isinstance(ints, CompactIntegrals):
        K = _exchange_matrix_packed(Ps, ints.cderi_packed, Y)
    else:
        K = _exchange_matrix(Ps, ints.cderi, Y)
    a = ints.functional.exact_exchange
    return _with_gradient(-0.25 * a * jnp.sum(Ps * K), -0.5 * a * K, P)


def _with_gradient(value, gradient, P):
    """``value`` whose derivative with respect to ``P`` is ``gradient`` (both constants)."""
    sg = jax.lax.stop_gradient
    return sg(value) + jnp.sum(sg(gradient) * (P - sg(P)))


def _xc(P, ints) -> jax.Array:
    functional = ints.functional
    if not functional.needs_grid:
        return jnp.zeros((), P.dtype)
    if isinstance(ints, CompactIntegrals):
        e, V = xc_energy_and_potential_from_shells(
            functional, jax.lax.stop_gradient(P), ints.shells, ints.coords, ints.weights
        )
    elif ints.backend == "jax":
        e, V = xc_energy_and_potential_jax(functional, jax.lax.stop_gradient(P), ints.ao, ints.weights)
    else:
        return xc_energy_from_density_matrix(functional, P, ints.ao, ints.weights)
    return _with_gradient(e, V, P)


def energy_components(P: jax.Array, ints: Integrals | CompactIntegrals, orbitals=None) -> EnergyComponents:
    """All energy terms of density matrix ``P`` (nao, nao), Hartree.

    ``orbitals``: optional Y (nao, r) with P = Y Yᵀ exactly (for an aufbau density, the
    occupied orbitals times √2, padded with zero columns): the exchange term then costs
    r/nao of the general one. The caller vouches for P = Y Yᵀ; gradients are taken with
    respect to P only."""
    one = jnp.sum(P * ints.hcore)
    exchange = jnp.zeros((), P.dtype)
    if isinstance(ints, CompactIntegrals):
        hartree = _coulomb_packed(P, ints.cderi_packed)
    else:
        d = jnp.einsum("qij,ij->q", ints.cderi, P)
        hartree = 0.5 * jnp.dot(d, d)
    if ints.functional.exact_exchange != 0.0:
        exchange = _exchange(P, ints, orbitals)
    return EnergyComponents(one, hartree, exchange, _xc(P, ints), ints.e_nuc)


def energy(P: jax.Array, ints: Integrals, orbitals=None) -> tuple[jax.Array, EnergyComponents]:
    """Total energy (Hartree, shape ()) and its components."""
    comps = energy_components(P, ints, orbitals)
    return comps.total, comps


def total_energy(P: jax.Array, ints: Integrals) -> jax.Array:
    """Total energy only, Hartree."""
    return energy_components(P, ints).total


def fock(P: jax.Array, ints: Integrals) -> jax.Array:
    """Fock / Kohn–Sham matrix F = ∂E/∂P, symmetrised, (nao, nao) Hartree."""
    g = jax.grad(total_energy)(P, ints)
    return 0.5 * (g + g.T)


def energy_and_fock(P: jax.Array, ints: Integrals, orbitals=None) -> tuple[jax.Array, EnergyComponents, jax.Array]:
    """Energy, its components and F = ∂E/∂P in one forward+backward pass (``orbitals``:
    see :func:`energy_components`)."""
    (e, comps), g = jax.value_and_grad(energy, has_aux=True)(P, ints, orbitals)
    return e, comps, 0.5 * (g + g.T)
