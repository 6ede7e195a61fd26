"""Typed exceptions for bad input.

Every problem a user can cause with their input raises a subclass of
:class:`InputError`. The command line catches ``InputError``, prints its
message on one line to stderr and exits with status 2.
"""


class InputError(ValueError):
    """Base class of every error caused by the user's input."""


class UnknownElementError(InputError):
    """A symbol that is not a chemical element."""


class BasisError(InputError):
    """A basis set that PySCF does not know or that lacks an element."""


class GeometryError(InputError):
    """Overlapping atoms, NaN or infinite coordinates, a degenerate cell."""


class ElectronCountError(InputError):
    """An electron count the requested method does not support."""


class MalformedFileError(InputError):
    """An empty, unreadable or malformed structure file."""


class FunctionalError(InputError):
    """An unknown or unsupported exchange-correlation functional."""


class CheckpointError(InputError):
    """A run directory or checkpoint that is missing or unreadable."""


class OutputPathError(InputError):
    """An output path vardft will not write: a directory, a file inside a run
    directory, or a file the command reads."""


class ResourceLimitError(InputError):
    """A request whose estimated memory or size exceeds a documented budget."""
