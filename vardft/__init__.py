"""vardft: label-free learning of electronic Hamiltonians.

Public names (may grow, not break): :class:`System`, :func:`scf`.
"""

from basis.errors import InputError  # float64 JAX is switched on by basis/__init__.py
from basis.system import System, read_systems

__all__ = ["InputError", "System", "initial_guess", "load", "read_systems", "scf"]


def scf(system, xc: str = "pbe", basis: str = "def2-svp", **kwargs):
    """Run vardft's JAX SCF with PySCF's default settings for ``xc`` and ``basis``.

    Builds the integrals (:func:`basis.integrals.build_integrals`), then solves
    (:func:`solvers.scf.scf_from_integrals`; ``kwargs`` such as ``dm0``,
    ``max_cycle``, ``conv_tol`` go there). Returns a :class:`solvers.scf.SCFResult`.

    Example:
        >>> water = System(("O", "H", "H"), [[0, 0, 0], [0, 0, 0.96], [0.93, 0, -0.24]])
        >>> round(scf(water, xc="pbe", basis="def2-svp").energy, 4)
        -76.2722
    """
    from basis.integrals import build_integrals
    from solvers.scf import scf_from_integrals

    ints = build_integrals(System.from_any(system), xc=xc, basis=basis)
    return scf_from_integrals(ints, **kwargs)


def load(run_dir: str):
    """Load a trained model; see :class:`vardft.api.Model`."""
    from vardft.api import load as _load

    return _load(run_dir)


def initial_guess(run_dir, mol):
    """Density matrix for ``pyscf`` ``mf.kernel(dm0=...)``; see :func:`vardft.api.initial_guess`."""
    from vardft.api import initial_guess as _initial_guess

    return _initial_guess(run_dir, mol)
