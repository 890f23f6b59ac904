"""Training engine: the shared loop, checkpoint I/O and curve plots."""
from core.engine.checkpoint import (copy_checkpoint, load_checkpoint, remove_stale_temp_files,  # noqa: F401
                                    rng_state, save_checkpoint, set_rng_state)
from core.engine.lifecycle import Run, broadcast_module, setup_run  # noqa: F401
from core.engine.trainer import (EngineConfig, amp_dtype, batch_images, load_model_state,  # noqa: F401
                                 prepare_model, strip_prefix, to_device, train)
from core.engine.plots import plot_curves  # noqa: F401
