"""`maskray export` on a real output: perturbed ground truth of a synthetic archive (random
scores, relabelled and shifted copies that overlap the originals) replayed through `maskray infer`
on a local Ray cluster, then exported to every format and read back with the tools users have
(pycocotools, GeoPandas, rasterio)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from jobs import export as export_job
from jobs import infer as infer_job
from jobs import synth as synth_job
from model.evaluate import METRICS, evaluate_output, summarize
from pipeline import export
from pipeline.dataset import decode_full_mask, read_instances, read_scenes
from pipeline.errors import UsageError

REPO = Path(__file__).resolve().parents[2]
SIZE = 384


def _perturbed(gt: dict, seed: int) -> list[dict]:
    """Detections from the ground truth: random float32 scores, some dropped or relabelled, and
    copies shifted by a few pixels with another class, so instances overlap and painting order
    matters."""
    rng = np.random.default_rng(seed)
    cat_ids = sorted(c["id"] for c in gt["categories"])
    dets = []

    def add(image_id: int, category: int, mask: np.ndarray) -> None:
        enc = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        dets.append({"id": len(dets) + 1, "image_id": image_id, "category_id": category,
                     "score": float(np.float32(rng.uniform(0.05, 1.0))),
                     "segmentation": {"size": enc["size"], "counts": enc["counts"].decode()},
                     "bbox": [float(v) for v in mask_utils.toBbox(enc)],
                     "area": float(mask_utils.area(enc)), "iscrowd": 0})

    for ann in gt["annotations"]:
        seg = ann["segmentation"]
        full = seg if isinstance(seg, dict) else mask_utils.merge(
            mask_utils.frPyObjects(seg, SIZE, SIZE))
        mask = mask_utils.decode(full).astype(bool)
        other = cat_ids[(cat_ids.index(ann["category_id"]) + 1) % len(cat_ids)]
        if rng.random() < 0.1:
            continue
        add(ann["image_id"], other if rng.random() < 0.1 else ann["category_id"], mask)
        if rng.random() < 0.25:
            shifted = np.zeros_like(mask)
            shifted[3:, 2:] = mask[:-3, :-2]
            if shifted.any():
                add(ann["image_id"], other, shifted)
    return dets


@pytest.fixture(scope="module")
def replay(ray_local, tmp_path_factory):
    """(archive, output): 2 scenes of 384 px, tiles of 128 with 32 px overlap."""
    root = tmp_path_factory.mktemp("export")
    archive, out = root / "archive", root / "out"
    assert synth_job.main(["--out", str(archive), "--scenes", "2", "--size", str(SIZE),
                           "--seed", "5", "--quiet"]) == 0
    gt = json.loads((archive / "annotations.json").read_text())
    labels = root / "detections.json"
    labels.write_text(json.dumps({**gt, "annotations": _perturbed(gt, seed=3)}))
    assert infer_job.main(["--predictor", f"labels:{labels}", "--input", str(archive),
                           "--output", str(out), "--quiet", "--set", "tiling.tile_size=128",
                           "--set", "tiling.overlap=32"]) == 0
    return archive, out


def _export(out: Path | str, *args: str) -> None:
    assert export_job.main([str(out), "--quiet", *args]) == 0


def _rows(out: Path, **kw) -> list[dict]:
    table = read_instances(str(out), **kw)
    return sorted(table.to_pylist(), key=lambda r: (r["scene_id"], r["instance_id"]))


# ---- COCO --------------------------------------------------------------------------------

def _cocoeval(gt_path: Path, res_path: Path, iou_type: str, max_dets: int, drop_bbox: bool):
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        results = json.loads(res_path.read_text())
        if drop_bbox:  # pycocotools then takes the MASK area for small / medium / large
            results = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
        ev = COCOeval(coco_gt, coco_gt.loadRes(results), iou_type)
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
    return dict(zip(METRICS, summarize(ev)[0]))


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_coco_results_give_the_ap_of_maskray_evaluate(replay, tmp_path, iou_type):
    archive, out = replay
    gt_path, res = archive / "annotations.json", tmp_path / "results.json"
    _export(out, "--format", "coco-results", "--out", str(res), "--gt", str(gt_path))
    ours = evaluate_output(str(out), gt_path, iou_type)
    assert 0.2 < ours.metrics["AP"] < 0.95  # perturbed: neither perfect nor noise
    assert len(json.loads(res.read_text())) == ours.detections == read_instances(str(out)).num_rows
    # the file as written: AP, AP50, AP75 equal (and all six for boxes)
    as_is = _cocoeval(gt_path, res, iou_type, ours.max_dets, drop_bbox=False)
    same = METRICS if iou_type == "bbox" else ("AP", "AP50", "AP75")
    for key in same:
        assert as_is[key] == pytest.approx(ours.metrics[key], abs=1e-9), key
    if iou_type == "segm":  # without bbox, as `maskray evaluate` and Detectron2 load masks
        masks = _cocoeval(gt_path, res, iou_type, ours.max_dets, drop_bbox=True)
        for key in METRICS:
            assert masks[key] == pytest.approx(ours.metrics[key], abs=1e-9), key


def test_coco_results_without_gt_use_sorted_scene_ids_and_a_sidecar(replay, tmp_path):
    _, out = replay
    res = tmp_path / "preds.json"
    _export(out, "--format", "coco-results", "--out", str(res), "--min-score", "0.5")
    sidecar = json.loads((tmp_path / "preds.images.json").read_text())
    scenes = sorted(set(read_scenes(str(out)).column("scene_id").to_pylist()))
    assert [(i["id"], i["file_name"]) for i in sidecar["images"]] == list(enumerate(scenes, 1))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {**sidecar, "annotations": []}
        coco.createIndex()
        loaded = coco.loadRes(str(res))
    rows = [r for r in _rows(out) if r["score"] >= 0.5]
    assert len(loaded.anns) == len(rows) > 0
    assert all(a["category_id"] in {r["class_id"] for r in rows} for a in loaded.anns.values())


def test_coco_dataset_loads_and_its_masks_are_the_rows(replay, tmp_path):
    _, out = replay
    path = tmp_path / "coco.json"
    _export(out, "--format", "coco", "--out", str(path))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
    scene_of = {img["id"]: img["file_name"] for img in coco.dataset["images"]}
    assert sorted(scene_of.values()) == sorted(set(r["scene_id"] for r in _rows(out)))
    assert {c["id"]: c["name"] for c in coco.dataset["categories"]} == {
        r["class_id"]: r["class_name"] for r in _rows(out)}
    image = coco.dataset["images"][0]
    assert image["crs"].startswith("EPSG:") and len(image["transform"]) == 6
    rows = {(r["scene_id"], r["instance_id"]): r for r in _rows(out)}
    assert len(coco.anns) == len(rows)
    for ann in coco.anns.values():
        row = rows[(scene_of[ann["image_id"]], ann["instance_id"])]
        assert ann["category_id"] == row["class_id"] and ann["score"] == row["score"]
        assert ann["area"] == row["area_px"] and ann["iscrowd"] == 0
        assert np.array_equal(coco.annToMask(ann).astype(bool),
                              decode_full_mask(row, image["height"], image["width"]))


# ---- vector layers -----------------------------------------------------------------------

def _assert_layer_is_rows(frame: gpd.GeoDataFrame, rows: list[dict], exact: bool = True) -> None:
    frame = frame.sort_values(["scene_id", "instance_id"]).reset_index(drop=True)
    assert len(frame) == len(rows)
    for name in export.ATTRIBUTES:
        got = frame[name].to_numpy()
        want = np.array([r[name] for r in rows])
        if name == "score":  # float32 in the output, written as the double of the same value
            assert got.dtype == np.float64
        assert np.array_equal(got, want), name
    stored = shapely.from_wkb([r["geometry"] for r in rows])
    if exact:
        assert shapely.equals_exact(frame.geometry.values, stored, tolerance=0).all()


@pytest.mark.parametrize("fmt", ["geojson", "gpkg", "fgb"])
def test_merged_layer_geometries_are_the_instances_geometry(replay, tmp_path, fmt):
    _, out = replay
    path = tmp_path / f"all.{fmt}"
    _export(out, "--format", fmt, "--out", str(path))
    frame = gpd.read_file(path)
    _assert_layer_is_rows(frame, _rows(out))
    assert frame.crs.to_epsg() == read_scenes(str(out)).column("epsg")[0].as_py()


def test_per_scene_geojson_files_and_a_filtered_geopackage(replay, tmp_path):
    _, out = replay
    _export(out, "--format", "geojson", "--per-scene", "--out", str(tmp_path / "scenes"))
    index = json.loads((tmp_path / "scenes" / "index.json").read_text())
    assert [e["file"] for e in index["scenes"]] == ["scenes__scene_0000.geojson",
                                                    "scenes__scene_0001.geojson"]
    for entry in index["scenes"]:
        rows = [r for r in _rows(out) if r["scene_id"] == entry["scene_id"]]
        assert entry["instances"] == len(rows)
        _assert_layer_is_rows(gpd.read_file(tmp_path / "scenes" / entry["file"]), rows)
    scene = index["scenes"][1]["scene_id"]
    _export(out, "--format", "gpkg", "--out", str(tmp_path / "f.gpkg"), "--scene", scene,
            "--min-score", "0.5")
    rows = [r for r in _rows(out) if r["scene_id"] == scene and r["score"] >= 0.5]
    _assert_layer_is_rows(gpd.read_file(tmp_path / "f.gpkg", layer="instances"), rows)


def test_geojson_in_wgs84_is_rfc7946_and_the_reprojected_geometry(replay, tmp_path):
    _, out = replay
    path = tmp_path / "wgs84.geojson"
    _export(out, "--format", "geojson", "--crs", "EPSG:4326", "--out", str(path))
    assert '"crs"' not in path.read_text()[:300]  # RFC 7946: WGS 84 lon/lat, no crs member
    frame = gpd.read_file(path).sort_values(["scene_id", "instance_id"])
    rows = _rows(out)
    _assert_layer_is_rows(frame, rows, exact=False)
    crs = read_scenes(str(out)).column("epsg")[0].as_py()
    expected = gpd.GeoSeries.from_wkb([r["geometry"] for r in rows], crs=crs).to_crs(4326)
    assert (shapely.hausdorff_distance(frame.geometry.values, expected.values) < 1e-6).all()


def test_scenes_in_two_crss_need_crs_or_per_scene(replay, tmp_path):
    _, out = replay
    src = export.open_source(str(out))
    other = src.scenes[1]
    # the second scene claims Web Mercator: one merged layer cannot hold both
    src.scenes[1] = dataclasses.replace(other, epsg=3857,
                                        crs_wkt=rasterio.crs.CRS.from_epsg(3857).to_wkt())
    with pytest.raises(UsageError, match=r"2 CRSs \(EPSG:\d+ .*EPSG:3857 .*--crs"):
        export.export_vector(src, str(tmp_path / "x.gpkg"), "gpkg")
    written = export.export_vector(src, str(tmp_path / "x.gpkg"), "gpkg", crs="EPSG:3857")
    frame = gpd.read_file(tmp_path / "x.gpkg")
    assert written.instances == len(frame) == len(_rows(out)) and frame.crs.to_epsg() == 3857
    mercator = frame[frame.scene_id == other.scene_id].sort_values("instance_id")
    stored = [r["geometry"] for r in _rows(out) if r["scene_id"] == other.scene_id]
    assert shapely.equals_exact(mercator.geometry.values, shapely.from_wkb(stored), 0).all()
    assert len(export.export_vector(src, str(tmp_path / "per"), "fgb", per_scene=True).files) == 2


def test_scene_file_names_are_flat_safe_and_distinct():
    names = export.scene_file_names(["a/b.tif", "a__b.png", "x/ü c.tif", "A/B.TIF", "../up.tif",
                                     "plain"], ".fgb")
    assert names["x/ü c.tif"] == "x___c.fgb" and names["../up.tif"] == "up.fgb"
    assert names["plain"] == "plain.fgb"
    assert len({n.lower() for n in names.values()}) == len(names)  # a/b, a__b, A/B: hashed
    assert names["a/b.tif"].startswith("a__b-") and all("/" not in n for n in names.values())


# ---- class rasters -------------------------------------------------------------------------

def _reference(rows: list[dict], height: int, width: int) -> np.ndarray:
    """Painted in numpy from full-scene masks: higher score last, ties by instance id."""
    ref = np.zeros((height, width), np.uint8)
    for row in sorted(rows, key=lambda r: (r["score"], r["instance_id"])):
        ref[decode_full_mask(row, height, width)] = row["class_id"]
    return ref


def test_class_raster_is_the_masks_pixel_for_pixel(replay, tmp_path):
    _, out = replay
    _export(out, "--format", "class-raster", "--out", str(tmp_path / "rasters"))
    index = json.loads((tmp_path / "rasters" / "index.json").read_text())
    scenes = {r["scene_id"]: r for r in read_scenes(str(out)).to_pylist()}
    overlapping = 0
    for entry in index["scenes"]:
        scene = scenes[entry["scene_id"]]
        rows = [r for r in _rows(out) if r["scene_id"] == entry["scene_id"]]
        with rasterio.open(tmp_path / "rasters" / entry["file"]) as src:
            assert (src.width, src.height, src.count, src.dtypes) == (SIZE, SIZE, 1, ("uint8",))
            assert src.transform == rasterio.Affine.from_gdal(*scene["transform"])
            assert src.crs == rasterio.crs.CRS.from_wkt(scene["crs"])
            assert src.profile["tiled"] and src.compression.name == "deflate"
            got = src.read(1)
        assert np.array_equal(got, _reference(rows, SIZE, SIZE))
        covered = sum(decode_full_mask(r, SIZE, SIZE).astype(int) for r in rows)
        overlapping += int((covered > 1).sum())
    assert overlapping > 100  # the test means something: the painting order decides pixels


def test_windowed_writer_gives_the_same_raster_for_tiny_windows(replay, tmp_path, monkeypatch):
    _, out = replay
    src = export.open_source(str(out))
    scene = src.scenes[0]
    painted = []  # (window shape, rows painted into it) of every window
    paint = export.paint_window
    monkeypatch.setattr(export.raster, "paint_window", lambda rows, window, dtype: painted.append(
        (window[3] - window[1], window[2] - window[0], len(rows))) or paint(rows, window, dtype))
    arrays = []
    for window in (37, 128, 4096):  # 37: not a block multiple, 11 x 11 windows
        painted.clear()
        path = tmp_path / f"w{window}.tif"
        export.write_class_raster(src, scene, str(path), window=window)
        with rasterio.open(path) as r:
            arrays.append(r.read(1))
        side = min(window, SIZE)
        assert len(painted) == (-(-SIZE // side)) ** 2
        assert max(h for h, _, _ in painted) == max(w for _, w, _ in painted) == side
    rows = [r for r in _rows(out) if r["scene_id"] == scene.scene_id]
    assert max(n for _, _, n in painted) == len(rows)  # one window: every instance
    assert all(np.array_equal(a, _reference(rows, SIZE, SIZE)) for a in arrays)


def test_one_scene_raster_to_a_file(replay, tmp_path):
    _, out = replay
    scene = sorted(set(read_scenes(str(out)).column("scene_id").to_pylist()))[1]
    _export(out, "--format", "class-raster", "--scene", scene, "--min-score", "0.5",
            "--window", "100", "--out", str(tmp_path / "one.tif"))
    rows = [r for r in _rows(out) if r["scene_id"] == scene and r["score"] >= 0.5]
    with rasterio.open(tmp_path / "one.tif") as r:
        assert np.array_equal(r.read(1), _reference(rows, SIZE, SIZE))
        assert r.tags()["maskray_scene_id"] == scene


# ---- object storage ------------------------------------------------------------------------

def test_from_and_to_s3_gives_the_local_bytes(replay, moto_s3, tmp_path):
    from objectstore import upload_tree

    from pipeline import storage

    _, out = replay
    upload_tree(moto_s3.endpoint, out, moto_s3.bucket, "export/out")
    storage.configure(storage.StorageConfig(endpoint_url=moto_s3.endpoint))
    remote = moto_s3.uri("export", "out")
    fs, _ = storage.filesystem(remote)
    for fmt, name in (("fgb", "all.fgb"), ("class-raster", "rasters"), ("coco", "coco.json")):
        _export(out, "--format", fmt, "--out", str(tmp_path / name))
        _export(remote, "--format", fmt, "--out", moto_s3.uri("export", "got", name))
        local = tmp_path / name
        files = {f"/{p.relative_to(local).as_posix()}": p for p in local.rglob("*")
                 if p.is_file()} if local.is_dir() else {"": local}
        for rel, path in files.items():
            key = f"{moto_s3.bucket}/export/got/{name}{rel}"
            assert fs.cat_file(key) == path.read_bytes(), key


# ---- usage -------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--format", "shapefile", "--out", "x"], "unknown --format 'shapefile'"),
    (["--format", "gpkg"], "--out PATH is required"),
    (["--out", "x.gpkg"], "--format is required"),
    (["--format", "coco", "--out", "x.json", "--per-scene"], "--per-scene is for"),
    (["--format", "coco", "--out", "x.json", "--crs", "EPSG:4326"], "--crs is for"),
    (["--format", "gpkg", "--out", "x.gpkg", "--gt", "gt.json"], "--gt is for coco-results"),
    (["--format", "gpkg", "--out", "x.gpkg", "--crs", "EPSG:nope"], "--crs 'EPSG:nope' is not"),
    (["--format", "gpkg", "--out", "x.gpkg", "--scene", "nope.tif"], "scene 'nope.tif' is not"),
    (["--format", "class-raster", "--out", "x.tif"], "is one file, but 2 scenes"),
    (["--format", "coco", "--out", "x.json", "--model-id", "other"], "no scenes of model 'other'"),
])
def test_usage_errors_are_one_line_exit_2(replay, tmp_path, capsys, monkeypatch, args, message):
    _, out = replay
    monkeypatch.chdir(tmp_path)
    assert export_job.main([str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("maskray: error: ") and message in err and "\n" not in err
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_an_empty_output_is_a_usage_error(tmp_path, capsys):
    assert export_job.main([str(tmp_path), "--format", "coco", "--out",
                            str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"maskray: error: no scenes in {tmp_path}: not a maskray output, "
                   "or nothing committed")


def test_help_runs_as_a_module():
    done = subprocess.run([sys.executable, "-m", "jobs.export", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: maskray export")
    for fmt in export.FORMATS:
        assert fmt in done.stdout
    assert "examples:" in done.stdout and "--per-scene" in done.stdout
    assert export_job.FORMATS == export.FORMATS
