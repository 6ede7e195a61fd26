"""``vardft scf``: JSON output against PySCF, and every bad-input class as a one-line error."""

import json
import subprocess
import sys

import pytest
from pyscf import dft

from basis.system import System
from vardft.cli import main

WATER_XYZ = "3\nwater\nO 0.0 0.0 0.0\nH 0.0 0.0 0.96\nH 0.93 0.0 -0.24\n"


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_scf_json_matches_pyscf(tmp_path, capsys):
    path = _write(tmp_path, "water.xyz", WATER_XYZ)
    assert main(["scf", path, "--xc", "pbe", "--basis", "def2-svp", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("energy", "converged", "iterations", "mo_energy", "homo", "lumo", "nao", "xc", "basis"):
        assert key in out
    mol = System(("O", "H", "H"), [[0, 0, 0], [0, 0, 0.96], [0.93, 0, -0.24]]).to_mole("def2-svp")
    mf = dft.RKS(mol, xc="pbe").density_fit().run()
    assert abs(out["energy"] - mf.e_tot) < 1e-6
    assert abs(out["homo"] - mf.mo_energy[4]) < 1e-5
    assert out["nao"] == mol.nao and len(out["mo_energy"]) == mol.nao


BAD_INPUTS = {
    "unknown_element": ("3\n\nXq 0 0 0\nH 0 0 1\nH 0 1 0\n", [], "unknown element"),
    "basis_missing_element": ("1\n\nKr 0 0 0\n", ["--basis", "6-31g"], "no functions for element Kr"),
    "unknown_basis": (WATER_XYZ, ["--basis", "not-a-basis"], "unknown basis"),
    "overlapping_atoms": ("3\n\nO 0 0 0\nH 0 0 0.05\nH 0.9 0 0\n", [], "apart"),
    "odd_electrons": ("2\n\nO 0 0 0\nH 0 0 0.97\n", [], "closed-shell"),
    "empty_file": ("", [], "empty"),
    "malformed_file": ("this is not\nan xyz file at all\n", [], "expected the number of atoms"),
    "nan_coordinates": ("3\n\nO 0 0 nan\nH 0 0 0.96\nH 0.93 0 -0.24\n", [], "NaN"),
    "unknown_functional": (WATER_XYZ, ["--xc", "nonsense"], "unknown functional"),
    "meta_gga": (WATER_XYZ, ["--xc", "tpss"], "MGGA"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_one_line_error(case, tmp_path, capsys):
    text, extra, fragment = BAD_INPUTS[case]
    path = _write(tmp_path, f"{case}.xyz", text)
    code = main(["scf", path, *extra])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1, err
    assert fragment.lower() in err.lower()


def test_missing_file_exits_nonzero_without_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "vardft", "scf", "/nonexistent/file.xyz"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
