"""User-facing errors: one readable line, never a deep stack trace."""
from __future__ import annotations

import functools
import sys


class UserError(Exception):
    """Bad input from the user (missing data path, wrong checkpoint keys, unknown flag value, corrupt image).

    Scripts wrapped in :func:`cli_main` print ``error: <message>`` and exit with status 2.
    """


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[-1] if lines else str(text)


def cli_main(fn):
    """Decorate a script's ``main``: a :class:`UserError` (also one re-raised by a DataLoader worker) or a
    missing file becomes a single ``error:`` line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            msg = _last_line(e)
            if msg.startswith("core.errors.UserError: "):
                msg = msg[len("core.errors.UserError: "):]
            print(f"error: {msg}", file=sys.stderr)
            sys.exit(2)
        except Exception as e:  # errors from spawned workers arrive wrapped; surface a UserError inside them
            text = str(e)
            if "UserError" in text:
                line = _last_line(text)
                print(f"error: {line.split('UserError: ', 1)[-1]}", file=sys.stderr)
                sys.exit(2)
            raise

    return wrapper
