"""Test configuration: float64 everywhere, NaN checks on, and the integral cache in a
temporary directory (tests never write into the user's ``~/.cache/vardft``)."""

import os
import tempfile

import jax
import pytest

from vardft import stream

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_debug_nans", True)

# XLA's backend (LLVM) optimizations off, here and in subprocesses tests start: the suite's
# problems are tiny and its time was half backend compilation (614 of 1,392 worker-seconds;
# 357 with this, the whole suite 715 -> 595 s on 2 cores). The computations are the same;
# every tolerance holds. JAX_DISABLE_MOST_OPTIMIZATIONS=0 runs the suite optimized.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
jax.config.update("jax_disable_most_optimizations",
                  os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"].strip().lower() in ("1", "true", "yes", "on", "y", "t"))

# one directory per test process (each xdist worker too), removed when the process exits;
# subprocesses started by tests inherit it
_CACHE = tempfile.TemporaryDirectory(prefix="vardft-test-cache-")
os.environ["VARDFT_CACHE"] = _CACHE.name

# XLA's compilation cache on disk, one per pytest run (or the user's own directory): made by
# the first process (xdist's controller) and shared by its workers and by subprocesses tests
# start. Many tests compile the same tiny-model steps; a repeat is read back instead of
# compiled again. Tests that count compilations use the ``compilations`` fixture, which
# counts those reads too.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _COMPILED = tempfile.TemporaryDirectory(prefix="vardft-test-xla-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _COMPILED.name
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


@pytest.fixture
def compilations():
    """``counter`` with ``counter[0]`` = XLA executables obtained since the fixture started:
    backend compilations and reads from the on-disk compilation cache alike (a compilation
    the cache answers is still a compilation the code asked for)."""
    counter = [0]

    def on_duration(event, duration, **kwargs):
        if event == BACKEND_COMPILE_EVENT:
            counter[0] += 1

    def on_event(event, **kwargs):
        if event == CACHE_HIT_EVENT:
            counter[0] += 1

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)
    try:
        yield counter
    finally:
        jax.monitoring.unregister_event_duration_listener(on_duration)
        jax.monitoring.unregister_event_listener(on_event)


@pytest.fixture(autouse=True)
def _disk_reserve_of_the_test_machine(monkeypatch):
    """Tests that count written records must not depend on how full the machine's disk
    is (CI runs beside other caches): the record cache's free-space reserve is set
    small here; tests of the reserve itself patch the disk usage they see."""
    monkeypatch.setattr(stream, "DISK_RESERVE_BYTES", 100 * 10**6)
