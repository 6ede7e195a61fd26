"""The one Fermi-level bisection against SciPy's root finder, for molecules and k-points."""

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.special

from solvers.occupations import fermi_level, occupation_fraction

MU_ATOL = 1e-12  # Hartree, bisection vs brentq
COUNT_ATOL = 1e-12  # electrons


def _count_numpy(mu, eps, w, sigma, method):
    x = (eps - mu) / sigma
    f = scipy.special.expit(-x) if method == "fermi" else 0.5 * scipy.special.erfc(x)
    return np.sum(np.asarray(w)[..., None] * 2.0 * f)


@pytest.mark.parametrize("method", ["fermi", "gaussian"])
@pytest.mark.parametrize("kpoints", [False, True], ids=["molecule", "kpoints"])
def test_fermi_level_matches_brentq(method, kpoints):
    rng = np.random.default_rng(0)
    sigma, n = 0.05, 7
    if kpoints:
        eps = np.sort(rng.uniform(-1.0, 1.0, (4, 6)), axis=1)
        w = np.array([0.1, 0.2, 0.3, 0.4])
    else:
        eps, w = np.sort(rng.uniform(-1.0, 1.0, 6)), 1.0
    ref = scipy.optimize.brentq(lambda mu: _count_numpy(mu, eps, w, sigma, method) - n, -5, 5, xtol=1e-15)
    mu = float(fermi_level(jnp.asarray(eps), n, w, sigma, method))
    assert abs(mu - ref) < MU_ATOL
    assert abs(_count_numpy(mu, eps, w, sigma, method) - n) < COUNT_ATOL


def test_invalid_levels_hold_no_electrons():
    eps = jnp.array([-1.0, 0.0, 0.5, -3.0])
    valid = jnp.array([True, True, True, False])
    mu = fermi_level(eps, 3, 1.0, 0.1, "fermi", valid)
    ref = fermi_level(eps[:3], 3, 1.0, 0.1, "fermi")
    assert float(mu) == float(ref)


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError):
        occupation_fraction("cold", jnp.zeros(2))
