"""Physical constants, taken from PySCF (the project's reference), never typed by hand."""

from pyscf.data import nist

BOHR_ANGSTROM: float = nist.BOHR
"""One Bohr in Ångström."""

HARTREE_TO_EV: float = nist.HARTREE2EV
"""One Hartree in electron-volts."""

HARTREE_TO_MEV: float = 1e3 * nist.HARTREE2EV
"""One Hartree in milli-electron-volts."""
