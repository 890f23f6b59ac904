"""TWIST (Wang et al., "Self-Supervised Learning by Estimating Twin Class Distributions", arXiv 2110.07402):
the loss, the projection head with the grouped ("bunch") logit BatchNorm, the model wrapper and the
self-labeling stage. Loops, data, LARS, schedules and launching come from ``core``."""
