"""Every script in ``examples/`` runs to the end in its smoke mode.

Each example runs as a user runs it: ``python examples/NN-name.py`` in a fresh
process, in an empty working directory, with ``VARDFT_EXAMPLE_SMOKE=1`` (which shrinks
it to seconds) and ``TMPDIR`` pointing inside the test's temporary directory. It must
exit 0 and write nothing into its working directory or into ``examples/``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"

EXAMPLE_TIMEOUT_S = 600.0
"""Guards against a hang only; a smoke run takes seconds to about a minute."""

def example_scripts() -> list:
    """Every example, in the default suite (none marked slow), so that none can rot."""
    scripts = sorted(EXAMPLES.glob("*.py"))
    return [pytest.param(p, id=p.name) for p in scripts]


def test_examples_exist():
    names = [p.name for p in EXAMPLES.glob("*.py")]
    assert len(names) >= 5
    assert all(name[:2].isdigit() and name[2] == "-" for name in names), names


@pytest.mark.parametrize("script", example_scripts())
def test_example_runs_in_smoke_mode(script: Path, tmp_path: Path):
    cwd = tmp_path / "cwd"
    scratch = tmp_path / "tmp"
    cwd.mkdir()
    scratch.mkdir()
    before = sorted(p.name for p in EXAMPLES.iterdir())
    env = dict(os.environ, VARDFT_EXAMPLE_SMOKE="1", TMPDIR=str(scratch), MPLBACKEND="Agg")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(
        [sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True, timeout=EXAMPLE_TIMEOUT_S
    )
    assert result.returncode == 0, f"{script.name} exited {result.returncode}\n{result.stdout}\n{result.stderr[-4000:]}"
    assert result.stdout.strip(), f"{script.name} printed nothing"
    assert not list(cwd.iterdir()), f"{script.name} wrote into its working directory: {list(cwd.iterdir())}"
    assert sorted(p.name for p in EXAMPLES.iterdir()) == before, f"{script.name} wrote into examples/"
