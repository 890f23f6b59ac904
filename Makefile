# Two set-up commands for a fresh machine: `make demo` and `make test`.
# Both create (or reuse) .venv and install what is missing.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Pinned to the builds this registry serves without a large download; GPU machines may have torch 2.11.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test test-slow venv clean

$(VPY):
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(VPY)
	@$(VPY) -c "import torch, torchvision" 2>/dev/null || $(VPY) -m pip install -q $(TORCH_PIN)
	$(VPY) -m pip install -q -e .
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VPY) -m core.demo --out demo_out

test: $(STAMP)
	OMP_NUM_THREADS=2 $(VPY) -m pytest -q tests

test-slow: $(STAMP)
	$(VPY) -m pytest -q -m slow tests

clean:
	rm -rf demo_out runs
