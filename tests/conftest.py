"""Fixtures shared by the whole suite: the real data beside the repo, and one local Ray cluster."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` (real imagery with labels); the test is skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray cluster for the whole session (never one per test), 2 CPUs like the CI
    machine, shut down at the end. Only this process's own cluster is stopped."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def logged():
    """`with logged("model.via") as lines:` collects that logger's messages (WARNING and up) as
    text; works with pytest's logging plugin on or off (`-p no:logging`)."""
    import contextlib
    import logging

    @contextlib.contextmanager
    def collect(name: str):
        lines: list[str] = []
        handler = logging.Handler(logging.WARNING)
        handler.emit = lambda record: lines.append(record.getMessage())
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        try:
            yield lines
        finally:
            logger.removeHandler(handler)

    return collect

