"""Import a paper folder's package (``unigrad_lib``, ``rdm_lib``, ...) or script by path, without putting the
folder on ``sys.path`` (several folders hold scripts of the same name)."""
from __future__ import annotations

import importlib.util
import os
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def paper_path(paper: str, *rel: str) -> str:
    return os.path.join(REPO, "papers", paper, *rel)


def package(paper: str, name: str):
    """``papers/<paper>/<name>`` importable as ``name`` (registered once per process)."""
    if name in sys.modules:
        return sys.modules[name]
    path = paper_path(paper, name)
    spec = importlib.util.spec_from_file_location(name, os.path.join(path, "__init__.py"),
                                                  submodule_search_locations=[path])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def script(paper: str, rel: str, modname: str):
    """``papers/<paper>/<rel>`` as module ``modname`` (cached)."""
    if modname in sys.modules:
        return sys.modules[modname]
    spec = importlib.util.spec_from_file_location(modname, paper_path(paper, rel))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    spec.loader.exec_module(mod)
    return mod
