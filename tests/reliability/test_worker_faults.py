"""Processes of a running `maskray infer` killed from outside with SIGKILL, as the kernel's OOM
killer or a lost node would: the model actor mid-batch, a read task mid-read, the driver itself
(then the job re-run). Promise: exactly the rows of one clean run.

The victims are found by the titles Ray gives its worker processes (`ray::MapWorker(...).submit`
while an actor runs a batch, `ray::MapBatches(read_tiles)` while a read task runs), among this
test's own descendants only: other clusters on the machine are never touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from jobs import infer as infer_job
from jobs import synth as synth_job
from pipeline import commit
from pipeline.dataset import read_scenes

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from replay import comparable_rows  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TILING = ["--set", "tiling.tile_size=128", "--set", "tiling.overlap=32",
          "--set", "infer.shard_scenes=1"]
SCENES = 8


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("worker-faults-archive")
    assert synth_job.main(["--out", str(out), "--scenes", str(SCENES), "--size", "512",
                           "--seed", "23", "--quiet"]) == 0
    return out


def _args(archive: Path, out: Path) -> list[str]:
    return ["--predictor", f"labels:{archive / 'annotations.json'}", "--input", str(archive),
            "--output", str(out), "--quiet", *TILING]


@pytest.fixture(scope="module")
def clean_rows(ray_local, archive, tmp_path_factory) -> list[tuple]:
    out = tmp_path_factory.mktemp("worker-faults-clean") / "out"
    assert infer_job.main(_args(archive, out)) == 0
    return comparable_rows(str(out))


class Killer(threading.Thread):
    """SIGKILL the first descendant of `root` whose title contains every one of `needles`, once
    `ready()` says so; records the victim's title."""

    def __init__(self, root: int, needles: tuple[str, ...],
                 ready=lambda: True) -> None:
        super().__init__(daemon=True)
        self.root, self.needles, self.ready = root, needles, ready
        self.victim: str | None = None
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            if self.ready():
                for proc in psutil.Process(self.root).children(recursive=True):
                    try:
                        title = " ".join(proc.cmdline())
                        if all(n in title for n in self.needles):
                            proc.send_signal(signal.SIGKILL)
                            self.victim = title.strip()
                            return
                    except psutil.Error:
                        continue
            time.sleep(0.01)


@pytest.mark.parametrize("needles", [
    ("ray::MapWorker(MapBatches(LabelsPredictor)).submit",),  # the model actor, mid-batch
    ("ray::MapBatches(read_tiles)",),  # a read task, mid-read
], ids=["actor-mid-batch", "read-task"])
def test_a_killed_worker_is_replaced_and_the_rows_equal_a_clean_run(ray_local, archive,
                                                                    clean_rows, tmp_path, needles):
    out = tmp_path / "out"
    killer = Killer(os.getpid(), needles)
    killer.start()
    try:
        code = infer_job.main(_args(archive, out))
    finally:
        killer.done.set()
        killer.join()
    assert killer.victim is not None, "the run ended before the victim was seen"
    print(f"killed {killer.victim}", file=sys.stderr)
    assert code == 0
    assert comparable_rows(str(out)) == clean_rows
    scenes = read_scenes(str(out)).column("scene_id").to_pylist()
    assert len(scenes) == len(set(scenes)) == SCENES


def test_a_driver_killed_mid_run_then_rerun_gives_the_clean_rows(ray_local, archive, clean_rows,
                                                                tmp_path):
    """The driver (with the local Ray cluster it started) is SIGKILLed after its first commit;
    the re-run takes over the dead driver's lease at once (same host, pid gone) and does only
    the scenes that were not committed."""
    out = tmp_path / "out"
    ray_tmp = tempfile.mkdtemp(prefix="mr-kill-")  # short: Ray's socket paths have a length limit
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    proc = subprocess.Popen([sys.executable, "-m", "jobs.infer", *_args(archive, out)], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    started: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 180
        while not list((out / "scenes").rglob("part-*.parquet")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.02)
        started = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        _kill_all(started + _processes_under(ray_tmp))
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    committed = len(read_scenes(str(out)))
    print(f"driver killed after {committed} of {SCENES} scenes were committed", file=sys.stderr)
    assert 1 <= committed < SCENES
    fs, root = commit.open_root(str(out))
    assert [r["status"] for r in commit.read_run_records(fs, root)] == ["running"]  # never ended
    assert infer_job.main(_args(archive, out)) == 0
    assert comparable_rows(str(out)) == clean_rows
    scenes = read_scenes(str(out)).column("scene_id").to_pylist()
    assert len(scenes) == len(set(scenes)) == SCENES


def _processes_under(temp_dir: str) -> list[psutil.Process]:
    """Processes whose command line names `temp_dir` (the killed driver's Ray cluster)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in proc.info["cmdline"] or ()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _kill_all(procs: list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)


def test_out_of_memory_in_the_actor_splits_batches_and_fails_only_the_scene_that_never_fits(
        ray_local, tiny_bundle, tmp_path):
    """The real model in the actor pool runs "out of memory" on any forward of more than one
    tile, and on every tile of one scene (constant pixels): batches split down to single tiles
    give a clean run's rows for every other scene; that scene is an error row."""
    import dataclasses

    import numpy as np
    import rasterio
    from affine import Affine
    from ray import cloudpickle

    import faults
    from pipeline.config import load_config
    from pipeline.infer import model_source, run_inference

    inp = tmp_path / "in"
    assert synth_job.main(["--out", str(inp), "--scenes", "2", "--size", "256", "--seed", "29",
                           "--quiet"]) == 0
    with rasterio.open(inp / "scenes" / "poison.tif", "w", driver="GTiff", width=128, height=128,
                       count=3, dtype="uint8", crs="EPSG:32633",
                       transform=Affine(0.5, 0, 500000, 0, -0.5, 4000000)) as dst:
        dst.write(np.full((3, 128, 128), 7, np.uint8))
    tiling = ["tiling.tile_size=128", "tiling.overlap=16", "infer.batch_size=4"]
    clean = tmp_path / "clean"
    assert infer_job.main(["--model", str(tiny_bundle), "--input", str(inp), "--output",
                           str(clean), "--quiet", *[a for t in tiling for a in ("--set", t)]]) == 0

    cfg = load_config(overrides=tiling)
    source = model_source(str(tiny_bundle), cfg)
    spec = dataclasses.replace(source.spec, cls=faults.OutOfMemoryPredictor,
                               kwargs={**source.spec.kwargs, "fits": 1, "poison": 7})
    cloudpickle.register_pickle_by_value(faults)  # Ray's workers cannot import tests/faults.py
    try:
        summary = run_inference(dataclasses.replace(source, spec=spec), str(inp),
                                str(tmp_path / "oom"), cfg)
    finally:
        cloudpickle.unregister_pickle_by_value(faults)
    assert (summary.scenes_ok, summary.scenes_error) == (2, 1)
    scenes = {r["scene_id"]: r for r in read_scenes(str(tmp_path / "oom")).to_pylist()}
    assert scenes["scenes/poison.tif"]["error_type"] == "out_of_memory"
    assert "ran out of memory on a single 128 px tile" in scenes["scenes/poison.tif"]["error_message"]
    assert {s for s, r in scenes.items() if r["status"] == "ok"} == {
        "scenes/scene_0000.tif", "scenes/scene_0001.tif"}
    expected = [r for r in comparable_rows(str(clean)) if "poison.tif" not in r[0]]
    got = comparable_rows(str(tmp_path / "oom"))
    assert got == expected and len(got) > 0
