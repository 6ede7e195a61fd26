"""Pure-JAX XC (solvers.xc_jax) against libxc 7.0.0 through PySCF's eval_xc.

How agreement is measured. The bar is RTOL = 1e-12 relative, but a plain
relative error is meaningless where the compared number is a cancellation of
larger terms, and there libxc itself is only that accurate (checked against a
40-digit evaluation of the same formulas while writing the module):

* mixes: PBE's v_σ at s = 0 is X + C = 0 by construction (μ = βπ²/3), B88 and
  LYP nearly cancel at large s, ...;
* PBE correlation at large s: ε_c = ε_PW + H → 0 (H → -ε_PW); libxc's and our
  ε, v_ρ, v_σ are both off the exact value by ~1e-8 relative at s = 100, but by
  ≤ 2e-16 of |ε_PW|;
* LYP changes sign near s ≈ 2 and its v_ρ is a small difference at large s
  (both codes ~5e-14 relative off the exact value there).

So each quantity q ∈ {ε, v_ρ, v_σ} is compared with the bound
|q_ours - q_libxc| ≤ RTOL · scale, scale = Σ_i |w_i| (|q_i(ρ, σ)| + |q_i(ρ, 0)|),
i over the libxc components of the name (weights w_i), each evaluated by libxc:
the size of the terms that are summed, and of the uniform-gas (σ = 0) value of
each term. Where nothing cancels the scale is ≤ 2 |q| (exchange: F ≥ 1), i.e. it
is the plain relative 1e-12 up to a factor 2.
Measured worst |Δ|/scale on these points: 4e-13 for VWN5 (3e-13 VWN_RPA) near
ρ = 1e-15 on the water grid, where libxc's own ε is off the exact value by up to
9e-13 relative (logs of ratios near 1; ours uses log1p and is ~2e-14 off); all
else ≤ 3e-14 (LYP's v_ρ reached 2e-13 on a denser scan of s). Plain relative
error where nothing cancels (scale ≤ 2.5 |q|): the same numbers, ≤ 8.3e-13.

The tests run eagerly (jax_debug_nans checks every operation) on arrays of one
length, so each primitive compiles once, and each functional is evaluated once
on all sample points (log-spaced, threshold and water-grid points); one test
checks jit and vmap.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pyscf import dft, gto, scf
from pyscf.dft import libxc, numint

from basis.errors import FunctionalError
from basis.functional import Functional, parse_functional
from solvers.xc import xc_energy
from solvers.xc_jax import _resolve, xc_energy_density, xc_energy_grid

RTOL = 1e-12  # the contract, relative to the cancellation-aware scale (module docstring)
# LYP carries exp(-c ρ^(-1/3)): below ρ ≈ 5e-11 its v_σ is < 1e-280 and computed
# through subnormal numbers, where neither code keeps relative digits.
UNDERFLOW_ATOL = 1e-250
# Second derivatives are not part of the contract. Measured ≤ 3e-12 of the scale:
# LYP's ∂²/∂ρ∂σ near its sign change, where libxc and we are 9e-12 and 3e-12 off
# the 60-digit value.
FXC_RTOL = 1e-11
# libxc's B88 ∂²/∂σ² loses digits as s → 0 (37 % off at σ = 0, 1e-12 at x_s ≈ 4e-5;
# ours stays 4e-15 off an 80-digit value), so the second-derivative check starts here.
FXC_MIN_S = 1e-2
ONE_LIBXC_ULP_WEIGHT = 1e-15  # libxc stores B3LYP's weights as 1 - 0.20 - 0.72 etc.
# Every array the tests evaluate has this length (padded with ρ = 0, w = 0):
# eager JAX compiles each primitive once per shape, so one shape keeps the file fast.
NPOINT = 38912

COMPONENTS = ["lda_x", "lda_c_vwn", "lda_c_vwn_rpa", "gga_x_pbe", "gga_c_pbe", "gga_x_b88", "gga_c_lyp"]
MIXES = ["lda,vwn", "pbe", "blyp", "b3lyp", "pbe0"]
# libxc components of each name and their weights (for the comparison scale only).
PARTS = {c: [(c, 1.0)] for c in COMPONENTS} | {
    "lda,vwn": [("lda_x", 1.0), ("lda_c_vwn", 1.0)],
    "pbe": [("gga_x_pbe", 1.0), ("gga_c_pbe", 1.0)],
    "blyp": [("gga_x_b88", 1.0), ("gga_c_lyp", 1.0)],
    "b3lyp": [("lda_x", 0.08), ("gga_x_b88", 0.72), ("lda_c_vwn_rpa", 0.19), ("gga_c_lyp", 0.81)],
    "b3lyp5": [("lda_x", 0.08), ("gga_x_b88", 0.72), ("lda_c_vwn", 0.19), ("gga_c_lyp", 0.81)],
    "pbe0": [("gga_x_pbe", 0.75), ("gga_c_pbe", 1.0)],
}
# libxc 7.0.0 dens_threshold of the components (its func_info tables)
THRESHOLDS = [1e-15, 1e-14, 1e-12]


# --------------------------------------------------------------------------
# sample points


def _sigma(rho_and_grad):
    g = rho_and_grad[1:4]
    return g[0] * g[0] + g[1] * g[1] + g[2] * g[2]


def _pad(x, n=NPOINT):
    assert x.shape[-1] <= n, f"{x.shape[-1]} points do not fit in NPOINT = {n}"
    return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, n - x.shape[-1])])


def _log_grid(seed=0, s_min=1e-3):
    """ρ log-spaced over 1e-10 … 1e3, reduced gradients s = 0 and s_min … 100, random directions."""
    rng = np.random.default_rng(seed)
    rho = np.logspace(-10, 3, 300)
    s = np.concatenate([[0.0], np.logspace(np.log10(s_min), 2, 11)])
    rho, s = (x.ravel() for x in np.meshgrid(rho, s, indexing="ij"))
    norm = s * 2.0 * (3.0 * np.pi**2) ** (1.0 / 3.0) * rho ** (4.0 / 3.0)  # |∇ρ| = 2 (3π²)^(1/3) ρ^(4/3) s
    u = rng.standard_normal((3, rho.size))
    u /= np.linalg.norm(u, axis=0)
    return np.concatenate([rho[None], norm * u])


def _threshold_points():
    """ρ at, just below/above and between libxc's thresholds t (and 0, negative, subnormal), each with
    σ = 0, 1e-80, around every floor t^(8/3) (0.5, 1, 2 times) and at s = 1."""
    base = [0.0, -1e-12, 5e-324]
    for t in THRESHOLDS:
        base += [t * f for f in (0.5, 1 - 1e-12, 1.0, 1 + 1e-12, 1.5, 2 - 1e-12, 2.0, 2 + 1e-12, 3.0)]
    base = np.array(base)
    floors = [f * t ** (8.0 / 3.0) for t in THRESHOLDS for f in (0.5, 1.0, 2.0)]
    s1 = (2.0 * (3.0 * np.pi**2) ** (1.0 / 3.0) * np.maximum(base, 0.0) ** (4.0 / 3.0)) ** 2
    sigma = np.stack([0 * base, 1e-80 + 0 * base] + [f + 0 * base for f in floors] + [s1], axis=1)
    rho = np.repeat(base, sigma.shape[1])
    return np.concatenate([rho[None], np.sqrt(sigma.ravel())[None], np.zeros((2, rho.size))])


@functools.cache
def _water():
    """Water/def2-SVP on PySCF's default grid: (4, ngrid) ρ and ∇ρ of the minao density, weights."""
    mol = gto.M(atom="O 0 0 0; H 0 0 0.96; H 0.93 0 -0.24", basis="def2-svp", verbose=0)
    grids = dft.gen_grid.Grids(mol).build()
    ao = numint.eval_ao(mol, grids.coords, deriv=1)
    return numint.eval_rho(mol, ao, scf.hf.init_guess_by_minao(mol), xctype="GGA"), grids.weights


