"""vardft: label-free learning of electronic Hamiltonians.

Public names (may grow, not break): :class:`System`, :func:`read_systems`,
:func:`scf`, :func:`load` (a :class:`~vardft.api.MoleculeModel` or
:class:`~vardft.api.CrystalModel`), :func:`initial_guess`,
:func:`load_dataset`, :func:`make_config` (training: :func:`vardft.train.train`). Float64 JAX is switched on by
``basis/__init__.py``, the one place that does it.
"""

from basis.errors import InputError
from basis.integrals import build_integrals
from basis.system import System, read_systems
from solvers.scf import SCFResult, scf_from_integrals
from vardft.api import CrystalModel, MoleculeModel, initial_guess, load
from vardft.config import DEFAULT_XC, MOLECULE_BASIS, TrainConfig, make_config
from vardft.data import load_dataset

__all__ = [
    "CrystalModel",
    "InputError",
    "MoleculeModel",
    "SCFResult",
    "System",
    "TrainConfig",
    "initial_guess",
    "load",
    "load_dataset",
    "make_config",
    "read_systems",
    "scf",
]


def scf(system, xc: str = DEFAULT_XC, basis: str = MOLECULE_BASIS, **kwargs) -> SCFResult:
    """Run vardft's JAX SCF with PySCF's default settings for ``xc`` and ``basis``.

    Builds the integrals (:func:`basis.integrals.build_integrals`), then solves
    (:func:`solvers.scf.scf_from_integrals`; ``kwargs`` such as ``dm0``,
    ``max_cycle``, ``conv_tol`` go there).

    Example:
        >>> water = System(("O", "H", "H"), [[0, 0, 0], [0, 0, 0.96], [0.93, 0, -0.24]])
        >>> round(scf(water, xc="pbe", basis="def2-svp").energy, 4)
        -76.2722
    """
    ints = build_integrals(System.from_any(system), xc=xc, basis=basis)
    return scf_from_integrals(ints, **kwargs)
