"""Reading the output back: pyarrow and DuckDB (no ST_ functions), masks, COCO results, re-runs."""

import contextlib
import io
import shutil
import uuid

import duckdb
import fsspec
import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest
from affine import Affine
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from rasterio.crs import CRS

from pipeline import rle
from pipeline.commit import open_root, write_shard
from pipeline.dataset import (decode_full_mask, decode_mask, done_scene_ids, read_geo_metadata,
                              read_instances, read_scenes, to_coco_results)
from pipeline.detection import Detection
from pipeline.rows import SceneInfo, build_shard_tables

NAMES = ["background", "car", "building"]
UTM16 = CRS.from_epsg(32616).to_wkt()
GRID = Affine(0.5, 0.0, 740000.0, 0.0, -0.5, 3730000.0)
# scene -> (crs, [(class_id, x0, y0, x1, y1)]); scene d fails to read.
SCENES = {
    "a.tif": (UTM16, [(1, 10, 10, 20, 20), (1, 150, 150, 170, 160), (1, 105, 90, 115, 100),
                      (2, 90, 95, 110, 120), (2, 300, 300, 320, 330)]),
    "b.tif": (UTM16, [(1, 120, 120, 130, 125)]),
    "c.png": (None, [(2, 0, 0, 8, 8), (2, 40, 50, 60, 64)]),
    "d.tif": (None, None),
}
SIZE = 400  # every scene is 400 x 400 px


def make_mask(x0, y0, x1, y1):
    """A deterministic blob filling its box (tight: first/last row and column set)."""
    rng = np.random.default_rng(x0 * 1000 + y0)
    mask = rng.random((y1 - y0, x1 - x0)) > 0.4
    mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = True
    return mask


def shard_tables(scene_ids, run_id="r1"):
    items = []
    for sid in scene_ids:
        crs, boxes = SCENES[sid]
        if boxes is None:
            items.append((SceneInfo(sid, status="error", error_type="RasterioIOError",
                                    error_message="not a raster"), []))
            continue
        dets = [Detection(c, 0.9, *box, rle.encode(make_mask(*box))) for c, *box in boxes]
        items.append((SceneInfo(sid, SIZE, SIZE, 3, "uint8", crs, GRID, 1, 0.1), dets))
    return build_shard_tables(items, "m1", run_id, NAMES)


def commit(root, scene_ids, filesystem=None):
    instances, scenes = shard_tables(scene_ids)
    fs, path = open_root(str(root), filesystem)
    return write_shard(fs, path, instances=instances, scenes=scenes, model_id="m1", run_id="r1",
                       config_hash="cfg", class_names=NAMES)


@pytest.fixture
def root(tmp_path):
    commit(tmp_path, ["a.tif", "b.tif"])
    commit(tmp_path, ["c.png", "d.tif"])
    # A complete part left in staging by some dead run must be invisible to every reader.
    stray = tmp_path / "_staging" / "r0" / "instances" / "model=m1"
    shutil.copytree(tmp_path / "instances" / "model=m1", stray)
    return tmp_path


def test_pyarrow_reads_committed_rows_only(root):
    table = read_instances(str(root))
    assert table.num_rows == 8
    assert set(table.column("model").to_pylist()) == {"m1"}
    pairs = list(zip(table.column("scene_id").to_pylist(), table.column("instance_id").to_pylist()))
    assert len(set(pairs)) == 8  # (scene_id, instance_id) unique
    assert read_instances(str(root), model_id="m2").num_rows == 0
    cars = read_instances(str(root), "m1", columns=["scene_id"], filter=pc.field("class_id") == 1)
    assert cars.num_rows == 4
    plain = ds.dataset(str(root / "instances"), format="parquet", partitioning="hive")
    assert plain.count_rows() == 8
    scenes = read_scenes(str(root))
    assert sorted(scenes.column("scene_id").to_pylist()) == ["a.tif", "b.tif", "c.png", "d.tif"]
    counts = dict(zip(scenes.column("scene_id").to_pylist(),
                      scenes.column("instance_count").to_pylist()))
    assert counts == {"a.tif": 5, "b.tif": 1, "c.png": 2, "d.tif": 0}


