"""Training engine: the shared loop, checkpoint I/O and curve plots."""
from core.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state  # noqa: F401
from core.engine.trainer import (EngineConfig, amp_dtype, batch_images, load_model_state,  # noqa: F401
                                 prepare_model, strip_prefix, to_device, train)
from core.engine.plots import plot_curves  # noqa: F401
