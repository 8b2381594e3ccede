"""Two drivers writing the same output for the same model at the same time, and a reader polling
the output while they commit.

The lease (pipeline/lease.py) normally lets only one of them work (tests/jobs/test_s3.py). Here it
is bypassed, as it would be if a lease were taken over from a run that was only slow, so the
commit protocol alone must hold: deterministic part names and atomic moves give exactly one part
per shard, neither run removes the other's files, and every read sees whole scenes only.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from jobs import synth as synth_job
from pipeline import commit
from pipeline.config import load_config
from pipeline.dataset import read_instances, read_scenes
from pipeline.infer import labels_source, run_inference
from pipeline.lease import Lease

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from replay import comparable_rows  # noqa: E402

# Half a CPU per actor: two runs' actor pools together leave one of the 2 CPUs to the reads.
# With a whole CPU each, both actors wait for tiles that no read task can get a CPU to read (Ray
# Data does not share resources across datasets): two runs on a cluster must fit side by side.
OVERRIDES = ["tiling.tile_size=128", "tiling.overlap=32", "infer.shard_scenes=1",
             "infer.actor_cpus=0.5"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("concurrency-archive")
    assert synth_job.main(["--out", str(out), "--scenes", "6", "--size", "384", "--seed", "31",
                           "--quiet"]) == 0
    return out


def test_two_drivers_without_the_lease_commit_each_part_once_and_readers_see_whole_scenes(
        ray_local, archive, tmp_path, monkeypatch):
    cfg = load_config(overrides=OVERRIDES)
    source = labels_source(str(archive / "annotations.json"), str(archive))
    clean = tmp_path / "clean"
    run_inference(source, str(archive), str(clean), cfg)
    truth = Counter(read_instances(str(clean)).column("scene_id").to_pylist())

    monkeypatch.setattr(Lease, "acquire", lambda self: None)  # both drivers work
    out = tmp_path / "out"
    errors: list[BaseException] = []
    summaries: list = []

    def drive() -> None:
        try:
            summaries.append(run_inference(source, str(archive), str(out), cfg))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    drivers = [threading.Thread(target=drive, daemon=True) for _ in range(2)]
    reads, partial = 0, []
    for thread in drivers:
        thread.start()
    deadline = time.monotonic() + 300
    while any(t.is_alive() for t in drivers):
        assert time.monotonic() < deadline, "the two drivers did not finish"
        if (out / "scenes").exists():
            # What a reader sees mid-run: each scene it sees has all its instances, once.
            seen = Counter(read_instances(str(out)).column("scene_id").to_pylist())
            partial += [(s, n, truth[s]) for s, n in seen.items() if n != truth[s]]
            reads += 1
    for thread in drivers:
        thread.join()
    assert not errors, errors
    assert reads > 0 and not partial, partial[:5]
    assert sum(s.scenes_ok for s in summaries) >= 6  # both worked (some shards done twice)
    assert comparable_rows(str(out)) == comparable_rows(str(clean))
    scenes = read_scenes(str(out)).column("scene_id").to_pylist()
    assert sorted(scenes) == sorted(set(scenes)) and len(scenes) == 6
    fs, root = commit.open_root(str(out))
    assert not fs.exists(f"{root}/{commit.STAGING}") or not fs.find(f"{root}/{commit.STAGING}")
    records = commit.read_run_records(fs, root)
    assert sorted(r["status"] for r in records) == ["succeeded", "succeeded"]


def test_two_runs_that_do_not_fit_the_cluster_fail_in_one_line_instead_of_hanging(
        ray_local, archive, tmp_path, monkeypatch):
    """With a whole CPU per actor, two runs on the 2-CPU cluster leave their read tasks no CPU.
    Ray Data's no-progress guard (`infer.stall_timeout_s`) ends a stalled run with RunStalled,
    which frees its actor's CPU; what was committed is whole, and a re-run completes."""
    from pipeline.dataflow import RunStalled

    monkeypatch.setattr(Lease, "acquire", lambda self: None)
    cfg = load_config(overrides=[*OVERRIDES[:-1], "infer.actor_cpus=1", "infer.stall_timeout_s=15"])
    source = labels_source(str(archive / "annotations.json"), str(archive))
    out = tmp_path / "out"
    outcomes: list[object] = []

    def drive() -> None:
        try:
            outcomes.append(run_inference(source, str(archive), str(out), cfg))
        except BaseException as exc:  # noqa: BLE001 - checked below
            outcomes.append(exc)

    start = time.monotonic()
    drivers = [threading.Thread(target=drive, daemon=True) for _ in range(2)]
    for thread in drivers:
        thread.start()
    for thread in drivers:
        thread.join(timeout=300)
    assert not any(t.is_alive() for t in drivers), "a run hung"
    stalled = [o for o in outcomes if isinstance(o, RunStalled)]
    assert stalled and all(isinstance(o, RunStalled) or hasattr(o, "scenes_ok") for o in outcomes), outcomes
    message = str(stalled[0])
    assert message.startswith("no tile made progress for 15 s") and "\n" not in message
    print(f"{len(stalled)} of 2 runs stalled; {time.monotonic() - start:.0f} s", file=sys.stderr)
    if (out / "scenes").exists():  # what was committed is whole
        seen = Counter(read_instances(str(out)).column("scene_id").to_pylist())
        done = set(read_scenes(str(out)).column("scene_id").to_pylist())
        assert set(seen) <= done
    clean = tmp_path / "clean"
    fit = load_config(overrides=OVERRIDES)
    run_inference(source, str(archive), str(clean), fit)
    run_inference(source, str(archive), str(out), fit)  # the re-run finishes the job
    assert comparable_rows(str(out)) == comparable_rows(str(clean))
