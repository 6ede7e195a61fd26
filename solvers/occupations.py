"""Smeared occupations and the Fermi level: one bisection for molecules and crystals.

A state of energy ε holds 2·f((ε − μ)/σ) electrons, with

    fermi:     f(x) = 1 / (1 + eˣ)            (Fermi–Dirac)
    gaussian:  f(x) = ½ erfc(x)

(PySCF's ``smearing`` conventions). The chemical potential μ is fixed by the
electron count, Σ_k w_k Σ_n 2 f((ε_kn − μ)/σ) = N, found by bisection. A
molecule is the case of one "k-point" of weight 1 (weights of shape ()); a
crystal has weights (nk,) summing to 1. Energies and σ are in Hartree.

Example:
    >>> import jax.numpy as jnp
    >>> eps = jnp.array([-1.0, 1.0])            # one molecule, two levels
    >>> abs(float(fermi_level(eps, 2, 1.0, 0.1))) < 1e-12   # half filling: μ midway
    True
    >>> eps_k = jnp.array([[-0.1, 1.0], [0.1, 1.0]])   # two k-points, one electron per cell
    >>> abs(float(fermi_level(eps_k, 1, jnp.array([0.5, 0.5]), 0.1, "gaussian"))) < 1e-12
    True
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "FERMI_BRACKET",
    "FERMI_STEPS",
    "SMEARING_METHODS",
    "fermi_level",
    "occupation_fraction",
    "smearing_entropy",
]

SMEARING_METHODS = ("fermi", "gaussian")

FERMI_BRACKET = 50.0
"""The μ bracket extends this many widths σ beyond the lowest and highest valid
levels; there f is below e⁻⁵⁰ (Fermi) or erfc(50) (Gaussian), i.e. zero or one."""

FERMI_STEPS = 100
"""Bisection steps; 100 halvings of the bracket reach float64 resolution of μ for
any realistic spectrum (bracket / 2¹⁰⁰ is far below one ulp)."""


def occupation_fraction(method: str, x: jax.Array) -> jax.Array:
    """Fraction f(x) in [0, 1] of a spin orbital at x = (ε − μ)/σ (``method`` static)."""
    if method == "fermi":
        return jax.nn.sigmoid(-x)
    if method == "gaussian":
        return 0.5 * jax.scipy.special.erfc(x)
    raise ValueError(f"smearing method must be one of {SMEARING_METHODS}, got {method!r}")


def smearing_entropy(method: str, x: jax.Array) -> jax.Array:
    """Entropy term s(x) (dimensionless) of one spin orbital at x = (ε − μ)/σ, PySCF's convention.

    fermi: −f ln f − (1 − f) ln(1 − f); gaussian: e^{−x²} / (2√π). The free energy
    is E − σ Σ_k w_k Σ_n 2 s(x_kn).
    """
    f = occupation_fraction(method, x)
    if method == "fermi":
        fc = jnp.clip(f, 1e-300, 1.0)
        gc = jnp.clip(1.0 - f, 1e-300, 1.0)
        inside = (f > 0) & (f < 1)
        return jnp.where(inside, -(fc * jnp.log(fc) + gc * jnp.log(gc)), 0.0)
    return jnp.exp(-(x**2)) / (2.0 * jnp.sqrt(jnp.pi))


def fermi_level(
    mo_energy: jax.Array,
    n_electrons,
    kweights,
    sigma: float,
    method: str = "fermi",
    valid: jax.Array | None = None,
) -> jax.Array:
    """Chemical potential μ (Hartree, shape ()) with Σ_k w_k Σ_n 2 f((ε_kn − μ)/σ) = N.

    Args:
        mo_energy: (..., nmo) level energies, Hartree: (nmo,) for a molecule,
            (nk, nmo) for a crystal.
        n_electrons: electron count (per cell), a number or a () array.
        kweights: weights of shape ``mo_energy.shape[:-1]``: () for a molecule
            (use 1.0), (nk,) for k-points.
        sigma: smearing width σ > 0, Hartree (static).
        method: ``"fermi"`` or ``"gaussian"`` (static).
        valid: bool mask like ``mo_energy``; False levels (padding, removed
            linear dependencies) hold no electrons and do not set the bracket.
            Default: all valid.

    Returns:
        μ, the midpoint of the final bracket, to float64 resolution.
    """
    valid = jnp.ones(mo_energy.shape, bool) if valid is None else valid
    w = jnp.asarray(kweights, dtype=mo_energy.dtype)[..., None]

    def count(mu):
        f = occupation_fraction(method, (mo_energy - mu) / sigma)
        return jnp.sum(w * jnp.where(valid, 2.0 * f, 0.0))

    def bisect(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        too_many = count(mid) > n_electrons
        return jnp.where(too_many, lo, mid), jnp.where(too_many, mid, hi)

    lo = jnp.min(jnp.where(valid, mo_energy, jnp.inf)) - FERMI_BRACKET * sigma
    hi = jnp.max(jnp.where(valid, mo_energy, -jnp.inf)) + FERMI_BRACKET * sigma
    lo, hi = jax.lax.fori_loop(0, FERMI_STEPS, bisect, (lo, hi))
    return 0.5 * (lo + hi)