@functools.cache
def _samples():
    """All pointwise sample points, (4, NPOINT), and the slice of each set."""
    sets = {"log": _log_grid(), "thresholds": _threshold_points(), "water": _water()[0]}
    out, start = {}, 0
    for key, x in sets.items():
        out[key] = slice(start, start + x.shape[1])
        start += x.shape[1]
    return _pad(np.concatenate(list(sets.values()), axis=1)), out


# --------------------------------------------------------------------------
# evaluation


def _is_gga(name):
    return libxc.xc_type(name) == "GGA"


def _point_grad(name):
    """(ρ, σ) → ∂/∂(ρ, σ) of Σ_g ρ_g ε_g, i.e. (v_ρ, v_σ) pointwise, with ε as aux."""
    f = parse_functional(name)

    def energy(rho, sigma):
        eps = xc_energy_density(f, rho, sigma)
        return jnp.sum(rho * eps), eps

    return jax.grad(energy, argnums=(0, 1), has_aux=True)


def _ours(name, rho, sigma):
    """ε, v_ρ, v_σ from the JAX code (eager, arrays of length NPOINT)."""
    n = rho.size
    (vrho, vsigma), eps = _point_grad(name)(jnp.asarray(_pad(rho)), jnp.asarray(_pad(sigma)))
    return [np.asarray(x)[:n] for x in (eps, vrho, vsigma)]


