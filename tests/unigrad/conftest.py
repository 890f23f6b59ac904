"""Make papers/unigrad importable for the tests of this folder (scripts themselves run from that folder)."""
import os
import sys

UNIGRAD_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "papers", "unigrad"))
if UNIGRAD_DIR not in sys.path:
    sys.path.insert(0, UNIGRAD_DIR)
