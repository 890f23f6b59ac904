"""Make ``rdm_lib`` importable for these tests without putting papers/rdm on sys.path (its script names,
e.g. ``main_lincls``, must not shadow other folders' modules). Scripts are loaded by path."""
import importlib.util
import os
import sys

RDM_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "papers", "rdm"))
if "rdm_lib" not in sys.modules:
    _pkg = os.path.join(RDM_DIR, "rdm_lib")
    _spec = importlib.util.spec_from_file_location("rdm_lib", os.path.join(_pkg, "__init__.py"),
                                                   submodule_search_locations=[_pkg])
    _mod = importlib.util.module_from_spec(_spec)
    sys.modules["rdm_lib"] = _mod
    _spec.loader.exec_module(_mod)
