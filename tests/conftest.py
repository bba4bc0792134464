"""Fixtures shared across test modules: one run of the tiny test study through the real workflow."""

import pytest

from workflow_helpers import snakemake


@pytest.fixture(scope="session")
def study(tmp_path_factory):
    """The test config run once through `snakemake` (tests that change the study work on a copy)."""
    wd = tmp_path_factory.mktemp("study")
    p = snakemake(wd)
    return wd, p
