"""Semi-local exchange-correlation functionals in pure JAX, equal to libxc.

The host path (:mod:`solvers.xc`) evaluates XC with libxc inside
``jax.pure_callback``. This module writes the same functionals as JAX
expressions, so that E_xc, its potentials (by ``jax.grad``) and its second
derivatives can live on the accelerator, under ``jit`` and ``vmap``.

Each component follows its published form with the parameters, to the digit,
of libxc 7.0.0 (the version PySCF 2.14 ships), and libxc's screening of small
densities (see :func:`_screened`):

=====================  =====  ===============  ==================================
component              libxc  dens_threshold   reference
=====================  =====  ===============  ==================================
Slater exchange        1      1e-15            Dirac, Proc. Camb. Phil. Soc. 26, 376 (1930)
VWN5 correlation       7      1e-15            Vosko, Wilk, Nusair, Can. J. Phys. 58, 1200 (1980)
VWN-RPA correlation    8      1e-15            idem (the RPA fit, "VWN3" of Gaussian)
PBE exchange           101    1e-15            Perdew, Burke, Ernzerhof, PRL 77, 3865 (1996)
PBE correlation        130    1e-12            idem, with PW92 LDA correlation
B88 exchange           106    1e-15            Becke, PRA 38, 3098 (1988)
LYP correlation        131    1e-14            Lee, Yang, Parr, PRB 37, 785 (1988);
                                               Miehlich et al., CPL 157, 200 (1989)
=====================  =====  ===============  ==================================

Mixes are resolved with PySCF's own parser (``pyscf.dft.libxc.parse_xc``,
static host metadata used at trace time), so a PySCF name means the same
weights here; libxc's composite B3LYP (402) and PBE0 (406) are expanded into
the components above. Only the semi-local part is returned; the exact-exchange
fraction stays in :attr:`basis.functional.Functional.exact_exchange`.

Closed shell only. Exchange is written per spin channel (the spin-scaling
relation E_x[ρ↑, ρ↓] = Σ_s E_x[2ρ_s]/2) and LYP in terms of ζ and both spin
channels, so the spin-polarized forms need only a driver; the correlation
energies of VWN and PW92 are the paramagnetic fits (ζ = 0), where the
spin-interpolation terms of libxc are exactly zero.

Units: Hartree atomic units throughout (ρ in electrons/Bohr³, σ = |∇ρ|² in
Bohr⁻⁸, ε_xc in Hartree per electron).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from decimal import Context, Decimal, localcontext

import jax
import jax.numpy as jnp
from pyscf.dft import libxc  # host metadata only: parse_xc at trace time

from basis.errors import FunctionalError
from basis.functional import Functional

# ---------------------------------------------------------------------------
# Shared constants, correctly rounded from 40-digit decimal arithmetic (libxc's
# maple code also evaluates them exactly before emitting C).

_DECIMAL = Context(prec=40)
_D_PI = Decimal("3.141592653589793238462643383279502884197")


def _d_cbrt(x: Decimal) -> Decimal:
    with localcontext(_DECIMAL):
        return x ** (Decimal(1) / 3)


with localcontext(_DECIMAL):
    # r_s = RS_FACTOR / ρ^(1/3): Wigner–Seitz radius of the uniform gas.
    _RS_FACTOR = float(_d_cbrt(3 / (4 * _D_PI)))
    # Slater exchange per spin channel: e_x(ρ_s) = -X_FACTOR_C ρ_s^(1/3) = -(3/4)(6/π)^(1/3) ρ_s^(1/3).
    _X_FACTOR_C = float(Decimal(3) / 8 * _d_cbrt(3 / _D_PI) * _d_cbrt(Decimal(16)))
    # Reduced gradient s = X2S x_s, x_s = |∇ρ_s| / ρ_s^(4/3).
    _X2S = float(1 / (2 * _d_cbrt(6 * _D_PI**2)))
    _CBRT2 = float(_d_cbrt(Decimal(2)))
    # PBE's γ = (1 - ln 2)/π² (PRL 77, 3865) and LYP's Thomas–Fermi C_F = (3/10)(3π²)^(2/3)
    _PBE_GAMMA = float((1 - Decimal(2).ln()) / _D_PI**2)
    _LYP_CF = float(Decimal(3) / 10 * _d_cbrt(3 * _D_PI**2) ** 2)
# libxc's zeta_threshold (DBL_EPSILON): (1 ± ζ) is floored there. Inert at ζ = 0.
_ZETA_THRESHOLD = 2.220446049250313e-16

# ---------------------------------------------------------------------------
# Parameters

# VWN: Vosko, Wilk, Nusair, Can. J. Phys. 58, 1200 (1980); paramagnetic fits,
# A in Hartree (the paper's Rydberg value halved), as libxc's maple/vwn.mpl.
# (A, b, c, x0) of the fit to the Ceperley–Alder data ("VWN5").
_VWN5_PARA = ("0.0310907", "3.72744", "12.9352", "-0.10498")
# (A, b, c, x0) of the fit to the RPA correlation energy ("VWN_RPA", used by B3LYP).
_VWN_RPA_PARA = ("0.0310907", "13.0720", "42.7198", "-0.409286")

# PW92: Perdew, Wang, PRB 45, 13244 (1992), Eq. (10), paramagnetic set, with A
# given to more digits as in the PBE reference code (libxc's LDA_C_PW_MOD,
# which GGA_C_PBE uses): (A, α1, β1, β2, β3, β4), p = 1.
_PW92_MOD_PARA = (0.0310907, 0.21370, 7.5957, 3.5876, 1.6382, 0.49294)

# PBE: Perdew, Burke, Ernzerhof, PRL 77, 3865 (1996). β is the value of the
# PBE reference code (libxc's 0.06672455060314922, not the paper's 0.066725);
# μ = β π²/3 written as libxc's literal (κ and μ are libxc's ext_params defaults);
# γ is computed above.
_PBE_KAPPA = 0.8040
_PBE_MU = 0.2195149727645171
_PBE_BETA = 0.06672455060314922

# B88: Becke, PRA 38, 3098 (1988): β = 0.0042, and the 6 in 1 + 6βx asinh x.
_B88_BETA = 0.0042
_B88_GAMMA = 6.0

# LYP: Lee, Yang, Parr, PRB 37, 785 (1988), in the form of Miehlich, Savin,
# Stoll, Preuss, CPL 157, 200 (1989): a, b, c, d.
_LYP_A = 0.04918
_LYP_B = 0.132
_LYP_C = 0.2533
_LYP_D = 0.349

# Composite hybrids of libxc, as libxc 7 defines them (hyb_gga_xc_b3lyp.c,
# hyb_gga_xc_pbeh.c). B3LYP: Stephens, Devlin, Chabalowski, Frisch, JPC 98,
# 11623 (1994): E_xc = a0 E_x^HF + (1 - a0 - ax) E_x^Slater + ax E_x^B88
#                     + (1 - ac) E_c^VWN_RPA + ac E_c^LYP.
_B3LYP_A0, _B3LYP_AX, _B3LYP_AC = 0.20, 0.72, 0.81
# PBE0: Adamo, Barone, JCP 110, 6158 (1999): 1/4 exact exchange.
_PBE0_A0 = 0.25

# ---------------------------------------------------------------------------
# Exchange: energy per electron of one spin channel, e_x(ρ_s, x_s²) = -X_FACTOR_C ρ_s^(1/3) F(x_s²).
# The channel densities of a closed shell are ρ_s = ρ/2, σ_ss = σ/4.


def _slater_channel(rho_s):
    """LDA exchange energy per electron of a spin channel of density rho_s (Hartree)."""
    return -_X_FACTOR_C * jnp.cbrt(rho_s)


def _pbe_x_enhancement(xs2):
    """PBE exchange enhancement F(s) = 1 + κ - κ/(1 + μ s²/κ), as a function of x_s² (PRL 77, 3865, Eq. 14)."""
    s2 = _X2S**2 * xs2
    return 1.0 + _PBE_KAPPA * (1.0 - _PBE_KAPPA / (_PBE_KAPPA + _PBE_MU * s2))


def _b88_enhancement(xs2):
    """B88 enhancement F(x) = 1 + β x²/(X_FACTOR_C (1 + 6 β x asinh x)) (PRA 38, 3098, Eq. 8)."""
    xs = jnp.sqrt(xs2)
    return 1.0 + _B88_BETA / _X_FACTOR_C * xs2 / (1.0 + _B88_GAMMA * _B88_BETA * xs * jnp.arcsinh(xs))


def _gga_exchange_channel(enhancement: Callable, rho_s, sigma_ss):
    """GGA exchange energy per electron of one spin channel: e_x^LDA(ρ_s) F(x_s²)."""
    xs2 = sigma_ss / jnp.cbrt(rho_s) ** 8  # x_s² = σ_ss / ρ_s^(8/3)
    return _slater_channel(rho_s) * enhancement(xs2)


def _lda_x(rho, sigma):
    return _slater_channel(0.5 * rho)


def _pbe_x(rho, sigma):
    return _gga_exchange_channel(_pbe_x_enhancement, 0.5 * rho, 0.25 * sigma)


def _b88_x(rho, sigma):
    return _gga_exchange_channel(_b88_enhancement, 0.5 * rho, 0.25 * sigma)


# ---------------------------------------------------------------------------
# Correlation


def _rs(rho):
    """Wigner–Seitz radius r_s = (3/(4πρ))^(1/3), Bohr."""
    return _RS_FACTOR / jnp.cbrt(rho)


@dataclasses.dataclass(frozen=True)
class _VwnFit:
    """Constants of one VWN fit, derived in 40-digit arithmetic from the decimal (A, b, c, x0).

    4c - b² cancels to 3 digits for the RPA fit, so Q is not formed in float64.
    """

    a: float
    b: float
    c: float
    x0: float
    q: float  # Q = √(4c - b²)
    atan_coef: float  # 2b/Q - b x0/X(x0) · 2(2 x0 + b)/Q
    log_coef: float  # b x0 / X(x0)

    @classmethod
    def from_decimal(cls, params):
        with localcontext(_DECIMAL):
            a, b, c, x0 = (Decimal(p) for p in params)
            q = (4 * c - b * b).sqrt()
            f2 = b * x0 / (x0 * x0 + b * x0 + c)
            atan_coef = 2 * b / q - f2 * 2 * (2 * x0 + b) / q
            return cls(*(float(v) for v in (a, b, c, x0, q, atan_coef, f2)))


def _vwn_fit(fit: _VwnFit, rs):
    """VWN interpolation formula (Can. J. Phys. 58, 1200, Eq. 4.4), Hartree per electron.

    x = √r_s, X(x) = x² + b x + c, Q = √(4c - b²):
    ε = A [ln(x²/X) + 2b/Q atan(Q/(2x + b)) - b x0/X(x0) (ln((x - x0)²/X) + 2(b + 2x0)/Q atan(Q/(2x + b)))].

    Both logarithms are of ratios near 1 at low density and are formed with
    log1p; libxc's plain logs lose up to ~9e-13 relative there (40-digit check),
    this form ~2e-14.
    """
    x = jnp.sqrt(rs)
    big_x = rs + fit.b * x + fit.c
    log_x2_over_big_x = -jnp.log1p((fit.b * x + fit.c) / rs)  # ln(x²/X)
    # ln((x - x0)²/X), (x - x0)² - X = -((2 x0 + b) x + c - x0²)
    log_shift = jnp.log1p(-((2.0 * fit.x0 + fit.b) * x + (fit.c - fit.x0 * fit.x0)) / big_x)
    return fit.a * (log_x2_over_big_x + fit.atan_coef * jnp.arctan(fit.q / (2.0 * x + fit.b)) - fit.log_coef * log_shift)


_VWN5_FIT = _VwnFit.from_decimal(_VWN5_PARA)
_VWN_RPA_FIT = _VwnFit.from_decimal(_VWN_RPA_PARA)


def _vwn5_c(rho, sigma):
    # ζ = 0: the spin-stiffness and ferromagnetic terms carry f(ζ) = 0.
    return _vwn_fit(_VWN5_FIT, _rs(rho))


def _vwn_rpa_c(rho, sigma):
    return _vwn_fit(_VWN_RPA_FIT, _rs(rho))


def _pw92_para(rs):
    """PW92 paramagnetic correlation energy per electron G(r_s) (PRB 45, 13244, Eq. 10), Hartree.

    ln(1 + 1/den) is kept as libxc writes it, not log1p: at ρ ~ 1e-10 both lose
    ~1e-11 relative to rounding of 1 + 1/den, and the same form rounds the same
    way (agreement ~1e-14), where log1p would differ from libxc by that 1e-11.
    """
    a, alpha1, beta1, beta2, beta3, beta4 = _PW92_MOD_PARA
    x = jnp.sqrt(rs)
    den = 2.0 * a * (beta1 * x + beta2 * rs + beta3 * rs * x + beta4 * rs * rs)
    return -2.0 * a * (1.0 + alpha1 * rs) * jnp.log(1.0 + 1.0 / den)


def _pbe_h(eps_unif, t2, phi=1.0):
    """PBE gradient correction H(r_s, ζ, t) (PRL 77, 3865, Eqs. 7–8), Hartree per electron.

    eps_unif: PW92 correlation energy; t2: t² (t = |∇ρ|/(2 φ k_s ρ)); phi: φ(ζ) (1 for a closed shell).
    """
    phi3 = phi**3
    a = _PBE_BETA / (_PBE_GAMMA * (jnp.exp(-eps_unif / (_PBE_GAMMA * phi3)) - 1.0))
    f1 = t2 + a * t2 * t2
    f2 = _PBE_BETA * f1 / (_PBE_GAMMA * (1.0 + a * f1))
    return _PBE_GAMMA * phi3 * jnp.log(1.0 + f2)


def _pbe_c(rho, sigma):
    rs = _rs(rho)
    eps = _pw92_para(rs)
    # t² = x_t² / (16 · 2^(2/3) φ² r_s), x_t² = σ / ρ^(8/3)
    xt2 = sigma / jnp.cbrt(rho) ** 8
    t2 = xt2 / (16.0 * _CBRT2**2 * rs)
    return eps + _pbe_h(eps, t2)


def _opz_pow(z, n):
    """(1 + ζ)^n with libxc's floor of 1 + ζ at zeta_threshold."""
    opz = 1.0 + z
    return jnp.where(opz <= _ZETA_THRESHOLD, _ZETA_THRESHOLD**n, jnp.power(jnp.maximum(opz, _ZETA_THRESHOLD), n))


