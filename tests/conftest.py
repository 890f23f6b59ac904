"""Shared test settings: small thread pools so the suite fits two CPU cores."""
import os

import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
