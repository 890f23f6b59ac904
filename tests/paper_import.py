"""The tests' name for :mod:`core.paper_import` (register a paper's package, load its scripts by path).

``tests/`` is on ``sys.path`` through the top conftest, also in processes the tests spawn.
"""
from core.paper_import import REPO, load_script, paper_dir, register_package  # noqa: F401