def _lyp(rr, z, xt2, xs0_2, xs1_2):
    """LYP correlation energy per electron (CPL 157, 200, Eq. 2), Hartree.

    rr = ρ^(-1/3); z = ζ; xt2 = |∇ρ|²/ρ^(8/3); xs0_2, xs1_2 = |∇ρ_s|²/ρ_s^(8/3) of the two spin channels.
    """
    omega = _LYP_B * jnp.exp(-_LYP_C * rr) / (1.0 + _LYP_D * rr)
    delta = (_LYP_C + _LYP_D / (1.0 + _LYP_D * rr)) * rr
    aux6 = 2.0 ** (-8.0 / 3.0)
    aux4 = aux6 / 4.0
    aux5 = aux4 / 18.0
    one_z2 = 1.0 - z * z
    p83, m83 = _opz_pow(z, 8.0 / 3.0), _opz_pow(-z, 8.0 / 3.0)
    p113, m113 = _opz_pow(z, 11.0 / 3.0), _opz_pow(-z, 11.0 / 3.0)
    grad83 = xs0_2 * p83 + xs1_2 * m83
    t1 = -one_z2 / (1.0 + _LYP_D * rr)
    t2 = -xt2 * (one_z2 * (47.0 - 7.0 * delta) / 72.0 - 2.0 / 3.0)
    t3 = -_LYP_CF / 2.0 * one_z2 * (p83 + m83)
    t4 = aux4 * one_z2 * (2.5 - delta / 18.0) * grad83
    t5 = aux5 * one_z2 * (delta - 11.0) * (xs0_2 * p113 + xs1_2 * m113)
    t6 = -aux6 * (2.0 / 3.0 * grad83 - _opz_pow(z, 2.0) * xs1_2 * m83 / 4.0 - _opz_pow(-z, 2.0) * xs0_2 * p83 / 4.0)
    return _LYP_A * (t1 + omega * (t2 + t3 + t4 + t5 + t6))


