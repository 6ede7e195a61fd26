"""Run the ``vardft`` command line as a user does, and check a refusal.

``run_cli`` starts ``python -m vardft`` in a fresh process (so exit codes, tracebacks,
crashes and hangs are what a user sees), with this checkout first on ``PYTHONPATH``;
``run_cli_in_process`` calls :func:`vardft.cli.main` in this process (6 s faster per
call: no fresh imports) and reports an escaping exception as the traceback a user
would see — for refusals that cannot crash or hang the interpreter.
``assert_refused`` checks the error contract of issue 15: exit status 2, exactly one
line on stderr, no traceback.

Example:
    >>> from tests.cli_helpers import assert_refused, run_cli
    >>> result = run_cli("predict", "no-such-run", "water", "--out", "p.h5", cwd=tmp_path)  # doctest: +SKIP
    >>> assert_refused(result, "no such run directory")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import traceback

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


def run_cli_in_process(*args: str, cwd) -> subprocess.CompletedProcess:
    """:func:`vardft.cli.main` with ``args`` in ``cwd``; stdout, stderr and exit status as
    :func:`run_cli` reports them (an escaping exception becomes a traceback on stderr, status 1)."""
    from vardft.cli import main

    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(str(cwd))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = main([str(a) for a in args])
            except SystemExit as exc:  # argparse
                status = exc.code if isinstance(exc.code, int) else 1
            except Exception:  # noqa: BLE001 - a user would see this traceback
                err.write(traceback.format_exc())
                status = 1
    finally:
        os.chdir(old)
    return subprocess.CompletedProcess(["vardft", *map(str, args)], status, out.getvalue(), err.getvalue())


def assert_refused(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Assert exit 2, one stderr line without a traceback containing every fragment; the line."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == REFUSED_STATUS, (result.returncode, result.stderr)
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]
