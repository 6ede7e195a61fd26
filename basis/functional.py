"""Exchange-correlation functional names, checked against libxc through PySCF.

``--xc`` takes PySCF's functional strings (``hf``, ``lda,vwn``, ``pbe``,
``blyp``, ``b3lyp``, ``pbe0``, ...) so that a user's PySCF input carries over.
"""

from __future__ import annotations

import dataclasses

from pyscf.dft import numint

from basis.errors import FunctionalError

_FAMILIES = {"HF": "hf", "LDA": "lda", "GGA": "gga"}


@dataclasses.dataclass(frozen=True)
class Functional:
    """A parsed functional; static metadata only (hashable, usable under jit).

    Attributes:
        name: the string as PySCF takes it (lower case), e.g. ``"b3lyp"``.
        family: ``"hf"`` (no semi-local part), ``"lda"`` or ``"gga"``.
        exact_exchange: fraction of exact (Hartree–Fock) exchange, 1.0 for HF.
    """

    name: str
    family: str
    exact_exchange: float

    @property
    def needs_grid(self) -> bool:
        return self.family != "hf"

    @property
    def ao_deriv(self) -> int:
        """Order of AO derivatives the XC term needs on the grid."""
        return 1 if self.family == "gga" else 0

    @property
    def is_hybrid(self) -> bool:
        return self.family != "hf" and self.exact_exchange != 0.0


def parse_functional(xc: str) -> Functional:
    """Check a functional name with libxc and return its :class:`Functional`.

    Raises:
        FunctionalError: unknown name, meta-GGA, non-local or range-separated
            functionals (not supported yet).
    """

    if not isinstance(xc, str) or not xc.strip():
        raise FunctionalError("the functional name is empty")
    name = xc.strip().lower()
    if name in ("hf", "rhf"):
        return Functional(name="hf", family="hf", exact_exchange=1.0)
    ni = numint.NumInt()
    try:
        xctype = ni._xc_type(name)
        omega, alpha, hyb = ni.rsh_and_hybrid_coeff(name)
    except Exception:  # libxc raises KeyError / ValueError / RuntimeError for bad names
        raise FunctionalError(f"unknown functional {xc!r} (use PySCF names such as pbe, b3lyp, lda,vwn, hf)") from None
    if xctype not in _FAMILIES:
        raise FunctionalError(f"functional {xc!r} is a {xctype}; only LDA, GGA, global hybrids and hf are supported yet")
    if omega != 0:
        raise FunctionalError(f"functional {xc!r} is range-separated; not supported yet")
    return Functional(name=name, family=_FAMILIES[xctype], exact_exchange=float(hyb))
