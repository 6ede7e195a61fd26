"""Sub-commands of the ``vardft`` program, one module each (``register(subparsers)``)."""
