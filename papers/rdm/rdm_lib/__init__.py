"""Rank Differential Mechanism (Zhuo et al., ICLR 2023): spectral predictors, SimSiam/BYOL models,
argument surfaces and diagnostics. The training loops, data, LARS, launch and metrics come from ``core``."""
