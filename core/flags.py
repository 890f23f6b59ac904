"""The flag surface of a paper script: options that the original also ignores, and options that cannot work here.

Each script keeps two module-level dicts, ``NO_EFFECT = {dest: reason}`` (accepted as the original accepts them,
with no effect; a non-default value prints one warning line) and ``UNSUPPORTED = {dest: reason}`` (a non-default
value stops with a one-line error). ``tests/flag_surface.py`` checks that every parser option is either read by
the code or listed in one of them, so the lists cannot rot.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, List, Mapping

from core.errors import UserError


def _option_string(parser: argparse.ArgumentParser, dest: str) -> str:
    for action in parser._actions:
        if action.dest == dest:
            longs = [s for s in action.option_strings if s.startswith("--")]
            return (longs or action.option_strings or [dest])[0]
    return "--" + dest


def _non_default(args: Any, parser: argparse.ArgumentParser, table: Mapping[str, str]) -> List[str]:
    out = []
    for dest in table:
        default = parser.get_default(dest)
        value = args.get(dest, default) if isinstance(args, Mapping) else getattr(args, dest, default)
        if value != default:
            out.append(dest)
    return out


def _value(args: Any, dest: str):
    return args.get(dest) if isinstance(args, Mapping) else getattr(args, dest, None)


def _main_rank() -> bool:
    """Rank 0 of the process group, or of the launcher's ``RANK`` (torchrun / launch --use_env) before it is up."""
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        return tdist.get_rank() == 0
    try:
        return int(os.environ.get("RANK", "0") or 0) == 0
    except ValueError:
        return True


def warn_no_effect(args: Any, parser: argparse.ArgumentParser, no_effect: Mapping[str, str]) -> List[str]:
    """One ``warning:`` line on stderr per option of ``no_effect`` set to a non-default value, on the main rank
    only (one line per run under torchrun too); returns their dests on every rank."""
    hits = _non_default(args, parser, no_effect)
    for dest in hits if _main_rank() else ():
        print(f"warning: {_option_string(parser, dest)}={_value(args, dest)} has no effect ({no_effect[dest]})",
              file=sys.stderr, flush=True)
    return hits


def reject_unsupported(args: Any, parser: argparse.ArgumentParser, unsupported: Mapping[str, str]) -> None:
    """A one-line :class:`UserError` for the first option of ``unsupported`` set to a non-default value."""
    for dest in _non_default(args, parser, unsupported):
        raise UserError(f"{_option_string(parser, dest)}={_value(args, dest)} is not supported here: "
                        f"{unsupported[dest]}")


def check_flags(args: Any, parser: argparse.ArgumentParser, no_effect: Mapping[str, str],
                unsupported: Mapping[str, str]) -> None:
    """:func:`reject_unsupported` then :func:`warn_no_effect`."""
    reject_unsupported(args, parser, unsupported)
    warn_no_effect(args, parser, no_effect)
