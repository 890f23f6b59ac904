import os
import sys

RDM_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "papers", "rdm"))
if RDM_DIR not in sys.path:
    sys.path.insert(0, RDM_DIR)