def _libxc(name, rho_and_grad, deriv=1):
    """(ε, v_ρ, v_σ) from libxc (PySCF's eval_xc, closed shell); deriv=2: (v_ρρ, v_ρσ, v_σσ)."""
    if _is_gga(name):
        exc, vxc, fxc = libxc.eval_xc(name, rho_and_grad, spin=0, deriv=deriv)[:3]
        return list(fxc) if deriv == 2 else [exc, vxc[0], vxc[1]]
    exc, vxc, fxc = libxc.eval_xc(name, rho_and_grad[0], spin=0, deriv=deriv)[:3]
    zero = np.zeros_like(exc)
    return [fxc[0], zero, zero] if deriv == 2 else [exc, vxc[0], zero]


def _scale(name, rho_and_grad, deriv=1, evaluate=_libxc):
    """Σ_i |w_i| (|q_i(ρ, σ)| + |q_i(ρ, 0)|) for each returned quantity q (see the module docstring)."""
    flat = np.concatenate([rho_and_grad[:1], np.zeros_like(rho_and_grad[1:])])
    scale = [0.0, 0.0, 0.0]
    for part, w in PARTS[name]:
        for q in (evaluate(part, rho_and_grad, deriv), evaluate(part, flat, deriv)):
            scale = [s + abs(w) * np.abs(x) for s, x in zip(scale, q)]
    return scale


@functools.cache
def _libxc_on_samples(name, flat):
    """libxc on the sample points (σ = 0 if flat), cached: components recur in several mixes."""
    points = _samples()[0]
    return _libxc(name, np.concatenate([points[:1], 0 * points[1:]]) if flat else points)


def _libxc_samples(name, rho_and_grad, deriv):
    assert deriv == 1
    return _libxc_on_samples(name, not rho_and_grad[1:].any())


@functools.cache
def _compared(name):
    """(points, ours, libxc, scale) on all sample points, each a list (ε, v_ρ, v_σ)."""
    points, _ = _samples()
    scale = _scale(name, points, evaluate=_libxc_samples)
    return points, _ours(name, points[0], _sigma(points)), _libxc(name, points), scale


def _assert_close(name, labels, ours, ref, scale, rtol, rho_and_grad):
    for what, o, r, s in zip(labels, ours, ref, scale):
        assert np.all(np.isfinite(o)), f"{name} {what}: non-finite values"
        err = np.abs(o - r)
        ok = err <= rtol * s + UNDERFLOW_ATOL
        if not ok.all():
            i = np.argmax(np.where(ok, 0.0, err / np.maximum(s, 1e-300)))
            raise AssertionError(
                f"{name} {what}: |Δ|/scale = {err[i] / s[i]:.2e} > {rtol:g} at ρ = {rho_and_grad[0, i]!r}, "
                f"σ = {_sigma(rho_and_grad)[i]!r}: ours {o[i]!r}, libxc {r[i]!r}"
            )


def _assert_matches_libxc(name, subset):
    points, ours, ref, scale = _compared(name)
    sl = _samples()[1][subset]
    ours, ref, scale = ([q[sl] for q in x] for x in (ours, ref, scale))
    _assert_close(name, ("eps", "vrho", "vsigma"), ours, ref, scale, RTOL, points[:, sl])
    return ours, ref


# --------------------------------------------------------------------------
# pointwise equality with libxc


@pytest.mark.parametrize("name", COMPONENTS + MIXES + ["b3lyp5"])
def test_matches_libxc_on_log_spaced_densities(name):
    """ε, v_ρ, v_σ of every component and mix (b3lyp: libxc's own composite 402) against eval_xc."""
    _assert_matches_libxc(name, "log")


