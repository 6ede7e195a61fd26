"""Run the ``vardft`` command line as a user does, and check a refusal.

``run_cli`` starts ``python -m vardft`` in a fresh process (so exit codes, tracebacks,
crashes and hangs are what a user sees), with this checkout first on ``PYTHONPATH``.
``assert_refused`` checks the error contract of issue 15: exit status 2, exactly one
line on stderr, no traceback.

Example:
    >>> from tests.cli_helpers import assert_refused, run_cli
    >>> result = run_cli("predict", "no-such-run", "water", "--out", "p.h5", cwd=tmp_path)
    >>> assert_refused(result, "no such run directory")
"""

from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CLI_TIMEOUT_S = 300.0
"""A refusal comes before any computation; this only guards against a hang (the
999999999-atom xyz made ASE run for more than 300 s)."""

REFUSED_STATUS = 2
"""Exit status of bad input (``vardft.cli.main``)."""


def run_cli(*args: str, cwd, timeout: float = CLI_TIMEOUT_S, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m vardft ARGS`` in ``cwd``; the completed process (text stdout/stderr)."""
    environ = dict(os.environ, **(env or {}))
    environ["PYTHONPATH"] = REPO + os.pathsep + environ.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "vardft", *map(str, args)],
        cwd=str(cwd),
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_refused(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Assert exit 2, one stderr line without a traceback containing every fragment; the line."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == REFUSED_STATUS, (result.returncode, result.stderr)
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]