def _lyp_c(rho, sigma):
    cbrt_rho = jnp.cbrt(rho)
    xt2 = sigma / cbrt_rho**8
    xs2 = _CBRT2**2 * xt2  # (σ/4) / (ρ/2)^(8/3)
    return _lyp(1.0 / cbrt_rho, 0.0, xt2, xs2, xs2)


# ---------------------------------------------------------------------------
# Components and libxc's screening


@dataclasses.dataclass(frozen=True)
class _Component:
    """One libxc functional: its unpolarized kernel ε(ρ, σ) and libxc's thresholds."""

    name: str
    libxc_id: int
    gga: bool
    exchange: bool  # spin-channel screening of libxc's gga_exchange / lda_x
    dens_threshold: float
    kernel: Callable


_COMPONENTS = {
    c.libxc_id: c
    for c in (
        _Component("LDA_X", 1, False, True, 1e-15, _lda_x),
        _Component("LDA_C_VWN", 7, False, False, 1e-15, _vwn5_c),
        _Component("LDA_C_VWN_RPA", 8, False, False, 1e-15, _vwn_rpa_c),
        _Component("GGA_X_PBE", 101, True, True, 1e-15, _pbe_x),
        _Component("GGA_C_PBE", 130, True, False, 1e-12, _pbe_c),
        _Component("GGA_X_B88", 106, True, True, 1e-15, _b88_x),
        _Component("GGA_C_LYP", 131, True, False, 1e-14, _lyp_c),
    )
}

