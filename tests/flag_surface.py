"""Flag-surface check shared by the paper tests: every option a parser declares is read by the script's code or
listed in its ``NO_EFFECT`` / ``UNSUPPORTED`` dicts (see :mod:`core.flags`)."""
from __future__ import annotations

import argparse
import re
from typing import Iterable, List, Mapping


def _reads(dest: str, text: str) -> bool:
    d = re.escape(dest)
    patterns = [rf"\.{d}\b", rf"\[\s*['\"]{d}['\"]\s*\]", rf"getattr\(\s*\w+\s*,\s*['\"]{d}['\"]",
                rf"\.get\(\s*['\"]{d}['\"]"]
    return any(re.search(p, text) for p in patterns)


def _code_without_parser_lines(path: str) -> str:
    with open(path) as f:
        lines = f.read().splitlines()
    # the declaration itself is not a use
    return "\n".join(ln for ln in lines if "add_argument(" not in ln and "set_defaults(" not in ln)


def unread_options(parser: argparse.ArgumentParser, source_files: Iterable[str],
                   no_effect: Mapping[str, str], unsupported: Mapping[str, str]) -> List[str]:
    text = "\n".join(_code_without_parser_lines(p) for p in source_files)
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.dest in (argparse.SUPPRESS, "help"):
            continue
        if action.dest in no_effect or action.dest in unsupported:
            continue
        if not _reads(action.dest, text):
            out.append(action.dest)
    return out


def assert_flag_surface(parser: argparse.ArgumentParser, source_files: Iterable[str],
                        no_effect: Mapping[str, str], unsupported: Mapping[str, str]) -> None:
    unknown = [d for d in list(no_effect) + list(unsupported)
               if d not in {a.dest for a in parser._actions}]
    assert not unknown, f"NO_EFFECT/UNSUPPORTED name options the parser does not have: {unknown}"
    both = set(no_effect) & set(unsupported)
    assert not both, f"options listed as both no-effect and unsupported: {sorted(both)}"
    missing = unread_options(parser, list(source_files), no_effect, unsupported)
    assert not missing, (f"options neither read by the code nor listed in NO_EFFECT/UNSUPPORTED: {missing}")
