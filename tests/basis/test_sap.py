"""The SAP Hamiltonian: PySCF's own SAP potential, exact covariance, and a physical limit."""

import numpy as np
from pyscf import gto
from pyscf.scf import hf

from basis.layout import ao_rotation
from basis.sap import SAP_BASIS, sap_fit, sap_hamiltonian
from basis.system import System

ETHANOL = System(
    ("C", "C", "O", "H", "H", "H", "H", "H", "H"),
    [[1.168, -0.4, 0.0], [0.0, 0.56, 0.0], [-1.19, -0.23, 0.0], [-1.94, 0.37, 0.0], [0.04, 1.2, 0.88],
     [0.04, 1.2, -0.88], [1.13, -1.04, 0.88], [1.13, -1.04, -0.88], [2.11, 0.15, 0.0]],
)


def test_sap_hamiltonian_equals_pyscf_sap_guess_potential():
    """hcore + Σ_A V_A against PySCF's ``make_sap`` (its SAP initial guess), def2-SVP."""
    H, S = sap_hamiltonian(ETHANOL.to_mole("def2-svp"))
    mol = ETHANOL.to_mole("def2-svp")
    table = {e: np.asarray(gto.basis.load(SAP_BASIS, e)[0][1:]) for e in set(mol.elements)}
    reference = hf.get_hcore(mol) + hf.make_sap(mol, table)
    assert np.abs(H - reference).max() < 1e-12
    assert np.abs(S - mol.intor("int1e_ovlp")).max() < 1e-14


def test_screening_charge_is_the_electron_count():
    for symbol, z in (("H", 1), ("C", 6), ("N", 7), ("O", 8), ("F", 9)):
        assert abs(sap_fit(symbol)[1].sum() + z) < 1e-10


def test_sap_hamiltonian_is_exactly_covariant():
    """No grid: H_SAP(Q x + t) = D H_SAP(x) Dᵀ to round-off (an improper rotation and a shift)."""
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    Q = -Q if np.linalg.det(Q) > 0 else Q  # an improper rotation: inversion included
    moved = ETHANOL.replace(positions=np.asarray(ETHANOL.positions) @ Q.T + np.array([0.3, -1.2, 2.0]))
    H0, _ = sap_hamiltonian(ETHANOL.to_mole("def2-svp"))
    H1, _ = sap_hamiltonian(moved.to_mole("def2-svp"))
    D = ao_rotation("def2-svp", ETHANOL.symbols, Q)
    assert np.abs(H1 - D @ H0 @ D.T).max() < 1e-10 * np.abs(H0).max()


def test_far_apart_atoms_see_only_their_own_potential():
    """A neutral atom's screened potential vanishes far away: the SAP block of one atom of a
    stretched dimer equals the atom's own SAP Hamiltonian."""
    atom, _ = sap_hamiltonian(System(("N",), [[0.0, 0.0, 0.0]], spin=3).to_mole("def2-svp"))
    far, _ = sap_hamiltonian(System(("N", "N"), [[0.0, 0.0, 0.0], [0.0, 0.0, 40.0]]).to_mole("def2-svp"))
    n = atom.shape[0]
    assert np.abs(far[:n, :n] - atom).max() < 1e-8
