"""What the benchmark scripts record about the machine they ran on."""

from __future__ import annotations

import datetime
import os
import platform


def machine_info() -> dict:
    """CPU model, cores, thread and library versions, date (for a benchmark's JSON)."""
    import jax
    from pyscf import __version__ as pyscf_version
    from pyscf import lib

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "pyscf_threads": lib.num_threads(),
        "jax_backend": jax.default_backend(),
        "jax": jax.__version__,
        "pyscf": pyscf_version,
        "python": platform.python_version(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
