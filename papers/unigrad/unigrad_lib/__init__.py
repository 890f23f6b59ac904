"""UniGrad: gradient forms (grads), SiameseNet (model), config loading (config), launcher helpers (launch)."""