@pytest.mark.parametrize("name", COMPONENTS + MIXES)
def test_matches_libxc_on_water_grid(name):
    _assert_matches_libxc(name, "water")


@pytest.mark.parametrize("name", COMPONENTS + MIXES)
def test_small_density_thresholds_match_libxc(name):
    """libxc zeroes a point below its dens_threshold, an exchange spin channel at ρ/2 ≤ threshold,
    floors σ at threshold^(8/3) (derivatives at the floor); the same points are zero here."""
    ours, ref = _assert_matches_libxc(name, "thresholds")
    if name in COMPONENTS:  # exact zeros where libxc screens the point
        for what, o, r in zip(("eps", "vrho", "vsigma"), ours, ref):
            assert np.array_equal(o == 0.0, r == 0.0), f"{name} {what}: zero pattern differs from libxc"
    rho = _threshold_points()[0]
    assert np.all(ours[0][rho <= 0] == 0.0) and np.all(ours[1][rho <= 0] == 0.0)


@pytest.mark.parametrize("name", ["pbe", "b3lyp"])  # all components but VWN5 (VWN_RPA's code, other numbers)
def test_second_derivatives_match_libxc_and_are_finite_at_zero_density(name):
    """∂²(ρε)/∂ρ², ∂ρ∂σ, ∂σ² by forward-over-reverse autodiff: equal to libxc's fxc (s ≥ FXC_MIN_S),
    finite (jax_debug_nans is on) and zero at the threshold points with ρ ≤ 0 (σ = 0 included).

    One jvp gives both directions: the points appear twice, with tangent (1, 0) and then (0, 1)."""
    log = _log_grid(seed=2, s_min=FXC_MIN_S)
    log = log[:, _sigma(log) > 0]
    thr = _threshold_points()
    points = np.concatenate([log, thr], axis=1)
    n, m = log.shape[1], points.shape[1]
    r, s = (jnp.asarray(_pad(np.tile(x, 2))) for x in (points[0], _sigma(points)))
    t_r = jnp.asarray(_pad(np.repeat([1.0, 0.0], m)))

    def vgrad(r, s):
        return _point_grad(name)(r, s)[0]

    _, (d_vrho, d_vsigma) = jax.jvp(vgrad, (r, s), (t_r, (1.0 - t_r) * (jnp.arange(NPOINT) < 2 * m)))
    d_vrho, d_vsigma = np.asarray(d_vrho), np.asarray(d_vsigma)
    second = [d_vrho[:m], d_vrho[m : 2 * m], d_vsigma[:m], d_vsigma[m : 2 * m]]  # ρρ, ρσ, σρ, σσ
    assert all(np.all(np.isfinite(x)) for x in second)
    assert all(np.all(x[n:][thr[0] <= 0] == 0.0) for x in second)
    v2rho2, v2rhosigma, v2sigma2 = _libxc(name, log, deriv=2)
    s_rr, s_rs, s_ss = _scale(name, log, deriv=2)
    labels = ("v2rho2", "v2rhosigma (σ tangent)", "v2rhosigma (ρ tangent)", "v2sigma2")
    ref, scale = (v2rho2, v2rhosigma, v2rhosigma, v2sigma2), (s_rr, s_rs, s_rs, s_ss)
    _assert_close(name, labels, [x[:n] for x in second], ref, scale, FXC_RTOL, log)


# --------------------------------------------------------------------------
# the grid energy against the host (libxc callback) path


@pytest.mark.parametrize("name", MIXES)
def test_energy_grid_equals_host_path_in_value_and_gradient(name):
    """Padded water grid (ρ = 0, w = 0 past the real points), value and ∂E/∂(ρ, ∇ρ)."""
    rho, w = (_pad(x) for x in _water())
    f = parse_functional(name)
    rg = jnp.asarray(rho if f.family == "gga" else rho[:1])
    wj = jnp.asarray(w)
    e, g = jax.value_and_grad(xc_energy_grid, argnums=1)(f, rg, wj)
    e_ref, g_ref = jax.value_and_grad(xc_energy, argnums=1)(f, rg, wj)
    assert abs(float(e) - float(e_ref)) <= RTOL * abs(float(e_ref))
    g, g_ref = np.asarray(g), np.asarray(g_ref)
    assert np.linalg.norm(g - g_ref) <= RTOL * np.linalg.norm(g_ref)
    # elementwise: ∂E/∂ρ_g = w v_ρ, ∂E/∂∇ρ_g = 2 w v_σ ∇ρ_g, bounded with the pointwise scale
    water = _samples()[1]["water"]
    s = [_pad(q[water]) for q in _compared(name)[3]]
    aw = np.abs(w)  # Becke partition weights can be negative
    bound = RTOL * np.concatenate([(aw * s[1])[None], 2.0 * aw * s[2] * np.abs(rho[1:4])])[: g.shape[0]]
    assert np.all(np.abs(g - g_ref) <= bound + UNDERFLOW_ATOL)
    assert np.all(g[:, w == 0] == 0.0)  # padded points


