"""Total energy E[P] of a closed-shell density matrix, and Fock = ∂E/∂P.

    E[P] = tr(P h) + E_J[P] + E_K[P] + E_xc[ρ_P] + E_nuc
    E_J  = ½ Σ_Q d_Q²,              d_Q = Σ_ij L_Qij P_ij
    E_K  = −(a/4) Σ_Q tr(L_Q P L_Q P)   (a: fraction of exact exchange)

with the density-fitting factor L of :class:`basis.integrals.Integrals`. The
Fock matrix is the symmetrised gradient of this one function; there is no
separately hand-written Fock builder. For symmetric P it equals PySCF's
``h + J − (a/2) K + V_xc``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from basis.integrals import Integrals
from solvers.xc import xc_energy_from_density_matrix


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


def energy_components(P: jax.Array, ints: Integrals) -> EnergyComponents:
    """All energy terms of density matrix ``P`` (nao, nao), Hartree."""
    functional = ints.functional
    one = jnp.sum(P * ints.hcore)
    d = jnp.einsum("qij,ij->q", ints.cderi, P)
    hartree = 0.5 * jnp.dot(d, d)
    if functional.exact_exchange != 0.0:
        m = jnp.einsum("qij,jk->qik", ints.cderi, P)
        exchange = -0.25 * functional.exact_exchange * jnp.einsum("qij,qji->", m, m)
    else:
        exchange = jnp.zeros((), P.dtype)
    if functional.needs_grid:
        exc = xc_energy_from_density_matrix(functional, P, ints.ao, ints.weights)
    else:
        exc = jnp.zeros((), P.dtype)
    return EnergyComponents(one, hartree, exchange, exc, ints.e_nuc)


def energy(P: jax.Array, ints: Integrals) -> tuple[jax.Array, EnergyComponents]:
    """Total energy (Hartree, shape ()) and its components."""
    comps = energy_components(P, ints)
    return comps.total, comps


def total_energy(P: jax.Array, ints: Integrals) -> jax.Array:
    """Total energy only, Hartree."""
    return energy_components(P, ints).total


def fock(P: jax.Array, ints: Integrals) -> jax.Array:
    """Fock / Kohn–Sham matrix F = ∂E/∂P, symmetrised, (nao, nao) Hartree."""
    g = jax.grad(total_energy)(P, ints)
    return 0.5 * (g + g.T)


def energy_and_fock(P: jax.Array, ints: Integrals) -> tuple[jax.Array, EnergyComponents, jax.Array]:
    """Energy, its components and F = ∂E/∂P in one forward+backward pass."""
    (e, comps), g = jax.value_and_grad(energy, has_aux=True)(P, ints)
    return e, comps, 0.5 * (g + g.T)
