"""Exchange-correlation energy: through libxc on the host, or in JAX on the device.

Host path (``backend="host"``):

jax-xc does not import with current JAX, so the semi-local XC energy density
and its first derivatives come from ``pyscf.dft.libxc.eval_xc`` inside
``jax.pure_callback``. The backward pass uses libxc's first derivatives:

    E_xc = Σ_g w_g ρ_g ε_xc(ρ_g, σ_g),   σ = |∇ρ|²
    ∂E_xc/∂ρ_g = w_g v_ρ(g),   ∂E_xc/∂∇ρ_g = 2 w_g v_σ(g) ∇ρ_g

A callback has no JVP and no second derivative: differentiate E_xc once
(the Fock matrix), and where a loss needs F[P] as a fixed target, stop the
gradient on P before calling F.

Device path (``backend="jax"``, no callback): :mod:`solvers.xc_jax` gives ε_xc, and
E_xc and V_xc are assembled in JAX from stored AO values or from AO values computed
block by block from the basis set (:func:`xc_energy_and_potential_from_shells`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from pyscf.dft import libxc  # host path only: called inside jax.pure_callback

from basis.functional import Functional
from solvers.ao import eval_ao
from solvers.xc_jax import xc_energy_density


def _libxc_eval(name: str, family: str, rho: np.ndarray):
    """Host-side libxc evaluation. rho: (..., nvar, ngrid) → exc, vrho, vsigma (..., ngrid)."""
    rho = np.asarray(rho, dtype=np.float64)
    lead = rho.shape[:-2]
    nvar, ngrid = rho.shape[-2:]
    flat = np.moveaxis(rho.reshape(-1, nvar, ngrid), 1, 0).reshape(nvar, -1)
    if family == "lda":
        exc, vxc = libxc.eval_xc(name, flat[0], spin=0, deriv=1)[:2]
        vsigma = np.zeros_like(exc)
    else:
        exc, vxc = libxc.eval_xc(name, flat, spin=0, deriv=1)[:2]
        vsigma = vxc[1]
    vrho = vxc[0]

    def shape(x):
        return np.asarray(x, dtype=np.float64).reshape(*lead, ngrid) if lead else np.asarray(x, dtype=np.float64).reshape(ngrid)

    return shape(exc), shape(vrho), shape(vsigma)


def _eval(functional: Functional, rho: jax.Array):
    ngrid = rho.shape[-1]
    out = jax.ShapeDtypeStruct(rho.shape[:-2] + (ngrid,), jnp.float64)
    return jax.pure_callback(
        functools.partial(_libxc_eval, functional.name, functional.family),
        (out, out, out),
        rho,
        vmap_method="broadcast_all",
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def xc_energy(functional: Functional, rho: jax.Array, weights: jax.Array) -> jax.Array:
    """Semi-local XC energy, Hartree.

    Args:
        functional: parsed functional (static).
        rho: (nvar, ngrid) density on the grid; nvar = 1 (LDA: ρ) or 4
            (GGA: ρ, ∂ρ/∂x, ∂ρ/∂y, ∂ρ/∂z). Electrons per Bohr³.
        weights: (ngrid,) quadrature weights. Treated as constants.

    Returns:
        () E_xc = Σ_g w_g ρ_g ε_xc(g).
    """
    exc, _, _ = _eval(functional, rho)
    return jnp.sum(weights * rho[0] * exc)


def _xc_energy_fwd(functional, rho, weights):
    exc, vrho, vsigma = _eval(functional, rho)
    return jnp.sum(weights * rho[0] * exc), (rho, weights, vrho, vsigma)


def _xc_energy_bwd(functional, residuals, g):
    rho, weights, vrho, vsigma = residuals
    d_rho0 = g * weights * vrho
    if rho.shape[0] == 1:
        d_rho = d_rho0[None]
    else:
        d_grad = 2.0 * g * (weights * vsigma)[None] * rho[1:4]
        d_rho = jnp.concatenate([d_rho0[None], d_grad], axis=0)
    return d_rho, jnp.zeros_like(weights)


xc_energy.defvjp(_xc_energy_fwd, _xc_energy_bwd)


def density_on_grid(P: jax.Array, ao: jax.Array) -> jax.Array:
    """Electron density (and its gradient) on the grid from a density matrix.

    Args:
        P: (nao, nao) symmetric AO density matrix.
        ao: (nderiv, ngrid, nao) AO values (nderiv = 1) or values and first
            derivatives (nderiv = 4).

    Returns:
        (nderiv, ngrid): ρ, and for nderiv = 4 also ∇ρ = 2 Σ_ij ∇φ_i P_ij φ_j.
    """
    t = ao[0] @ P
    rho = jnp.sum(t * ao[0], axis=-1)
    if ao.shape[0] == 1:
        return rho[None]
    grad = 2.0 * jnp.einsum("xgi,gi->xg", ao[1:4], t)
    return jnp.concatenate([rho[None], grad], axis=0)


# --------------------------------------------------------------------------
# Host path: E_xc and V_xc from the density matrix in one callback.
#
# XLA's CPU backend is slow at the row-wise contractions ρ = Σ_i φ_gi (φP)_gi
# and ∇ρ (benchmarks/solver_core.py --profile: 70–95 % of an energy+Fock
# evaluation). On the host the same work is two BLAS products and one
# element-wise pass. The custom VJP returns V_xc, the exact ∂E_xc/∂P.


def _host_xc_energy_and_potential(name: str, family: str, P, ao, weights):
    """E_xc (Hartree) and V_xc (nao, nao) of a closed-shell P on the grid (numpy, host)."""
    P = np.asarray(P, dtype=np.float64)
    ao = np.asarray(ao, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    t = ao[0] @ P  # (g, n)
    rho0 = np.einsum("gi,gi->g", ao[0], t)
    if family == "lda":
        exc, vxc = libxc.eval_xc(name, rho0, spin=0, deriv=1)[:2]
        wv0 = w * vxc[0]
        aow = ao[0] * wv0[:, None]
        V = ao[0].T @ aow
    else:
        grad = 2.0 * np.einsum("xgi,gi->xg", ao[1:4], t)
        rho = np.concatenate([rho0[None], grad], axis=0)
        exc, vxc = libxc.eval_xc(name, rho, spin=0, deriv=1)[:2]
        vrho, vsigma = vxc[0], vxc[1]
        # E depends on P through ρ and ∇ρ: V = Σ_g w [vρ φφ^T + 2 vσ ∇ρ·(∇φ φ^T + φ ∇φ^T)]
        wv0 = 0.5 * w * vrho
        wvg = 2.0 * w * vsigma * grad  # (3, g)
        aow = ao[0] * wv0[:, None] + np.einsum("xg,xgi->gi", wvg, ao[1:4])
        V = ao[0].T @ aow
        V = V + V.T
    if family == "lda":
        V = 0.5 * (V + V.T)
    e = float(np.dot(w * rho0, exc))
    return np.float64(e), V


def _host_eval(functional: Functional, P, ao, weights):
    nao = P.shape[-1]
    shapes = (jax.ShapeDtypeStruct((), jnp.float64), jax.ShapeDtypeStruct((nao, nao), jnp.float64))
    return jax.pure_callback(
        functools.partial(_host_xc_energy_and_potential, functional.name, functional.family),
        shapes,
        P,
        ao,
        weights,
        vmap_method="sequential",
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def xc_energy_from_density_matrix(functional: Functional, P: jax.Array, ao: jax.Array, weights: jax.Array) -> jax.Array:
    """Semi-local XC energy of density matrix P, Hartree; ∂E/∂P = V_xc.

    Args:
        functional: parsed functional (static).
        P: (nao, nao) symmetric density matrix.
        ao: (nderiv, ngrid, nao) AO values (nderiv = 1 for LDA, 4 for GGA). Constant.
        weights: (ngrid,) quadrature weights. Constant.

    Equal to ``xc_energy(functional, density_on_grid(P, ao), weights)``; the
    work is done on the host in one callback (first derivatives only).
    """
    return _host_eval(functional, P, ao, weights)[0]


def _xcP_fwd(functional, P, ao, weights):
    e, V = _host_eval(functional, P, ao, weights)
    return e, (V, ao, weights)


def _xcP_bwd(functional, res, g):
    V, ao, weights = res
    return g * V, jnp.zeros_like(ao), jnp.zeros_like(weights)


xc_energy_from_density_matrix.defvjp(_xcP_fwd, _xcP_bwd)


# --------------------------------------------------------------------------
# Device path: E_xc and V_xc in JAX (no callback), from stored AO values or from the
# basis set block by block. One pass per grid block gives both: the per-point
# derivatives v_ρ, v_σ come from autodiff of ρ ε_xc(ρ, σ) (:mod:`solvers.xc_jax`),
# then V_xc is assembled as on the host. solvers.energy gives E_xc the gradient V_xc,
# the exact ∂E_xc/∂P (first derivatives only, like the host path).

XC_BLOCK = 8192
"""Grid points per block when AO values are computed on the device: AO values and
gradients of one block take 4 · XC_BLOCK · nao · 8 bytes (45 MB at nao = 170)."""

FAR_AWAY = 1.0e4
"""Bohr: where padded grid points sit (weight 0; AO values underflow to exactly 0)."""


def _block_energy_and_potential(functional: Functional, P, ao, weights):
    """E_xc and V_xc (nao, nao) of one grid block; ao: (nderiv, nblock, nao)."""
    t = ao[0] @ P
    rho0 = jnp.sum(ao[0] * t, axis=-1)
    if functional.family == "lda":
        def density_energy(r):
            return jnp.sum(weights * r * xc_energy_density(functional, r))

        e, vrho = jax.value_and_grad(density_energy)(rho0)  # vrho already carries the weights
        aow = ao[0] * (0.5 * vrho)[:, None]
    else:
        grad = 2.0 * jnp.einsum("xgi,gi->xg", ao[1:4], t)
        sigma = jnp.sum(grad * grad, axis=0)

        def density_energy(r, s):
            return jnp.sum(weights * r * xc_energy_density(functional, r, s))

        e, (vrho, vsigma) = jax.value_and_grad(density_energy, argnums=(0, 1))(rho0, sigma)
        aow = ao[0] * (0.5 * vrho)[:, None] + jnp.einsum("xg,xgi->gi", 2.0 * vsigma * grad, ao[1:4])
    V = ao[0].T @ aow
    return e, V + V.T


def xc_energy_and_potential_jax(functional: Functional, P, ao, weights):
    """E_xc (Hartree) and V_xc (nao, nao) on stored AO values, in JAX.

    Args:
        functional: parsed functional (static), LDA or GGA.
        P: (nao, nao) symmetric density matrix.
        ao: (nderiv, ngrid, nao) AO values (and gradients for GGAs).
        weights: (ngrid,) quadrature weights.
    """
    return _block_energy_and_potential(functional, P, ao[: 1 + 3 * (functional.family == "gga")], weights)


def xc_energy_and_potential_from_shells(functional: Functional, P, shells, coords, weights, block: int = XC_BLOCK):
    """E_xc and V_xc with AO values computed from ``shells`` one grid block at a time.

    Memory: one block's AO values, never the whole grid's. Equal to
    :func:`xc_energy_and_potential_jax` on ``eval_ao(shells, coords)`` to round-off.

    Args:
        shells: :class:`basis.shells.AOShells` of the molecule (possibly padded).
        coords: (ngrid, 3) grid points, Bohr; weights (ngrid,).
        block: grid points per block (static).
    """
    ngrid = coords.shape[0]
    nblock = max(1, -(-ngrid // block))
    block = -(-ngrid // nblock)  # equal blocks of at most ``block`` points: little padding
    pad = nblock * block - ngrid
    coords = jnp.concatenate([coords, jnp.full((pad, 3), FAR_AWAY, coords.dtype)]).reshape(nblock, block, 3)
    weights = jnp.pad(weights, (0, pad)).reshape(nblock, block)
    deriv = functional.ao_deriv
    nao = P.shape[-1]

    def body(carry, xs):
        c, w = xs
        e, V = _block_energy_and_potential(functional, P, eval_ao(shells, c, deriv), w)
        return (carry[0] + e, carry[1] + V), None

    (e, V), _ = jax.lax.scan(body, (jnp.zeros((), P.dtype), jnp.zeros((nao, nao), P.dtype)), (coords, weights))
    return e, V
