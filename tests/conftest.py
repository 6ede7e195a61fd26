"""Test configuration: float64 everywhere, NaN checks on, and the integral cache in a
temporary directory (tests never write into the user's ``~/.cache/vardft``)."""

import os
import tempfile

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_debug_nans", True)

# one directory per test process (each xdist worker too), removed when the process exits;
# subprocesses started by tests inherit it
_CACHE = tempfile.TemporaryDirectory(prefix="vardft-test-cache-")
os.environ["VARDFT_CACHE"] = _CACHE.name
