"""``vardft bands``: --scf against PySCF's get_bands on Si, JSON keys, plot, error paths."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from vardft.cli import main

BAND_TOL_MEV = 0.1  # the target for --scf bands vs PySCF get_bands
ENERGY_TOL = 1e-6  # Eh per cell
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _one_line_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.slow  # 40 s; the same comparison without the CLI: tests/solvers/test_bands.py
def test_bands_scf_matches_pyscf_get_bands(tmp_path, capsys):
    plot = tmp_path / "bands.png"
    argv = ["bands", "si", "--scf", "--xc", "lda,vwn", "--kmesh", "1", "1", "1", "--path", "GX",
            "--npoints", "4", "--compare-pyscf", "--plot", str(plot), "--json"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    for key in ("labels", "kpoints_frac", "bands_ev", "fermi_ev", "xc", "basis", "pseudo", "kmesh"):
        assert key in data
    assert data["labels"] == [{"label": "G", "index": 0}, {"label": "X", "index": 3}]
    assert np.allclose(data["kpoints_frac"][3], [0.5, 0.0, 0.5])
    assert (data["xc"], data["basis"], data["pseudo"], data["kmesh"]) == ("lda,vwn", "gth-szv", "gth-pade", [1, 1, 1])
    bands = np.asarray(data["bands_ev"])
    assert bands.shape == (4, 8)
    assert data["converged"] and data["pyscf"]["converged"]
    assert abs(data["pyscf"]["energy_diff_eh"]) < ENERGY_TOL
    ref = np.asarray(data["pyscf"]["bands_ev"])
    assert np.abs(bands - ref).max() * 1e3 < BAND_TOL_MEV
    assert data["pyscf"]["max_abs_band_diff_mev"] < BAND_TOL_MEV
    # Fermi level = highest occupied state (4 doubly occupied bands), absolute scale
    assert abs(data["fermi_ev"] - data["pyscf"]["fermi_ev"]) * 1e3 < BAND_TOL_MEV
    assert plot.exists() and plot.stat().st_size > 10_000
    assert 0.0 < data["gap_ev"] == data["cbm_ev"] - data["vbm_ev"]
    assert data["vbm_ev"] >= data["fermi_ev"] - 1e-9  # Γ (the SCF k-point) is on the path
    from vardft.commands.bands import _summary

    text = _summary(data, str(plot))
    assert "band gap" in text and "vs PySCF" in text and str(plot) in text


def test_model_missing_run_dir(capsys):
    line = _one_line_error(capsys, ["bands", "si", "--model", "runs/none"])
    assert "runs/none" in line


def test_no_cell(tmp_path, capsys):
    xyz = tmp_path / "water.xyz"
    xyz.write_text("3\n\nO 0 0 0\nH 0 0.76 0.59\nH 0 -0.76 0.59\n")
    assert "no cell" in _one_line_error(capsys, ["bands", str(xyz), "--scf"])


@pytest.mark.parametrize(
    "argv,expect",
    [
        (["bands", "missing.cif", "--scf"], "no such file"),
        (["bands", "si", "--scf", "--basis", "gth-nonsense"], "unknown basis"),
        (["bands", "si", "--scf", "--pseudo", "gth-nonsense"], "pseudopotential"),
        (["bands", "si", "--scf", "--xc", "b3lyp"], "LDA and GGA"),
        (["bands", "si", "--scf", "--kmesh", "0", "1", "1"], "positive integers"),
        (["bands", "si", "--scf", "--path", "GQ"], "unknown high-symmetry point"),
    ],
)
def test_input_errors(capsys, argv, expect):
    assert expect in _one_line_error(capsys, argv)


def test_bad_file_program(tmp_path):
    """The installed entry point: a malformed file exits 2 with one line on stderr."""
    junk = tmp_path / "junk.cif"
    junk.write_text("data_x\n_cell_length_a oops\n")
    proc = subprocess.run(
        [sys.executable, "-m", "vardft", "bands", str(junk), "--scf"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vardft bands: error:"), proc.stderr
