"""User-facing errors: one readable line, never a deep stack trace."""
from __future__ import annotations

import functools
import os
import sys


class UserError(Exception):
    """Bad input from the user (missing data path, wrong checkpoint keys, unknown flag value, corrupt image).

    Scripts wrapped in :func:`cli_main` print ``error: <message>`` and exit with status 2.
    """


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[-1] if lines else str(text)


def print_error(msg: str) -> None:
    """Write ``error: msg`` straight to stderr, on every rank (the rank-0 ``print`` filter of
    :func:`core.dist.setup_for_distributed` does not apply)."""
    sys.stderr.write(f"error: {msg}\n")
    sys.stderr.flush()


def os_error_line(e: OSError) -> str:
    """An OSError on a path as one line: what failed, on which path, and why."""
    path = e.filename if e.filename is not None else ""
    reason = e.strerror or e.__class__.__name__
    if path:
        extra = f" -> '{e.filename2}'" if getattr(e, "filename2", None) else ""
        return f"cannot use '{os.fspath(path)}'{extra}: {reason}"
    return f"{e.__class__.__name__}: {e}"


# what a collective raises on a rank whose peer has exited (gloo; NCCL): that rank stops with status 2 and one
# plain line, so the run's only ``error:`` line is the one of the rank that met the error
PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
             "remote process exited or there was a network error", "NCCL communicator was aborted")


def cli_main(fn):
    """Decorate a script's ``main``: a :class:`UserError` (also one re-raised by a DataLoader worker or a
    spawned process) or an OSError on a path becomes a single ``error:`` line on stderr and exit status 2; a
    rank whose peer ended first (``PEER_LOST``) says so in one line without ``error:`` and exits with 2 too."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            msg = _last_line(e)
            if msg.startswith("core.errors.UserError: "):
                msg = msg[len("core.errors.UserError: "):]
            print_error(msg)
            sys.exit(2)
        except OSError as e:
            if e.filename is None:
                raise
            print_error(os_error_line(e))
            sys.exit(2)
        except Exception as e:  # errors from spawned workers arrive wrapped; surface a UserError inside them
            text = str(e)
            if "UserError" in text or "TrainingDiverged" in text:
                line = _last_line(text)
                for marker in ("UserError: ", "TrainingDiverged: "):
                    if marker in line:
                        line = line.split(marker, 1)[-1]
                print_error(line)
                sys.exit(2)
            if getattr(e, "exit_code", None) == 2:  # a spawned process that printed its own error line
                sys.exit(2)
            if any(m in text for m in PEER_LOST):
                rank = os.environ.get("RANK")
                sys.stderr.write(f"{f'rank {rank}: ' if rank else ''}stopping: another process of this run "
                                 f"ended first (its own output says why: an error line, or a kill)\n")
                sys.stderr.flush()
                sys.exit(2)
            raise

    return wrapper
