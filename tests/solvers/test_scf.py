"""The JAX SCF against PySCF's own density-fitted SCF."""

import numpy as np
import pytest
from ase.build import molecule
from pyscf import dft, scf

from basis.integrals import build_integrals
from basis.system import System
from solvers.scf import scf_from_integrals

ENERGY_TOL = 1e-6  # Eh, issue 2
ORBITAL_TOL = 1e-5  # Eh, every occupied orbital energy


def _pyscf_reference(system, xc, basis):
    mol = system.to_mole(basis)
    mf = (scf.RHF(mol) if xc == "hf" else dft.RKS(mol, xc=xc)).density_fit()
    mf.verbose = 0
    mf.run()
    return mf


@pytest.mark.parametrize(
    "name,xc,basis",
    [("H2O", "pbe", "def2-svp"), ("CH4", "b3lyp", "def2-svp"), ("HF", "hf", "cc-pvdz"), ("NH3", "lda,vwn", "def2-svp")],
)
def test_scf_reproduces_pyscf(name, xc, basis):
    system = System.from_atoms(molecule(name))
    res = scf_from_integrals(build_integrals(system, xc=xc, basis=basis))
    mf = _pyscf_reference(system, xc, basis)
    nocc = system.n_electrons_all // 2
    assert res.converged and mf.converged
    assert abs(res.energy - mf.e_tot) < ENERGY_TOL
    assert np.abs(res.mo_energy[:nocc] - mf.mo_energy[:nocc]).max() < ORBITAL_TOL
    assert abs(res.lumo - mf.mo_energy[nocc]) < ORBITAL_TOL
    # the converged density is idempotent in the S metric and has the right charge
    S = mf.get_ovlp()
    assert abs(np.trace(res.density @ S) - 2 * nocc) < 1e-8


def test_scf_from_a_displaced_geometry_and_user_guess():
    rng = np.random.default_rng(11)
    base = System.from_atoms(molecule("H2O"))
    system = base.replace(positions=base.positions + 0.05 * rng.standard_normal((3, 3)))
    mf = _pyscf_reference(system, "pbe", "def2-svp")
    res = scf_from_integrals(build_integrals(system, xc="pbe", basis="def2-svp"), dm0=mf.make_rdm1())
    assert res.converged and res.iterations <= 3
    assert abs(res.energy - mf.e_tot) < ENERGY_TOL
