"""Optimisation: LARS (apex LARC, solo-learn, TWIST LARS_OPENSELF), parameter groups and schedules."""
from core.optim.lars import LARS  # noqa: F401
from core.optim.groups import apply_lr, apply_weight_decay, is_bias_or_norm, param_groups  # noqa: F401
from core.optim.schedules import (cosine_epoch_lr, cosine_scheduler, ema_momentum, step_lr,  # noqa: F401
                                  twist_lr, twist_warmup_epochs, unigrad_lr, warmup_cosine)
