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


def test_the_insulating_reference_fills_half_the_electrons_at_every_k_point():
    """``occupied_bands`` counts tr P(k) S(k) / 2; the insulating reference (PySCF with
    n/2 bands at every k-point, vardft's filling) of an insulator is PySCF's own state."""
    mf = _mean_field()
    ints = periodic_integrals_from_mean_field(mf)
    bands, energy, dm, source = validate.crystal_reference(mf, ints)
    S = np.asarray(ints.overlap)
    nocc = ints.n_electrons // 2
    assert validate.occupied_bands(dm, S) == [nocc] * ints.nkpts
    assert validate.occupied_bands(dm * 0.5, S) == [nocc // 2] * ints.nkpts
    ins_bands, ins_energy, ins_dm, converged = validate.insulating_reference(mf, ints)
    assert converged and validate.occupied_bands(ins_dm, S) == [nocc] * ints.nkpts
    assert abs(ins_energy - energy) < 1e-8
    np.testing.assert_allclose(ins_bands[:, : nocc + 4], bands[:, : nocc + 4], atol=1e-6)


def test_band_shift_is_the_mean_signed_error_and_the_aligned_mae_what_is_left():
    """Bands offset by a constant plus a known zero-mean pattern: the shift is the constant,
    the aligned MAE the pattern's mean |·|; bands past valence + conduction are ignored."""
    rng = np.random.default_rng(0)
    ref = np.sort(rng.normal(size=(3, 10)), axis=1)
    pattern = np.tile([1e-4, -1e-4], (3, 3))  # (3, 6): zero mean, |·| = 0.1 mEh everywhere
    pred = ref.copy()
    pred[:, :6] += 2e-3 + pattern
    pred[:, 6:] += 1.0  # outside the 2 valence + 4 conduction bands compared
    shift, aligned = validate.band_shift_mev(pred, ref, n_occupied=2, n_conduction=4)
    assert abs(shift - 2e-3 * validate.HARTREE_TO_MEV) < 1e-9
    assert abs(aligned - 1e-4 * validate.HARTREE_TO_MEV) < 1e-9
    mae, _ = validate.band_mae_mev(pred, ref, n_occupied=2, n_conduction=4)
    assert abs(mae - 2e-3 * validate.HARTREE_TO_MEV) < 1e-9  # |2.0 ± 0.1| averages to 2.0 mEh
