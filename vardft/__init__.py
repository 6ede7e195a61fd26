"""vardft: label-free learning of electronic Hamiltonians.

Public names (may grow, not break): :class:`System`, :func:`scf`.
"""

from basis.errors import InputError  # float64 JAX is switched on by basis/__init__.py
from basis.system import System, read_systems

__all__ = ["InputError", "System", "initial_guess", "load", "read_systems", "scf"]


def scf(system, xc: str = "pbe", basis: str = "def2-svp", **kwargs):
    """Run vardft's JAX SCF; see :func:`solvers.scf.run_scf`."""
    from solvers.scf import run_scf

    return run_scf(System.from_any(system), xc=xc, basis=basis, **kwargs)


def load(run_dir: str):
    """Load a trained model; see :class:`vardft.api.Model`."""
    from vardft.api import load as _load

    return _load(run_dir)


def initial_guess(run_dir, mol):
    """Density matrix for ``pyscf`` ``mf.kernel(dm0=...)``; see :func:`vardft.api.initial_guess`."""
    from vardft.api import initial_guess as _initial_guess

    return _initial_guess(run_dir, mol)
