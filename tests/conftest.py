"""Test configuration: float64 everywhere, NaN checks on, and the integral cache in a
temporary directory (tests never write into the user's ``~/.cache/vardft``)."""

import os
import tempfile

import jax
import pytest

from vardft import stream

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_debug_nans", True)

# one directory per test process (each xdist worker too), removed when the process exits;
# subprocesses started by tests inherit it
_CACHE = tempfile.TemporaryDirectory(prefix="vardft-test-cache-")
os.environ["VARDFT_CACHE"] = _CACHE.name


@pytest.fixture(autouse=True)
def _disk_reserve_of_the_test_machine(monkeypatch):
    """Tests that count written records must not depend on how full the machine's disk
    is (CI runs beside other caches): the record cache's free-space reserve is set
    small here; tests of the reserve itself patch the disk usage they see."""
    monkeypatch.setattr(stream, "DISK_RESERVE_BYTES", 100 * 10**6)
