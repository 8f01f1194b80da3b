"""The one base of Reverie's errors: a user's bad input or an impossible request, said in one line.

Every domain error derives from ReverieError (and keeps the built-in base it had, ValueError or RuntimeError,
so that existing callers' `except ValueError` still works). The `reverie` dispatcher prints any ReverieError that
reaches it as one clean line, `reverie <command>: error: <message>`, and exits 1: no traceback for a user's mistake.
A message says what was wrong, where (file, offset, field, flag), and what to do.
"""

from __future__ import annotations


class ReverieError(Exception):
    """Base of every error Reverie raises on purpose."""