# libxc composites that PySCF passes through as one id.
_COMPOSITES = {
    402: ((1, 1.0 - _B3LYP_A0 - _B3LYP_AX), (106, _B3LYP_AX), (8, 1.0 - _B3LYP_AC), (131, _B3LYP_AC)),  # B3LYP
    406: ((101, 1.0 - _PBE0_A0), (130, 1.0)),  # PBEH = PBE0
}


def _screened(component: _Component, rho, sigma):
    """ε of one component with libxc 7's screening, NaN-free in value and gradient.

    libxc (work_lda/work_gga and functionals.c) evaluates a point only if
    ρ ≥ dens_threshold, floors σ at sigma_threshold² = dens_threshold^(8/3) and
    returns the derivatives at the floored point; exchange functionals further
    drop a spin channel with ρ_s = ρ/2 ≤ dens_threshold. Screened points are 0.
    Inactive points are evaluated at a harmless (ρ, σ) = (1, 1) and masked
    (double-where), so gradients stay finite at ρ = 0 and σ = 0.
    """
    thr = component.dens_threshold
    active = rho >= thr
    if component.exchange:
        active = active & (0.5 * rho > thr)
    rho_safe = jnp.where(active, rho, 1.0)
    if component.gga:
        sigma_threshold = thr ** (4.0 / 3.0)
        floor = sigma_threshold * sigma_threshold
        # value max(σ, floor), derivative 1: libxc reports ∂/∂σ at the floored point
        sigma = jnp.where(sigma < floor, floor + (sigma - jax.lax.stop_gradient(sigma)), sigma)
        sigma_safe = jnp.where(active, sigma, 1.0)
    else:
        sigma_safe = None
    return jnp.where(active, component.kernel(rho_safe, sigma_safe), 0.0)


