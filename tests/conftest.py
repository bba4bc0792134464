"""Fixtures shared across test modules: one run of the tiny test study through the real workflow."""

import os

import pytest

from workflow_helpers import snakemake


@pytest.fixture(scope="session")
def study(tmp_path_factory):
    """The test config run once through `snakemake` (tests that change the study work on a copy)."""
    wd = tmp_path_factory.mktemp("study")
    p = snakemake(wd)
    return wd, p


def pytest_collection_modifyitems(config, items):
    """Tests marked `extended` (minutes each, beyond what CI runs every time) run only with MAXACT_EXTENDED=1."""
    if os.environ.get("MAXACT_EXTENDED") == "1":
        return
    skip = pytest.mark.skip(reason="extended: beyond what CI runs each time (set MAXACT_EXTENDED=1 to run it)")
    for item in items:
        if "extended" in item.keywords:
            item.add_marker(skip)
