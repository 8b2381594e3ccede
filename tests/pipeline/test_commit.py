"""Commit protocol: deterministic parts, staging then atomic commit, kills, recovery, runs."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from affine import Affine
from fsspec.implementations.local import LocalFileSystem
from rasterio.crs import CRS

from pipeline import rle
from pipeline.commit import (Recovery, RunRecord, clean_staging, code_version, commit_staged,
                             is_shard_committed, new_run_id, open_root, read_run_records,
                             recover_shards, shard_name, stage_shard, write_run_record,
                             write_shard)
from pipeline.detection import Detection
from pipeline.rows import SceneInfo, build_shard_tables, crs_to_projjson
from pipeline.schema import validate_geo_metadata

REPO = Path(__file__).resolve().parents[2]
NAMES = ["background", "car", "building"]
UTM16, WGS84 = CRS.from_epsg(32616).to_wkt(), CRS.from_epsg(4326).to_wkt()
GRID = Affine(0.5, 0.0, 740000.0, 0.0, -0.5, 3730000.0)


def make_shard(run_id="r1", crss=(UTM16, UTM16, None), per_scene=3):
    """(instances, scenes) of scenes s0, s1, ... with `per_scene` square detections each."""
    items = []
    for i, crs in enumerate(crss):
        dets = [Detection(1 + k % 2, 0.5 + k / 10, 10 * k, 5 * k, 10 * k + 4, 5 * k + 4,
                          rle.encode(np.ones((4, 4), bool))) for k in range(per_scene)]
        items.append((SceneInfo(f"s{i}.tif", 100, 100, 1, "uint8", crs, GRID, 1, 0.1), dets))
    return build_shard_tables(items, "m1", run_id, NAMES)


def commit(root, run_id="r1", **kw):
    instances, scenes = make_shard(run_id, **kw)
    fs, path = open_root(str(root))
    return write_shard(fs, path, instances=instances, scenes=scenes, model_id="m1", run_id=run_id,
                       config_hash="cfg", class_names=NAMES)


def visible_files(root):
    """{relative path: bytes} of every file readers can see (instances/ and scenes/)."""
    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for sub in ("instances", "scenes")
            for p in sorted((root / sub).rglob("*")) if p.is_file()}


def staged_files(root):
    return sorted(p for p in (Path(root) / "_staging").rglob("*") if p.is_file())


def test_shard_name_is_deterministic():
    name = shard_name(["b", "a"], "m1", "cfg")
    assert name == shard_name(["a", "b", "a"], "m1", "cfg") and len(name) == len("part-") + 16
    assert len({name, shard_name(["a"], "m1", "cfg"), shard_name(["a", "b"], "m2", "cfg"),
                shard_name(["a", "b"], "m1", "cfg2")}) == 4


def test_commit_writes_sorted_parts_per_crs_and_no_staging(tmp_path):
    result = commit(tmp_path)
    assert not result.skipped and len(result.instance_files) == 2  # UTM scenes + pixel scene
    files = visible_files(tmp_path)
    assert sorted(files) == sorted([f"instances/model=m1/{f}" for f in result.instance_files]
                                   + [f"scenes/model=m1/{result.name}.parquet"])
    assert staged_files(tmp_path) == []
    fs, root = open_root(str(tmp_path))
    assert is_shard_committed(fs, root, "m1", result.name)
    utm = pq.ParquetFile(tmp_path / "instances/model=m1" / result.instance_files[0])
    geo = json.loads(utm.schema_arrow.metadata[b"geo"])
    validate_geo_metadata(geo, utm.schema_arrow)
    assert geo["columns"]["geometry"]["crs"] == crs_to_projjson(UTM16)
    rows = utm.read().to_pylist()
    keys = [(r["scene_id"], r["px_bbox"]["y0"], r["px_bbox"]["x0"]) for r in rows]
    assert keys == sorted(keys) and {r["scene_id"] for r in rows} == {"s0.tif", "s1.tif"}
    stats = utm.metadata.row_group(0).column(0).statistics
    assert stats.has_min_max and (stats.min, stats.max) == ("s0.tif", "s1.tif")
    pixel = pq.read_schema(tmp_path / "instances/model=m1" / result.instance_files[1])
    assert json.loads(pixel.metadata[b"geo"])["columns"]["geometry"]["crs"] is None


def test_parts_split_by_crs_and_by_size(tmp_path):
    instances, scenes = make_shard(crss=(UTM16, WGS84, None, UTM16), per_scene=5)
    fs, root = open_root(str(tmp_path))
    result = write_shard(fs, root, instances=instances, scenes=scenes, model_id="m1", run_id="r1",
                         config_hash="cfg", row_group_rows=4, max_part_rows=8)
    sizes = [pq.ParquetFile(tmp_path / "instances/model=m1" / f).metadata.num_rows
             for f in result.instance_files]
    assert sorted(sizes) == [2, 5, 5, 8] and sum(sizes) == 20  # UTM: 10 rows -> 8 + 2
    for f in result.instance_files:
        meta = pq.ParquetFile(tmp_path / "instances/model=m1" / f).metadata
        assert all(meta.row_group(i).num_rows <= 4 for i in range(meta.num_row_groups))


def test_rerun_skips_a_committed_shard_and_parts_are_byte_identical(tmp_path):
    commit(tmp_path / "a")
    commit(tmp_path / "b")
    first = visible_files(tmp_path / "a")
    assert first == visible_files(tmp_path / "b")  # no timestamps inside Parquet
    again = commit(tmp_path / "a", run_id="r2")
    assert again.skipped
    assert visible_files(tmp_path / "a") == first  # rows keep the first run's id


@pytest.mark.parametrize("fail_on", ["/instances/", "/scenes/"])
def test_exception_while_writing_leaves_nothing_visible(tmp_path, fail_on):
    class FailingFS(LocalFileSystem):
        def _open(self, path, mode="rb", **kwargs):
            f = super()._open(path, mode, **kwargs)
            if "w" in mode and fail_on in path:
                real = f.write

                def write(data):
                    real(data)
                    raise OSError("disk full")

                f.write = write
            return f

    instances, scenes = make_shard()
    fs = FailingFS(skip_instance_cache=True)
    with pytest.raises(OSError, match="disk full"):
        write_shard(fs, str(tmp_path), instances=instances, scenes=scenes, model_id="m1",
                    run_id="r1", config_hash="cfg")
    assert visible_files(tmp_path) == {} and staged_files(tmp_path)  # only a staged part
    commit(tmp_path)  # the re-run of the shard
    commit(tmp_path / "clean")
    assert visible_files(tmp_path) == visible_files(tmp_path / "clean")


KILLED_WRITER = r"""
import os, sys, time
import pyarrow.ipc as ipc
from fsspec.implementations.local import LocalFileSystem
from pipeline.commit import write_shard

