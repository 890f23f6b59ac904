"""Import a paper folder's package (``unigrad_lib``, ``rdm_lib``, ...) or script by path under a repo-unique
module name.

Paper folders are run as script folders (``cd papers/<paper> && python main_x.py``) and several hold a file of
the same name (``main_lincls.py``), so nothing puts a paper folder on ``sys.path``: its package is registered
under its own name and its scripts are loaded by path. Used by ``core.bench`` and the tests.
"""
from __future__ import annotations

import importlib.util
import os
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def paper_dir(paper: str, *rel: str) -> str:
    """``papers/<paper>/<rel...>`` as an absolute path."""
    return os.path.join(REPO, "papers", paper, *rel)


def register_package(paper: str, package: str):
    """Make ``papers/<paper>/<package>`` importable as ``package`` (once per process)."""
    if package in sys.modules:
        return sys.modules[package]
    path = paper_dir(paper, package)
    spec = importlib.util.spec_from_file_location(package, os.path.join(path, "__init__.py"),
                                                  submodule_search_locations=[path])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[package] = mod
    spec.loader.exec_module(mod)
    return mod


def load_script(paper: str, rel: str, modname: str, cached: bool = False):
    """Import ``papers/<paper>/<rel>`` as module ``modname``; with ``cached`` register it and reuse an earlier
    import (without, every call executes the script's module afresh)."""
    if cached and modname in sys.modules:
        return sys.modules[modname]
    spec = importlib.util.spec_from_file_location(modname, paper_dir(paper, rel))
    mod = importlib.util.module_from_spec(spec)
    if cached:
        sys.modules[modname] = mod
    spec.loader.exec_module(mod)
    return mod
