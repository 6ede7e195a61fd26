"""vardft: label-free learning of electronic Hamiltonians.

Public names (may grow, not break): :class:`System`, :func:`scf`.
"""

import jax

jax.config.update("jax_enable_x64", True)

from basis.errors import InputError  # noqa: E402
from basis.system import System, read_systems  # noqa: E402

__all__ = ["InputError", "System", "read_systems", "scf"]


def scf(system, xc: str = "pbe", basis: str = "def2-svp", **kwargs):
    """Run vardft's JAX SCF; see :func:`solvers.scf.run_scf`."""
    from solvers.scf import run_scf

    return run_scf(System.from_any(system), xc=xc, basis=basis, **kwargs)
