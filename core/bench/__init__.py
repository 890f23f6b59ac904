"""Benchmark of every paper's main training recipe on this machine: the full training step (the paper's own
model, loss and optimizer classes, a real optimizer step) in pairs/s and peak memory, its FLOPs counted with
fvcore, and the input pipeline (JPEG decode + the recipe's augmentation) per worker core and with N workers.

    python -m core.bench                      # every recipe; CPU: small batch, few steps; CUDA: 224 px recipes
    python -m core.bench --recipe moco_au --batch-size 256 --steps 30
    python -m core.bench --tiny               # resnet_tiny / 32 px (what CI runs)
    python -m core.bench --flops-only         # the FLOP table alone, no timing (seconds on CPU)

Modules: :mod:`core.bench.recipes` (the six recipes), :mod:`core.bench.step` (timing with the engine's
settings), :mod:`core.bench.flops` (fvcore counts, GPU peak table), :mod:`core.bench.inputs` (input pipeline),
:mod:`core.bench.cli` (flags and tables).
"""
from core.bench.cli import main  # noqa: F401