def test_duckdb_answers_per_class_and_window_queries_without_st_functions(root):
    parts = f"read_parquet('{root}/instances/**/*.parquet', hive_partitioning = true)"
    per_class = duckdb.sql(f"SELECT scene_id, class_name, count(*) FROM {parts} "
                           "GROUP BY ALL ORDER BY ALL").fetchall()
    assert per_class == [("a.tif", "building", 2), ("a.tif", "car", 3), ("b.tif", "car", 1),
                         ("c.png", "building", 2)]
    window = duckdb.sql(
        f"SELECT scene_id, instance_id FROM {parts} WHERE px_bbox.x0 < 200 AND px_bbox.x1 > 100 "
        "AND px_bbox.y0 < 200 AND px_bbox.y1 > 100 ORDER BY ALL").fetchall()
    a_ids = read_instances(str(root), filter=pc.field("scene_id") == "a.tif").to_pylist()
    by_box = {(r["px_bbox"]["x0"], r["px_bbox"]["y0"]): r["instance_id"] for r in a_ids}
    # [100, 200)^2 meets a's car at 150 and building at 90; the car ending at y=100 only touches.
    assert window == [("a.tif", i) for i in sorted([by_box[150, 150], by_box[90, 95]])] + [
        ("b.tif", 0)]
    scenes = duckdb.sql(f"SELECT status, count(*) FROM read_parquet('{root}/scenes/**/*.parquet') "
                        "GROUP BY ALL ORDER BY ALL").fetchall()
    assert scenes == [("error", 1), ("ok", 3)]


def test_geo_metadata_reads_back(root):
    path = next((root / "instances" / "model=m1").glob("*-pixel-*.parquet"))
    geo = read_geo_metadata(str(path))
    assert geo["columns"]["geometry"]["crs"] is None
    assert geo["columns"]["geometry"]["bbox"] == [0.0, 0.0, 60.0, 64.0]  # c.png, pixel units


def test_masks_decode_box_local_and_full_scene(root):
    for row in read_instances(str(root)).to_pylist():
        box = row["px_bbox"]
        expected = make_mask(box["x0"], box["y0"], box["x1"], box["y1"])
        np.testing.assert_array_equal(decode_mask(row), expected)
        full = decode_full_mask(row, SIZE, SIZE)
        assert full.shape == (SIZE, SIZE) and full.sum() == row["area_px"] == expected.sum()
        np.testing.assert_array_equal(full[box["y0"]:box["y1"], box["x0"]:box["x1"]], expected)


def test_coco_results_score_perfectly_against_their_own_ground_truth(root):
    instances, scenes = read_instances(str(root)), read_scenes(str(root))
    image_ids = {"a.tif": 1, "b.tif": 2, "c.png": 3}
    results = to_coco_results(instances, scenes, image_ids)
    assert len(results) == 8 and all(isinstance(r["segmentation"]["counts"], str) for r in results)
    gt = COCO()
    gt.dataset = {
        "images": [{"id": i, "height": SIZE, "width": SIZE} for i in image_ids.values()],
        "categories": [{"id": 1, "name": "car"}, {"id": 2, "name": "building"}],
        "annotations": [{"id": k + 1, "image_id": r["image_id"], "category_id": r["category_id"],
                         "segmentation": r["segmentation"], "bbox": r["bbox"], "iscrowd": 0,
                         "area": float(rle.area({**r["segmentation"], "counts": r["segmentation"][
                             "counts"].encode()}))} for k, r in enumerate(results)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), "segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)


def test_adding_scenes_processes_only_the_new_ones(tmp_path):
    commit(tmp_path, ["a.tif", "b.tif"])
    assert done_scene_ids(str(tmp_path), "m1") == {"a.tif", "b.tif"}
    pending = sorted(set(SCENES) - done_scene_ids(str(tmp_path), "m1"))
    assert pending == ["c.png", "d.tif"]
    commit(tmp_path, pending)
    assert done_scene_ids(str(tmp_path), "m1") == set(SCENES)
    assert done_scene_ids(str(tmp_path), "m1", statuses=("ok",)) == {"a.tif", "b.tif", "c.png"}
    assert read_instances(str(tmp_path)).num_rows == 8


def test_empty_root_reads_as_empty_tables(tmp_path):
    assert read_instances(str(tmp_path)).num_rows == 0
    assert read_scenes(str(tmp_path), "m1").num_rows == 0
    assert done_scene_ids(str(tmp_path), "m1") == set()


def test_object_store_style_filesystem(tmp_path):
    """fsspec's memory filesystem moves by copy + delete, like s3fs: same protocol, same rows."""
    fs = fsspec.filesystem("memory")
    root = f"/maskray-{uuid.uuid4().hex}"
    try:
        commit(root, ["a.tif", "b.tif"], filesystem=fs)
        assert commit(root, ["a.tif", "b.tif"], filesystem=fs).skipped
        assert not fs.glob(f"{root}/_staging/**/*.parquet")
        assert read_instances(root, filesystem=fs).num_rows == 6
        assert done_scene_ids(root, "m1", filesystem=fs) == {"a.tif", "b.tif"}
        commit(tmp_path, ["a.tif", "b.tif"])
        local = sorted(p for p in fs.find(root) if p.endswith(".parquet"))
        for path in local:
            rel = path[len(root) + 1:]
            assert fs.cat_file(path) == (tmp_path / rel).read_bytes()
    finally:
        fs.rm(root, recursive=True)
