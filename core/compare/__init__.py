"""``python -m core.compare``: every method of the five papers trained through its own script under one shared
budget, then one frozen-feature protocol (see :mod:`core.compare.cli`)."""