# --------------------------------------------------------------------------
# autodiff and transformations


def test_jit_and_vmap_over_grids():
    """jit(xc_energy_grid) vmapped over two grids (log-spaced and water points) = Σ ρ ε of the eager run."""
    points, ours, _, _ = _compared("pbe")
    sets = _samples()[1]
    grids = np.zeros((2,) + points.shape)
    for grid, k in zip(grids, ("log", "water")):
        grid[:, sets[k]] = points[:, sets[k]]
    energy = jax.jit(xc_energy_grid, static_argnums=0)  # Functional is hashable metadata
    batched = jax.vmap(energy, in_axes=(None, 0, None))(parse_functional("pbe"), jnp.asarray(grids), jnp.ones(NPOINT))
    eager = [np.sum(points[0, sets[k]] * ours[0][sets[k]]) for k in ("log", "water")]
    assert np.allclose(np.asarray(batched), eager, rtol=RTOL, atol=0)


# --------------------------------------------------------------------------
# names


def test_b3lyp_is_libxc_composite_with_vwn_rpa():
    """PySCF's b3lyp is libxc's 402: 0.08 Slater + 0.72 B88 + 0.19 VWN_RPA + 0.81 LYP, 20 % HF exchange."""
    assert [int(i) for i, _ in libxc.parse_xc("b3lyp")[1]] == [402]
    got = [(c.name, w) for c, w in _resolve("b3lyp")]
    want = [("LDA_X", 0.08), ("GGA_X_B88", 0.72), ("LDA_C_VWN_RPA", 0.19), ("GGA_C_LYP", 0.81)]
    assert [n for n, _ in got] == [n for n, _ in want]
    assert np.allclose([w for _, w in got], [w for _, w in want], rtol=0, atol=ONE_LIBXC_ULP_WEIGHT)
    assert parse_functional("b3lyp").exact_exchange == 0.2
    # VWN5 instead of VWN_RPA would be a different functional (b3lyp5)
    e3, e5 = (_ours(name, np.array([0.1]), np.array([0.01]))[0][0] for name in ("b3lyp", "b3lyp5"))
    assert abs(e3 - e5) > 1e-4 * abs(e3)


def test_pyscf_vwn_is_vwn5_and_pbe0_is_three_quarters_pbe_exchange():
    assert [int(i) for i, _ in libxc.parse_xc("lda,vwn")[1]] == [1, 7]
    assert [(c.name, w) for c, w in _resolve("pbe0")] == [("GGA_X_PBE", 0.75), ("GGA_C_PBE", 1.0)]
    assert parse_functional("pbe0").exact_exchange == 0.25


def test_hf_has_no_semilocal_part():
    eps = xc_energy_density(parse_functional("hf"), jnp.asarray(_pad(np.array([0.0, 0.5, 2.0]))))
    assert np.all(np.asarray(eps) == 0.0)


@pytest.mark.parametrize(
    "functional",
    [
        Functional("no_such_functional", "gga", 0.0),
        Functional("b97", "gga", 0.1943),  # a libxc GGA hybrid without a JAX form
        Functional("tpss", "gga", 0.0),  # meta-GGA
        Functional("camb3lyp", "gga", 0.65),  # range-separated
    ],
)
def test_unsupported_functionals_raise_functional_error(functional):
    with pytest.raises(FunctionalError) as err:
        xc_energy_density(functional, jnp.ones(2), jnp.ones(2))
    assert "\n" not in str(err.value)


def test_gga_without_sigma_raises():
    with pytest.raises(ValueError, match="sigma"):
        xc_energy_density(parse_functional("pbe"), jnp.ones(2))
