"""The one error the CLI reports: a single line on stderr and exit status 2."""

from __future__ import annotations

import click


class CLIError(click.ClickException):
    """Bad input (a malformed argument, an unknown run, a missing database): exit 2."""

    exit_code = 2


def one_line(message: object) -> str:
    """``message`` folded onto one line (multi-line errors joined with ``; ``)."""
    parts = [part.strip() for part in str(message).splitlines() if part.strip()]
    return "; ".join(parts) or "unknown error"
