import os
import sys

import pytest

PAPER = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "papers", "align_uniform"))
if PAPER not in sys.path:
    sys.path.insert(0, PAPER)


@pytest.fixture
def paper_dir():
    return PAPER
