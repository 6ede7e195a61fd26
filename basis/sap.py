"""The superposition-of-atomic-potentials (SAP) Hamiltonian: a baseline from one-electron-type integrals.

Each neutral atom's electrons screen its nucleus with a spherical potential; Lehtola's SAP
(J. Chem. Theory Comput. 15, 1593 (2019); Gaussian fits: J. Chem. Phys. 152, 144105 (2020))
tabulates it per element as a few s-type Gaussian charge distributions, shipped with PySCF
as the ``sap_grasp_small`` basis. The SAP Hamiltonian

    H_SAP = T + V_nuc + Σ_A V_A,   (V_A)_pq = −Σ_k c_Ak (pq | g_Ak),

with ``g_Ak`` a unit-normalised Gaussian of exponent α_Ak centred on atom A (Σ_k c_Ak = −Z_A),
needs three-centre integrals against ~10 Gaussians per atom: no density fitting factor, no
XC grid, a cost linear in the number of atom pairs that overlap. It has no grid, so it
is exactly rotation covariant. Against the converged PBE/def2-SVP Fock matrix it is farther
than the Kohn–Sham matrix of the minao density (water: 54 vs 16 mEh mean absolute
element), so a model built on it learns the difference first (:mod:`vardft.train`'s
distillation phase).
"""

from __future__ import annotations

import functools

import numpy as np
from pyscf import gto
from pyscf.df import incore

from basis.errors import InputError
from basis.system import canonical_symbol

SAP_BASIS = "sap_grasp_small"
"""PySCF's name of the tabulated SAP fit."""


@functools.lru_cache(maxsize=None)
def sap_fit(symbol: str) -> tuple[np.ndarray, np.ndarray]:
    """``(exponents, coefficients)`` (n,) of the SAP screening charge of a neutral atom,
    unit-normalised Gaussians; the coefficients add up to −Z.

    Raises:
        InputError: an element the tabulation does not cover.
    """
    symbol = canonical_symbol(symbol)
    try:
        shells = gto.basis.load(SAP_BASIS, symbol)
    except Exception:  # PySCF raises several types for an element missing from a basis file
        raise InputError(f"no SAP potential tabulated for {symbol} ({SAP_BASIS})") from None
    table = np.asarray(shells[0][1:], dtype=np.float64)
    return table[:, 0], table[:, 1]


def _screening_charges(mol) -> gto.Mole:
    """A fake molecule with one contracted s "function" per atom: its SAP screening charge."""
    parts = []
    for symbol, coord in zip(mol.elements, mol.atom_coords(unit="Bohr")):
        expnt, coeff = sap_fit(symbol)
        parts.append(gto.mole.fakemol_for_cgtf_charge(coord[None, :], expnt, coeff))
    return functools.reduce(gto.conc_mol, parts)


def sap_potential(mol) -> np.ndarray:
    """(nao, nao) Σ_A V_A of a built ``pyscf.gto.Mole``, Hartree (the screening only; add
    T + V_nuc for the SAP Hamiltonian)."""
    charges = _screening_charges(mol)
    per_atom = incore.aux_e2(mol, charges, intor="int3c2e", aosym="s1")  # (nao, nao, natom)
    return -np.asarray(per_atom.sum(axis=-1), dtype=np.float64)


def sap_hamiltonian(mol) -> tuple[np.ndarray, np.ndarray]:
    """``(H_SAP, S)`` (nao, nao) of a built ``pyscf.gto.Mole``, Hartree, PySCF's AO order."""
    hcore = mol.intor_symmetric("int1e_kin") + mol.intor_symmetric("int1e_nuc")
    return hcore + sap_potential(mol), mol.intor_symmetric("int1e_ovlp")


__all__ = ["SAP_BASIS", "sap_fit", "sap_hamiltonian", "sap_potential"]
