"""Bad structures reach the user as one line and exit 2, quickly, through the command line.

Issue 15: an xyz whose atom count is 999999999 hung every reader (> 300 s); a 1e300
coordinate trained NaN; a Si cell with a 0.001 Å lattice vector segfaulted PySCF
(exit 139); ``scf --charge -6`` in STO-3G and a fractional charge ended in a traceback
or were silently rounded.
"""

import time

import pytest

from tests.cli_helpers import assert_refused, run_cli, run_cli_in_process

REFUSAL_SECONDS = 120.0
"""Wall time of a refused command, import of JAX and PySCF included; the hang it
guards against ran for more than 300 s."""

DEGENERATE_SI = (
    "2\n"
    'Lattice="0.0 2.7155 2.7155 2.7155 0.0 2.7155 0.001 0.0 0.0" Properties=species:S:1:pos:R:3 pbc="T T T"\n'
    "Si 0.0 0.0 0.0\n"
    "Si 1.357 1.357 0.0005\n"
)


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("999999999\nwater\nO 0 0 0\nH 0 0 0.96\nH 0.93 0 -0.24\n", ["says 999999999 atoms"]),
        ("3\nwater\nO 0 0 0\nH 0 0 1e300\nH 0.93 0 -0.24\n", ["atom 1 (H) has a coordinate"]),
        ("3\ncharge=0.5\nO 0 0 0\nH 0 0 0.96\nH 0.93 0 -0.24\n", ["charge must be a whole number"]),
    ],
    ids=["atom-count", "coordinate-1e300", "fractional-charge"],
)
def test_scf_refuses_bad_structure_files(tmp_path, text, fragments):
    (tmp_path / "bad.xyz").write_text(text)
    start = time.perf_counter()
    hang_risk = "999999999" in text  # a fresh process, killed by its timeout if the reader hangs
    run = run_cli if hang_risk else run_cli_in_process
    result = run("scf", "bad.xyz", "--basis", "sto-3g", cwd=tmp_path)
    assert_refused(result, "bad.xyz", *fragments)
    assert time.perf_counter() - start < REFUSAL_SECONDS


def test_scf_electrons_that_do_not_fit(tmp_path):
    (tmp_path / "water.xyz").write_text("3\nwater\nO 0 0 0\nH 0 0 0.96\nH 0.93 0 -0.24\n")
    result = run_cli_in_process("scf", "water.xyz", "--basis", "sto-3g", "--charge", "-6", cwd=tmp_path)
    assert_refused(result, "16 electrons", "7 orbitals of basis sto-3g")


def test_bands_degenerate_cell_no_crash(tmp_path):
    (tmp_path / "flat.extxyz").write_text(DEGENERATE_SI)
    result = run_cli("bands", "flat.extxyz", "--scf", cwd=tmp_path)
    assert_refused(result, "flat.extxyz", "degenerate")
