"""The crystal validation's reference: PySCF's KRKS, continued by vardft's periodic SCF where
PySCF stops short of convergence (:func:`vardft.validate.crystal_reference`)."""

import numpy as np
import pytest

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


def test_cells_whose_reference_did_not_converge_are_starred_and_left_out_of_the_means_against_it():
    """A frame whose KRKS stopped unconverged is starred, and left out of the means of the
    metrics against PySCF's own state; its n/2-per-k metrics count where that reference
    converged, and a NaN one (not converged either) is left out of those means."""
    nan = float("nan")

    def frame(mae, converged=True, like=None):
        like = mae if like is None else like
        return {"formula": "Si2", "energy_error_per_cell": mae * 1e-5, "band_mae_mev": mae, "band_max_mev": 2 * mae,
                "insulating_band_mae_mev": like, "band_shift_mev": -like, "aligned_band_mae_mev": like / 2,
                "reference_converged": converged, "reference_occupied_bands": [4, 4]}

    frames = [frame(10.0), frame(130.0, converged=False, like=7.0), frame(20.0), frame(60.0, like=nan)]
    mean = validate.summarize_crystals(frames)
    assert mean["n_structures"] == 4 and mean["n_unconverged_references"] == 1
    assert mean["band_mae_mev"] == 30.0 and mean["band_max_mev"] == 120.0  # frames 0, 2, 3
    assert mean["energy_error_per_cell_abs"] == pytest.approx(30e-5, rel=1e-12)
    assert mean["insulating_band_mae_mev"] == 37.0 / 3 and mean["band_shift_mev"] == -37.0 / 3  # frames 0, 1, 2
    kw = {"kmesh": [2, 2, 2], "xc": "pbe", "basis": "gth-dzvp", "pseudo": "gth-pbe"}
    table = validate.format_crystal_table({"frames": frames, "mean": mean, **kw})
    assert "1:Si2*" in table and "0:Si2*" not in table and "3:Si2*" not in table
    assert "did not converge on structure(s) 1 " in table and "n/2 per k (meV)" in table
    assert [line.split()[2:4] for line in table.splitlines() if line.startswith("mean")] == [["30.00", "120.00"]]
    alone = validate.summarize_crystals(frames[1:2])
    assert "band_mae_mev" not in alone and alone["insulating_band_mae_mev"] == 7.0
    table = validate.format_crystal_table({"frames": frames[1:2], "mean": alone, **kw})
    assert [line.split()[1:5] for line in table.splitlines() if line.startswith("mean")] == [["nan", "nan", "nan", "7.00"]]