@functools.cache
def _resolve(name: str) -> tuple[tuple[_Component, float], ...]:
    """(component, weight) pairs of a PySCF functional name (host metadata, cached)."""
    try:
        hyb, fn_facs = libxc.parse_xc(name)
    except (KeyError, ValueError, RuntimeError):  # how PySCF / libxc reject a name
        raise FunctionalError(f"unknown functional {name!r}") from None
    if hyb[2] != 0:
        raise FunctionalError(f"functional {name!r} is range-separated; no JAX form yet")
    out = []
    for fid, fac in fn_facs:
        fid = int(fid)
        parts = _COMPOSITES.get(fid, ((fid, 1.0),))
        for pid, w in parts:
            if pid not in _COMPONENTS:
                supported = ", ".join(c.name for c in _COMPONENTS.values())
                raise FunctionalError(f"functional {name!r}: libxc component {pid} has no JAX form (written: {supported})")
            out.append((_COMPONENTS[pid], float(fac) * w))
    return tuple(out)


# ---------------------------------------------------------------------------
# Public API


def xc_energy_density(functional: Functional, rho: jax.Array, sigma: jax.Array | None = None) -> jax.Array:
    """Semi-local XC energy per electron ε_xc(ρ, σ), Hartree, closed shell.

    Equal to ``pyscf.dft.libxc.eval_xc(functional.name, ..., spin=0)[0]``
    (libxc 7.0.0), including libxc's zeroing of small densities. Pure JAX:
    jittable, vmappable, differentiable (twice); v_ρ = ∂(ρ ε)/∂ρ and
    v_σ = ∂(ρ ε)/∂σ are libxc's first derivatives.

    Args:
        functional: parsed functional (static metadata). For a hybrid only the
            semi-local part is returned (``pbe0``: 0.75 PBE exchange + PBE
            correlation); ``hf`` gives zeros.
        rho: density ρ (electrons/Bohr³), any shape.
        sigma: σ = |∇ρ|² (Bohr⁻⁸), shape of rho; required for GGAs, ignored for LDAs.

    Returns:
        ε_xc, shape of rho (Hartree per electron; 0 where ρ is below libxc's thresholds).

    Raises:
        FunctionalError: a name PySCF does not know, or with components not written here.
        ValueError: a GGA without sigma.

    >>> import jax, jax.numpy as jnp
    >>> from basis.functional import parse_functional
    >>> eps = jax.jit(xc_energy_density, static_argnums=0)  # Functional is static metadata
    >>> rho, sigma = jnp.array([0.0, 1.0]), jnp.array([0.0, 0.5])
    >>> [round(float(e), 6) for e in eps(parse_functional("lda,vwn"), rho)]  # libxc: -0.810151
    [0.0, -0.810151]
    >>> [round(float(e), 6) for e in eps(parse_functional("pbe"), rho, sigma)]  # libxc: -0.809820
    [0.0, -0.80982]
    """
    components = _resolve(functional.name)
    rho = jnp.asarray(rho, dtype=jnp.float64)
    needs_sigma = any(c.gga for c, _ in components)
    if needs_sigma:
        if sigma is None:
            raise ValueError(f"functional {functional.name!r} is a GGA: sigma = |∇ρ|² is required")
        sigma = jnp.asarray(sigma, dtype=jnp.float64)
    eps = jnp.zeros_like(rho)
    for component, weight in components:
        eps = eps + weight * _screened(component, rho, sigma if component.gga else None)
    return eps


