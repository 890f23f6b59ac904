"""Import a paper folder's package or script by path under a repo-unique module name.

Paper folders are run as script folders (``cd papers/<paper> && python main_x.py``), and several hold a file
of the same name (``main_lincls.py``), so tests never put a paper folder on ``sys.path``: they register its
package (``rdm_lib``, ``au_lib``, ...) and load its scripts by path. ``tests/`` is on ``sys.path`` through
the top conftest, also in processes the tests spawn.
"""
import importlib.util
import os
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def paper_dir(paper: str) -> str:
    return os.path.join(REPO, "papers", paper)


def register_package(paper: str, package: str):
    """Make ``papers/<paper>/<package>`` importable as ``package`` (once per process)."""
    if package in sys.modules:
        return sys.modules[package]
    path = os.path.join(paper_dir(paper), package)
    spec = importlib.util.spec_from_file_location(package, os.path.join(path, "__init__.py"),
                                                  submodule_search_locations=[path])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[package] = mod
    spec.loader.exec_module(mod)
    return mod


def load_script(paper: str, rel: str, modname: str, cached: bool = False):
    """Import ``papers/<paper>/<rel>`` as module ``modname``; with ``cached`` reuse an earlier import."""
    if cached and modname in sys.modules:
        return sys.modules[modname]
    spec = importlib.util.spec_from_file_location(modname, os.path.join(paper_dir(paper), rel))
    mod = importlib.util.module_from_spec(spec)
    if cached:
        sys.modules[modname] = mod
    spec.loader.exec_module(mod)
    return mod
