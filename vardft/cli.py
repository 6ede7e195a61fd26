"""The ``vardft`` command line: one program, one sub-command per task.

Each sub-command lives in :mod:`vardft.commands` as a module with
``register(subparsers)``, which adds its parser and sets ``func``. Errors in
the user's input (:class:`basis.errors.InputError`) print one line to stderr
and exit with status 2; no traceback. Other exceptions are bugs and keep their
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from basis.errors import InputError

COMMANDS = ("scf", "train", "predict", "validate", "bands", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vardft",
        description=(
            "Learn Kohn-Sham Hamiltonians without labels: an E(3)-equivariant network "
            "predicts H in an atomic-orbital basis and is trained on the variational "
            "energy of the density it implies. PySCF is the reference."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"vardft.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"vardft.commands.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        message = " ".join(str(exc).split())  # one line, whatever the message holds
        print(f"vardft {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vardft {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