def xc_energy_grid(functional: Functional, rho_and_grad: jax.Array, weights: jax.Array) -> jax.Array:
    """Semi-local XC energy E_xc = Σ_g w_g ρ_g ε_xc(ρ_g, σ_g), Hartree.

    Same signature and value as :func:`solvers.xc.xc_energy` (the libxc host
    path), with gradients by autodiff: ∂E/∂ρ_g = w_g v_ρ, ∂E/∂∇ρ_g = 2 w_g v_σ ∇ρ_g.

    Args:
        functional: parsed functional (static).
        rho_and_grad: (1, ngrid) ρ for an LDA, or (4, ngrid) (ρ, ∂xρ, ∂yρ, ∂zρ)
            for a GGA (an LDA also accepts 4 rows and uses the first).
            Electrons/Bohr³ and electrons/Bohr⁴.
        weights: (ngrid,) quadrature weights, Bohr³ (padded points: ρ = 0, w = 0).

    Returns:
        () E_xc.

    >>> import jax, jax.numpy as jnp
    >>> from basis.functional import parse_functional
    >>> f = parse_functional("blyp")
    >>> rg = jnp.array([[0.3, 0.0], [0.1, 0.0], [0.0, 0.0], [0.2, 0.0]])  # second point padded
    >>> e, g = jax.jit(jax.value_and_grad(lambda r: xc_energy_grid(f, r, jnp.array([0.5, 0.0]))))(rg)
    >>> g.shape, bool(jnp.all(g[:, 1] == 0.0))  # ∂E/∂(ρ, ∇ρ); zero at the padded point
    ((4, 2), True)
    """
    rho = rho_and_grad[0]
    sigma = None
    if any(c.gga for c, _ in _resolve(functional.name)):
        if rho_and_grad.shape[0] != 4:
            raise ValueError(f"functional {functional.name!r} is a GGA: rho_and_grad needs 4 rows (ρ, ∇ρ), got {rho_and_grad.shape[0]}")
        g = rho_and_grad[1:4]
        sigma = g[0] * g[0] + g[1] * g[1] + g[2] * g[2]
    return jnp.sum(weights * rho * xc_energy_density(functional, rho, sigma))
