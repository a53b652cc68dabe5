"""The ``ironflow`` command line (click): ``worker``, ``start``, ``emit``, ``runs``, ``replay``."""

from ironflow.cli.main import cli, main

__all__ = ["cli", "main"]
