"""`maskray infer` end to end on a real local Ray cluster: the labels predictor on real data,
re-runs, incremental runs, a run killed mid-commit, and the bad-input corpus."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.compute as pc
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from jobs import infer as infer_job
from pipeline import commit
from pipeline.dataset import decode_full_mask, read_instances, read_scenes

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from badinput import expected_error_type, write_corpus  # noqa: E402

TILING = ["--set", "tiling.tile_size=256", "--set", "tiling.overlap=64"]


def _infer(labels, inp, out, *extra) -> int:
    return infer_job.main(["--predictor", f"labels:{labels}", "--input", str(inp),
                           "--output", str(out), "--quiet", *TILING, *extra])


def _rows(out) -> list[tuple]:
    """Every instance row, run_id left out, in a stable order: what 'the same rows' means."""
    table = read_instances(str(out)).drop_columns(["run_id"])
    table = table.select([c for c in table.column_names if c != "model"])
    return sorted(tuple(json.dumps(v, default=str) for v in row.values())
                  for row in table.to_pylist())


@pytest.fixture(scope="module")
def isaid(shared_data, tmp_path_factory):
    """The three iSAID scenes (PNG, no CRS) and their 306 pixel-exact vehicle masks."""
    inp = tmp_path_factory.mktemp("isaid")
    for name in ("P0003.png", "P0004.png", "P0005.png"):
        shutil.copy(shared_data / "isaid" / name, inp / name)
    return inp, shared_data / "isaid" / "isaid_sample_rle_coco.json"


def test_labels_replay_recovers_every_isaid_instance(ray_local, isaid, tmp_path):
    inp, labels = isaid
    assert _infer(labels, inp, tmp_path / "out") == 0
    coco = json.loads(labels.read_text())
    table = read_instances(str(tmp_path / "out"))
    assert table.num_rows == len(coco["annotations"]) == 306
    ids = {img["id"]: img for img in coco["images"]}
    by_scene: dict[str, list[dict]] = {}
    for row in table.to_pylist():
        by_scene.setdefault(row["scene_id"], []).append(row)
    for ann in coco["annotations"]:
        img = ids[ann["image_id"]]
        truth = mask_utils.decode(ann["segmentation"]).astype(bool)
        ious = [_iou(truth, decode_full_mask(r, img["height"], img["width"]))
                for r in by_scene[img["file_name"]]
                if _boxes_touch(r["px_bbox"], ann["bbox"])]
        assert max(ious) >= 0.98, ann["id"]
    # Scenes without a CRS are in pixel units; DuckDB answers without ST_ functions.
    per_class = duckdb.sql(
        f"select class_name, count(*) n from read_parquet('{tmp_path}/out/instances/**/*.parquet')"
        " group by class_name order by class_name").fetchall()
    assert dict(per_class) == {"Large_Vehicle": 231, "Small_Vehicle": 74, "storage_tank": 1}


def test_rerun_does_no_work_and_adding_scenes_processes_only_them(ray_local, isaid, tmp_path, capsys):
    inp, labels = isaid
    part = tmp_path / "in"
    part.mkdir()
    shutil.copy(inp / "P0003.png", part / "P0003.png")
    out = tmp_path / "out"
    assert _infer(labels, part, out) == 0
    first = sorted(p.name for p in out.rglob("*.parquet"))
    assert _infer(labels, part, out) == 0
    assert "0 scene(s) ok, 0 error, 1 already done" in capsys.readouterr().out
    assert sorted(p.name for p in out.rglob("*.parquet")) == first
    shutil.copy(inp / "P0005.png", part / "P0005.png")
    assert _infer(labels, part, out) == 0
    assert "1 scene(s) ok, 0 error, 1 already done" in capsys.readouterr().out
    # A replaced file (same name, other bytes: re-encoded, same pixels) is processed again and
    # its old rows are retired: one scenes row per scene, instances equal to a clean run's.
    Image.open(part / "P0003.png").save(part / "P0003.png", compress_level=1)
    assert _infer(labels, part, out) == 0
    assert "1 scene(s) ok (1 replaced), 0 error, 1 already done" in capsys.readouterr().out
    scenes = read_scenes(str(out)).to_pylist()
    assert sorted(r["scene_id"] for r in scenes) == ["P0003.png", "P0005.png"]
    assert {r["scene_id"]: r["source_size"] for r in scenes}["P0003.png"] == \
        (part / "P0003.png").stat().st_size
    clean = tmp_path / "clean"
    assert _infer(labels, part, clean) == 0
    assert _rows(out) == _rows(clean)
    records = commit.read_run_records(commit.open_root(str(out))[0], str(out))
    # A run with nothing to do writes no run record (a scheduler may start one every minute).
    assert [r["counts"]["scenes_ok"] for r in records] == [1, 1, 1]


def test_run_killed_mid_commit_then_rerun_gives_the_rows_of_one_clean_run(ray_local, isaid, tmp_path,
                                                                          monkeypatch):
    inp, labels = isaid
    out = tmp_path / "out"
    real_move, calls = commit._move, []

    def dying_move(fs, src, dst):  # the driver is interrupted between the two moves of shard 2
        if "/scenes/" in dst:
            calls.append(dst)
            if len(calls) == 2:
                raise KeyboardInterrupt("killed")
        real_move(fs, src, dst)

    monkeypatch.setattr(commit, "_move", dying_move)
    assert _infer(labels, inp, out, "--set", "infer.shard_scenes=1") == 130
    monkeypatch.setattr(commit, "_move", real_move)
    # Shard 1 is committed; shard 2 was staged whole, so it was rolled forward, not lost.
    done = set(read_scenes(str(out)).column("scene_id").to_pylist())
    assert done == {"P0003.png", "P0004.png"}
    assert set(read_instances(str(out)).column("scene_id").to_pylist()) == done
    assert _infer(labels, inp, out, "--set", "infer.shard_scenes=1") == 0
    clean = tmp_path / "clean"
    assert _infer(labels, inp, clean, "--set", "infer.shard_scenes=1") == 0
    assert _rows(out) == _rows(clean)
    assert read_scenes(str(out)).num_rows == 3


def test_bad_inputs_become_error_rows_and_the_rest_completes(ray_local, tiny_bundle, tmp_path,
                                                             capsys):
    """Also: a random-weight model runs end to end through the actor pool on 2 CPUs."""
    inp = tmp_path / "in"
    files = write_corpus(inp)
    out = tmp_path / "out"

    def infer(dest, *extra):
        return infer_job.main(["--model", str(tiny_bundle), "--input", str(inp), "--output",
                               str(dest), "--quiet", "--set", "tiling.tile_size=128",
                               "--set", "tiling.overlap=16", *extra])

    assert infer(out) == 1  # any error fails the exit code (default rate 0) ...
    scenes = {r["scene_id"]: r for r in read_scenes(str(out)).to_pylist()}
    assert set(scenes) == {f.name for f in files}  # ... after every scene was committed
    for name, row in scenes.items():
        expected = expected_error_type(name)
        assert row["status"] == ("ok" if expected is None else "error"), name
        assert row["error_type"] == expected, name
        if expected:
            assert row["error_message"] and "\n" not in row["error_message"]
    instances = read_instances(str(out))
    assert set(instances.column("scene_id").to_pylist()) <= {
        name for name in scenes if expected_error_type(name) is None}
    assert set(instances.column("class_name").to_pylist()) <= {"building", "vehicle"}
    capsys.readouterr()
    assert infer(tmp_path / "out2", "--max-error-rate", "1") == 0


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def _boxes_touch(px, bbox) -> bool:
    x, y, w, h = bbox
    return px["x0"] < x + w + 1 and px["x1"] > x - 1 and px["y0"] < y + h + 1 and px["y1"] > y - 1


@pytest.fixture(scope="module")
def synth_archive(tmp_path_factory):
    """Two 700 px synthetic scenes (UTM, 0.5 m): every class, touching objects, big buildings."""
    from pipeline.synth import SynthConfig, generate_archive

    out = tmp_path_factory.mktemp("synth")
    generate_archive(out, SynthConfig(scenes=2, size=700, seed=3))
    return out


def test_geojson_labels_come_back_once_with_their_geometry_in_crs_units(ray_local, synth_archive,
                                                                      tmp_path):
    """tile 256 / overlap 64 over synthetic scenes: seams, corners, objects larger than a tile."""
    import geopandas
    import rasterio
    from rasterio import features
    from shapely import wkb

    out = tmp_path / "out"
    assert _infer(synth_archive / "labels", synth_archive, out) == 0
    table = read_instances(str(out))
    for scene in sorted((synth_archive / "scenes").glob("*.tif")):
        truth = json.loads((synth_archive / "labels" / f"{scene.stem}.geojson").read_text())
        rows = [r for r in table.to_pylist() if r["scene_id"] == f"scenes/{scene.name}"]
        assert len(rows) == len(truth["features"])  # exactly once each
        with rasterio.open(scene) as src:
            transform, shape = src.transform, (src.height, src.width)

        def burn(geom) -> np.ndarray:
            return features.rasterize([(geom, 1)], out_shape=shape, transform=transform,
                                      dtype="uint8").astype(bool)

        ids = np.zeros(shape, np.int32)  # output instance index per pixel, from our geometry
        for k, row in enumerate(rows, start=1):
            ids[burn(wkb.loads(row["geometry"]))] = k
        for feat in truth["features"]:
            gt = burn(feat["geometry"])
            k = np.bincount(ids[gt]).argmax()
            assert k > 0 and _iou(gt, ids == k) >= 0.98, feat["properties"]
            assert rows[k - 1]["class_id"] == feat["properties"]["class_id"]
    # GeoPandas reads the GeoParquet with its CRS.
    part = next((out / "instances").rglob("*.parquet"))
    frame = geopandas.read_parquet(part)
    assert frame.crs.to_epsg() == 32633 and len(frame) > 0
    assert frame.geometry.is_valid.all()


def test_actor_pool_asks_for_gpus_an_autoscaler_can_add(ray_local):
    from pipeline.config import load_config
    from pipeline.dataflow import actor_pool_shape

    # This cluster has 2 CPUs and no GPU: `auto` runs on the CPU and leaves one for the reads;
    # an explicit `cuda` asks for GPU actors that an autoscaling GPU group would add.
    assert actor_pool_shape(load_config(), uses_gpu=True) == (1, 1.0, 0.0)
    cuda = load_config(overrides=["infer.device=cuda", "infer.num_actors=3"])
    assert actor_pool_shape(cuda, uses_gpu=True) == (3, 1.0, 1.0)


def test_actor_threads_use_the_cpus_the_pool_shares_on_cpu_only():
    from pipeline.dataflow import actor_threads

    # A lone CPU actor on 2 cores forwards with both: the read tasks' CPU is mostly idle.
    assert actor_threads(2.0, actors=1, actor_cpus=1.0, actor_gpus=0.0) == 2
    assert actor_threads(2.0, actors=2, actor_cpus=0.5, actor_gpus=0.0) == 1
    assert actor_threads(16.0, actors=3, actor_cpus=1.0, actor_gpus=0.0) == 5
    assert actor_threads(16.0, actors=2, actor_cpus=4.0, actor_gpus=1.0) == 4  # GPU: reserved
    assert actor_threads(0.0, actors=1, actor_cpus=0.0, actor_gpus=0.0) == 1