root, mode, src = sys.argv[1:4]

class StallingFS(LocalFileSystem):
    def _open(self, path, mode="rb", **kwargs):
        f = super()._open(path, mode, **kwargs)
        if "w" in mode and MODE == "staging":
            real = f.write
            def write(data):
                real(data); f.flush()
                print("STALLED", flush=True); time.sleep(120)
            f.write = write
        return f

real_replace = os.replace
def stalling_replace(a, b):
    if "/scenes/" in b and "_staging" not in b:
        print("STALLED", flush=True); time.sleep(120)
    real_replace(a, b)

MODE = mode
os.replace = stalling_replace
tables = [ipc.open_file(f"{src}/{n}.arrow").read_all() for n in ("instances", "scenes")]
write_shard(StallingFS(skip_instance_cache=True), root, instances=tables[0], scenes=tables[1],
            model_id="m1", run_id="r1", config_hash="cfg",
            class_names=["background", "car", "building"])
"""


def run_killed_writer(tmp_path, root, mode):
    """Run write_shard in a subprocess, SIGKILL it where `mode` says: "staging" (in the middle of
    writing the first staged part) or "commit" (after the instances parts moved, before the
    scenes part)."""
    for name, table in zip(("instances", "scenes"), make_shard()):
        with ipc.new_file(str(tmp_path / f"{name}.arrow"), table.schema) as writer:
            writer.write_table(table)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(root), mode, str(tmp_path)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "STALLED"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()


def test_sigkill_while_staging_leaves_nothing_visible(tmp_path):
    root = tmp_path / "out"
    run_killed_writer(tmp_path, root, "staging")
    assert visible_files(root) == {} and staged_files(root)
    fs, path = open_root(str(root))
    assert recover_shards(fs, path, "m1") == Recovery()  # a torn file is never committed
    assert clean_staging(fs, path, run_ids=["r1"]) and staged_files(root) == []
    commit(root, run_id="r2")
    commit(tmp_path / "clean", run_id="r2")
    assert visible_files(root) == visible_files(tmp_path / "clean")


def test_sigkill_between_moves_is_rolled_forward(tmp_path):
    root = tmp_path / "out"
    run_killed_writer(tmp_path, root, "commit")
    visible = visible_files(root)
    assert visible and all(p.startswith("instances/") for p in visible)  # complete parts only
    fs, path = open_root(str(root))
    recovery = recover_shards(fs, path, "m1")
    assert len(recovery.rolled_forward) == 1 and not recovery.removed
    commit(tmp_path / "clean")
    assert visible_files(root) == visible_files(tmp_path / "clean")
    assert commit(root).skipped


def test_orphans_without_staging_are_removed_after_the_grace_period(tmp_path):
    instances, scenes = make_shard()
    fs, root = open_root(str(tmp_path))
    name = shard_name(scenes.column("scene_id").to_pylist(), "m1", "cfg")
    files = stage_shard(fs, root, name, instances=instances, scenes=scenes, model_id="m1",
                        run_id="r1")
    staged_scenes = tmp_path / f"_staging/r1/scenes/model=m1/{name}.parquet"
    staged_scenes.write_bytes(staged_scenes.read_bytes()[:50])  # torn: unusable for roll-forward
    final = tmp_path / "instances/model=m1"
    final.mkdir(parents=True)
    for f in files:  # the instances parts got committed, the scenes part never will
        os.replace(tmp_path / "_staging/r1/instances/model=m1" / f, final / f)
    assert recover_shards(fs, root, "m1", orphan_grace_s=3600).pending == (name,)
    later = time.time() + 7200
    assert recover_shards(fs, root, "m1", orphan_grace_s=3600, now=later).removed == (name,)
    assert visible_files(tmp_path) == {}


def test_commit_staged_by_hand_matches_write_shard(tmp_path):
    instances, scenes = make_shard()
    fs, root = open_root(str(tmp_path / "a"))
    name = shard_name(scenes.column("scene_id").to_pylist(), "m1", "cfg")
    files = stage_shard(fs, root, name, instances=instances, scenes=scenes, model_id="m1",
                        run_id="r1", class_names=NAMES)
    assert visible_files(tmp_path / "a") == {}
    commit_staged(fs, root, name, model_id="m1", run_id="r1", instance_files=files)
    commit(tmp_path / "b")
    assert visible_files(tmp_path / "a") == visible_files(tmp_path / "b")


def test_shard_tables_must_agree():
    instances, scenes = make_shard()
    fs, root = open_root("/nonexistent-maskray-root")
    with pytest.raises(ValueError, match="instance_count"):
        write_shard(fs, root, instances=instances.slice(1), scenes=scenes, model_id="m1",
                    run_id="r1", config_hash="cfg")
    with pytest.raises(ValueError, match="model_id"):
        write_shard(fs, root, instances=instances, scenes=scenes, model_id="m2", run_id="r1",
                    config_hash="cfg")


def test_clean_staging_removes_old_files_and_named_runs_only(tmp_path):
    for run in ("old", "slow", "live", "done"):
        path = tmp_path / "_staging" / run / "scenes" / "model=m1" / "part-x.parquet"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
    old = time.time() - 3 * 3600
    for path in [tmp_path / "_staging/slow/scenes/model=m1/part-x.parquet",  # only the file
                 *(tmp_path / "_staging/old").rglob("*"), tmp_path / "_staging/old"]:
        os.utime(path, (old, old))
    fs, root = open_root(str(tmp_path))
    removed = clean_staging(fs, root, older_than_s=3600, run_ids=["done"])
    assert sorted(Path(p).parts[-4] for p in removed) == ["done", "old", "slow"]
    assert [p.parts[-4] for p in staged_files(tmp_path)] == ["live"]
    assert sorted(os.listdir(tmp_path / "_staging")) == ["live", "slow"]  # slow is still busy


def test_run_record_round_trip(tmp_path):
    fs, root = open_root(str(tmp_path))
    record = RunRecord("r1", "m1", {"tiling": {"tile_size": 512}}, "cfg", "0.1.0",
                       "2026-01-01T00:00:00+00:00")
    write_run_record(fs, root, record)
    done = RunRecord(**{**record.__dict__, "status": "succeeded", "ended_at": "2026-01-01T01:00:00",
                        "counts": {"scenes_ok": 3}})
    path = write_run_record(fs, root, done)
    assert path.endswith("runs/r1.json")
    (only,) = read_run_records(fs, root)
    assert only["status"] == "succeeded" and only["counts"] == {"scenes_ok": 3}
    assert only["config"] == {"tiling": {"tile_size": 512}}
    assert staged_files(tmp_path) == []
    assert re.fullmatch(r"\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{8}", new_run_id()) and code_version()
