"""Pulay's DIIS (direct inversion in the iterative subspace), pure and optax-style.

One implementation for both SCFs: the molecular one (real (nao, nao) Fock
matrices, error X^T(FPS − SPF)X) and the periodic one (complex (nk, nao, nao),
error F P S − S P F at each k). The state is a fixed-size circular history, so
``diis_update`` compiles once and serves every cycle.

Given the last m pairs (F_i, e_i), the extrapolated Fock matrix is Σ_i c_i F_i
with c minimising |Σ_i c_i e_i|² subject to Σ_i c_i = 1:

    [ B   −1 ] [c]   [ 0 ]
    [ −1ᵀ  0 ] [λ] = [ −1 ],   B_ij = Re⟨e_i, e_j⟩ / max_i B_ii.

B is scaled by its largest diagonal element (which changes λ, not c) and the
system is solved by an eigen-decomposition that drops eigenvalues of magnitude
below :data:`PSEUDO_INVERSE_CUTOFF`, so a (near-)singular history late in the
SCF gives the minimum-norm solution instead of a failure.

Example:
    >>> import jax, jax.numpy as jnp
    >>> update = jax.jit(diis_update)
    >>> state = diis_init((2,), space=4)
    >>> state, F = update(state, jnp.array([1.0, 0.0]), jnp.array([1.0, 0.0]))
    >>> state, F = update(state, jnp.array([0.0, 1.0]), jnp.array([-1.0, 0.0]))
    >>> [round(x, 12) for x in F.tolist()]   # equal weights cancel the two errors
    [0.5, 0.5]
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from solvers.eigen import eigh

__all__ = ["DIIS_SPACE", "PSEUDO_INVERSE_CUTOFF", "DIISState", "diis_init", "diis_update"]

DIIS_SPACE = 8
"""Default number of (Fock, error) pairs kept, PySCF's ``diis_space``."""

PSEUDO_INVERSE_CUTOFF = 1e-14
"""Eigenvalues of the scaled DIIS matrix with |w| below this are dropped (dimensionless)."""


class DIISState(NamedTuple):
    """Circular DIIS history of fixed size ``space``.

    ``focks`` and ``errors`` have shape (space, *shape) and one dtype (float64 or
    complex128); slot ``count % space`` is written next.
    """

    focks: jax.Array  # (space, *shape) Fock matrices, Hartree
    errors: jax.Array  # (space, *shape) DIIS error vectors, Hartree
    count: jax.Array  # () int32, pairs pushed so far


def diis_init(shape: tuple[int, ...], space: int = DIIS_SPACE, dtype=jnp.float64) -> DIISState:
    """Empty history for Fock matrices of ``shape`` and ``dtype``.

    Args:
        shape: shape of one Fock matrix, e.g. (nao, nao) or (nk, nao, nao).
        space: number of pairs kept (static).
        dtype: ``jnp.float64`` (molecules) or ``jnp.complex128`` (k-points).
    """
    z = jnp.zeros((space, *shape), dtype=dtype)
    return DIISState(z, z, jnp.zeros((), dtype=jnp.int32))


def diis_coefficients(errors: jax.Array, valid: jax.Array) -> jax.Array:
    """Pulay coefficients c (space,) with Σ c = 1 minimising |Σ c_i e_i|; 0 on invalid slots.

    Args:
        errors: (space, ...) error vectors (real or complex).
        valid: (space,) bool, slots that hold a pushed pair.
    """
    space = errors.shape[0]
    flat = errors.reshape(space, -1)
    B = (jnp.conj(flat) @ flat.T).real
    scale = jnp.max(jnp.where(valid, jnp.diag(B), 0.0))
    scale = jnp.where(scale > 0, scale, 1.0)
    both = valid[:, None] & valid[None, :]
    B = jnp.where(both, B / scale, jnp.eye(space))
    ones = valid.astype(B.dtype)
    A = jnp.zeros((space + 1, space + 1), dtype=B.dtype).at[:space, :space].set(B)
    A = A.at[space, :space].set(-ones).at[:space, space].set(-ones)
    rhs = jnp.zeros((space + 1,), dtype=B.dtype).at[space].set(-1.0)
    w, v = eigh(A)
    keep = jnp.abs(w) > PSEUDO_INVERSE_CUTOFF
    winv = jnp.where(keep, 1.0 / jnp.where(keep, w, 1.0), 0.0)
    c = (v * winv) @ (v.T @ rhs)
    return jnp.where(valid, c[:space], 0.0)


def diis_update(state: DIISState, fock: jax.Array, error: jax.Array) -> tuple[DIISState, jax.Array]:
    """Push (``fock``, ``error``) and return the new state and the extrapolated Fock Σ_i c_i F_i.

    Args:
        state: history from :func:`diis_init` / a previous update.
        fock: Fock matrix of ``state``'s shape, Hartree.
        error: its DIIS error (zero at self-consistency), same shape.

    Returns:
        (new state, extrapolated Fock matrix of ``fock``'s shape and the state's dtype).
    """
    space = state.focks.shape[0]
    slot = state.count % space
    focks = state.focks.at[slot].set(fock.astype(state.focks.dtype))
    errors = state.errors.at[slot].set(error.astype(state.errors.dtype))
    count = state.count + 1
    valid = jnp.arange(space) < jnp.minimum(count, space)
    c = diis_coefficients(errors, valid)
    return DIISState(focks, errors, count), jnp.einsum("i,i...->...", c.astype(focks.dtype), focks)
