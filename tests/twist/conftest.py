import os
import sys

import pytest

TWIST_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "papers", "twist"))
if TWIST_DIR not in sys.path:
    sys.path.insert(0, TWIST_DIR)


@pytest.fixture
def twist_dir():
    return TWIST_DIR
