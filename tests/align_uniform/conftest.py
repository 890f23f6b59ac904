"""Make ``au_lib`` importable for these tests without putting papers/align_uniform on sys.path (its script
names, e.g. ``main_lincls`` or ``hubconf``, must not shadow other folders' modules); scripts load by path."""

import pytest

import au_helpers  # noqa: F401  (registers au_lib)

PAPER = au_helpers.PAPER


@pytest.fixture
def paper_dir():
    return PAPER
