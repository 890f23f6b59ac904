"""Make ``unigrad_lib`` importable for the tests of this folder without putting papers/unigrad on sys.path
(its script names, e.g. ``pretrain``, must not shadow other folders' modules). Scripts are loaded by path."""
import importlib.util
import os
import sys

UNIGRAD_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "papers", "unigrad"))
if "unigrad_lib" not in sys.modules:
    _pkg = os.path.join(UNIGRAD_DIR, "unigrad_lib")
    _spec = importlib.util.spec_from_file_location("unigrad_lib", os.path.join(_pkg, "__init__.py"),
                                                   submodule_search_locations=[_pkg])
    _mod = importlib.util.module_from_spec(_spec)
    sys.modules["unigrad_lib"] = _mod
    _spec.loader.exec_module(_mod)
