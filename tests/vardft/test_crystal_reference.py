"""The crystal validation's reference: PySCF's KRKS, continued by vardft's periodic SCF where
PySCF stops short of convergence (:func:`vardft.validate.crystal_reference`)."""

import numpy as np

from basis.crystal import read_crystal
from basis.pbc_integrals import make_periodic_mean_field, periodic_integrals_from_mean_field
from vardft import validate

MESH = (15, 15, 15)


def _mean_field():
    return make_periodic_mean_field(read_crystal("si"), "lda,vwn", "gth-szv", None, (2, 2, 1), MESH)


def test_an_unconverged_pyscf_reference_is_continued_to_pyscfs_own_minimum(monkeypatch):
    """Cut PySCF's KRKS to 2 cycles: the reference continues with vardft's SCF and lands on the
    bands, energy and density of PySCF's converged KRKS (its own, run to the end)."""
    converged = _mean_field()
    ints = periodic_integrals_from_mean_field(converged)
    bands, energy, dm, source = validate.crystal_reference(converged, ints)
    assert source == "pyscf"

    monkeypatch.setattr(validate, "REFERENCE_MAX_CYCLE", 2)
    cut = _mean_field()
    cut_bands, cut_energy, cut_dm, cut_source = validate.crystal_reference(cut, periodic_integrals_from_mean_field(cut))
    assert not cut.converged and cut_source == "vardft-scf"
    assert abs(float(cut.e_tot) - energy) > 1e-8  # PySCF's own state after 2 cycles is not the minimum
    assert abs(cut_energy - energy) < 1e-9
    np.testing.assert_allclose(cut_bands[:, :8], bands[:, :8], atol=1e-6)
    np.testing.assert_allclose(cut_dm, dm, atol=1e-5)
