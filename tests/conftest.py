"""Test configuration: float64 everywhere and NaN checks on."""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_debug_nans", True)
