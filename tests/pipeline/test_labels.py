"""Labels predictor core: ground truth -> tile views -> stitching gives every object back once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.features
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils
from affine import Affine

from pipeline.errors import MaskrayError, UsageError
from pipeline.labels import (class_names_of, crop_rle, detections_for_tile, labels_for_scene,
                             load_labels, replay_scene)
from pipeline.stitch import stitch_scene
from pipeline.tiling import grid_windows

W, H, TILE, OVERLAP = 700, 600, 256, 64
TRANSFORM = Affine(0.5, 0.0, 733000.0, 0.0, -0.5, 3725000.0)  # 0.5 m pixels, north up


def tight(mask: np.ndarray, ox: int = 0, oy: int = 0):
    """(x0, y0, x1, y1, cropped mask) of a (h, w) mask whose [0, 0] is scene px (ox, oy)."""
    ys, xs = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
    return ox + x0, oy + y0, ox + x1, oy + y1, mask[y0:y1, x0:x1].astype(bool)


def iou(a, b) -> float:
    """IoU of two box-local masks (x0, y0, x1, y1, mask), computed in their union box only."""
    x0, y0 = min(a[0], b[0]), min(a[1], b[1])
    x1, y1 = max(a[2], b[2]), max(a[3], b[3])
    canvases = []
    for bx0, by0, bx1, by1, m in (a, b):
        c = np.zeros((y1 - y0, x1 - x0), bool)
        c[by0 - y0:by1 - y0, bx0 - x0:bx1 - x0] = m
        canvases.append(c)
    return (canvases[0] & canvases[1]).sum() / (canvases[0] | canvases[1]).sum()


def assert_recovered(truth, instances, min_iou=0.98):
    """truth: [(x0, y0, x1, y1, mask)] in scene px. Every one back exactly once, IoU >= min_iou."""
    assert len(instances) == len(truth)
    found = [(i.x0, i.y0, i.x1, i.y1, mask_utils.decode(i.rle).astype(bool)) for i in instances]
    boxes = np.array([f[:4] for f in found]).reshape(-1, 4)
    matched = set()
    for t in truth:
        near = np.flatnonzero((boxes[:, 0] < t[2]) & (boxes[:, 2] > t[0])
                              & (boxes[:, 1] < t[3]) & (boxes[:, 3] > t[1]))
        scored = sorted(((iou(t, found[k]), k) for k in near), reverse=True)
        assert scored and scored[0][0] >= min_iou, f"object at {t[:4]}: {scored[:1]}"
        assert scored[0][1] not in matched
        matched.add(scored[0][1])


def replay_and_stitch(scene_labels, transform, width, height):
    tiles = grid_windows(width, height, TILE, OVERLAP)
    return stitch_scene(tiles, replay_scene(scene_labels, tiles, transform, width, height))


# ---- crop_rle ---------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**31), st.data())
def test_crop_rle_matches_full_decode(h, w, seed, data):
    rng = np.random.default_rng(seed)
    full = rng.random((h, w)) < data.draw(st.sampled_from([0.05, 0.5, 0.95, 1.0]))
    x0, y0 = data.draw(st.integers(0, w - 1)), data.draw(st.integers(0, h - 1))
    x1, y1 = data.draw(st.integers(x0 + 1, w)), data.draw(st.integers(y0 + 1, h))
    rle = mask_utils.encode(np.asfortranarray(full, dtype=np.uint8))
    cropped = crop_rle(rle, (x0, y0, x1, y1))
    assert cropped["size"] == [y1 - y0, x1 - x0]
    assert (mask_utils.decode(cropped).astype(bool) == full[y0:y1, x0:x1]).all()


# ---- COCO -------------------------------------------------------------------------------------

def _poly(x0, y0, x1, y1):
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def _rle_of(mask, compressed=True):
    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    if compressed:
        return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    runs, flat, value, n = [], mask.flatten(order="F"), False, 0
    for v in flat:
        if bool(v) != value:
            runs.append(n)
            value, n = not value, 0
        n += 1
    return {"size": [mask.shape[0], mask.shape[1]], "counts": runs + [n]}


@pytest.fixture
def coco_file(tmp_path):
    yy, xx = np.mgrid[:H, :W]
    disk = ((xx - 224) ** 2 + (yy - 224) ** 2 <= 40 ** 2)            # four-tile corner
    big = ((xx - 430) / 160) ** 2 + ((yy - 380) / 140) ** 2 <= 1      # larger than a tile
    segs = [
        ([_poly(150, 40, 300, 100)], 1, None),                        # polygon across a seam
        (_poly(20, 500, 224, 560), 1, 0.7),                           # solaris flat polygon,
        ([_poly(224, 500, 330, 560)], 1, None),                       # touching the previous one
        (_rle_of(disk), 3, 0.25),                                     # compressed RLE (str)
        (_rle_of(big, compressed=False), 1, None),                    # uncompressed RLE
        ([_poly(230, 10, 240, 20)], 3, None),                         # small, inside a band
    ]
    anns = [{"id": k + 1, "image_id": 7, "category_id": c, "segmentation": s, "iscrowd": 0,
             **({"score": sc} if sc is not None else {})} for k, (s, c, sc) in enumerate(segs)]
    anns.append({"id": 99, "image_id": 8, "category_id": 1, "bbox": [0, 0, 5, 5]})  # box only
    data = {"images": [{"id": 7, "file_name": "./sub/scene_a.png", "width": W, "height": H},
                       {"id": 8, "file_name": "scene_b.png", "width": 50, "height": 40}],
            "categories": [{"id": 1, "name": "building"}, {"id": 3, "name": "tank"}],
            "annotations": anns}
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(data))
    return path, anns


def test_coco_objects_come_back_exactly_once(coco_file):
    path, anns = coco_file
    labels = load_labels(path, "unused-root")
    assert set(labels) == {"sub/scene_a.png", "scene_b.png"}
    assert class_names_of(labels) == ("__background__", "building", "N/A", "tank")
    scene = labels["sub/scene_a.png"]
    assert (scene.width, scene.height) == (W, H) and labels["scene_b.png"].objects == ()
    truth = []
    for a in anns[:-1]:
        seg = a["segmentation"]
        seg = [seg] if isinstance(seg, list) and not isinstance(seg[0], list) else seg
        if isinstance(seg, dict) and isinstance(seg["counts"], str):
            rle = seg  # compressed already; frPyObjects only takes uncompressed dicts
        else:
            rle = mask_utils.frPyObjects(seg, H, W)
            rle = mask_utils.merge(rle) if isinstance(rle, list) else rle
        truth.append(tight(mask_utils.decode(rle)))
    instances = replay_and_stitch(scene, None, W, H)
    assert_recovered(truth, instances, min_iou=1.0)
    scores = sorted((i.class_id, round(i.score, 3)) for i in instances)
    assert scores == [(1, 0.7), (1, 1.0), (1, 1.0), (1, 1.0), (3, 0.25), (3, 1.0)]


def test_tile_sees_only_its_window_in_tile_frame(coco_file):
    scene = load_labels(coco_file[0])["sub/scene_a.png"]
    tiles = grid_windows(W, H, TILE, OVERLAP)
    right = next(t for t in tiles if (t.row, t.col) == (0, 1))  # window x in [192, 448)
    dets = detections_for_tile(scene, right, None, W, H)
    seam = next(d for d in dets if d.y0 == 40 and d.class_id == 1)  # polygon x 150..300
    assert (seam.x0, seam.x1) == (0, 300 - 192)  # cut at the window's left edge, tile frame
    assert all(0 <= d.x0 < d.x1 <= TILE and 0 <= d.y0 < d.y1 <= TILE for d in dets)


# ---- GeoJSON ----------------------------------------------------------------------------------

def _world(px_ring):
    return [list(TRANSFORM @ (x, y)) for x, y in px_ring]


def _feature(px_rings, **props):
    return {"type": "Feature", "properties": props,
            "geometry": {"type": "Polygon", "coordinates": [_world(r) for r in px_rings]}}


def _box_ring(x0, y0, x1, y1):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]


@pytest.fixture
def geojson_scene(tmp_path):
    root, labels_dir = tmp_path / "input", tmp_path / "labels"
    (root / "area").mkdir(parents=True)
    (labels_dir / "area").mkdir(parents=True)
    with rasterio.open(root / "area" / "scene.tif", "w", driver="GTiff", width=W, height=H,
                       count=1, dtype="uint8", crs="EPSG:32616", transform=TRANSFORM) as ds:
        ds.write(np.zeros((1, H, W), np.uint8))
    diamond = [(224, 170), (280, 224), (224, 280), (170, 224), (224, 170)]  # four-tile corner
    features = [
        _feature([_box_ring(150.3, 40.2, 300.6, 100.5)], class_name="building", score=0.5),
        _feature([_box_ring(20, 500, 224, 560)], class_name="building"),  # touching pair,
        _feature([_box_ring(224, 500, 330, 560)], class_name="building"),  # shared edge x=224
        _feature([diamond], category="car"),
        _feature([_box_ring(300, 250, 640, 560), _box_ring(400, 300, 500, 400)],
                 class_name="building"),                                   # > a tile, with hole
        {"type": "Feature", "properties": {}, "geometry": {"type": "MultiPolygon", "coordinates": [
            [_world(_box_ring(600, 20, 690, 60))], [_world(_box_ring(600, 100, 690, 150))]]}},
        {"type": "Feature", "properties": {},
         "geometry": {"type": "Point", "coordinates": list(TRANSFORM @ (5, 5))}},
    ]
    fc = {"type": "FeatureCollection", "features": features,
          "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32616"}}}
    (labels_dir / "area" / "scene.geojson").write_text(json.dumps(fc))
    return root, labels_dir, features[:-1]


def test_geojson_objects_come_back_exactly_once(geojson_scene):
    root, labels_dir, features = geojson_scene
    labels = load_labels(labels_dir, root)
    assert list(labels) == ["area/scene.tif"]
    assert class_names_of(labels) == ("__background__", "building", "car", "object")
    scene = labels["area/scene.tif"]
    assert scene.crs == "urn:ogc:def:crs:EPSG::32616" and len(scene.objects) == 6
    truth = [tight(rasterio.features.rasterize([(f["geometry"], 1)], out_shape=(H, W),
                                               transform=TRANSFORM)) for f in features]
    instances = replay_and_stitch(scene, TRANSFORM, W, H)
    assert_recovered(truth, instances, min_iou=1.0)
    assert sorted(i.score for i in instances) == [0.5] + [1.0] * 5


def test_geojson_scene_matching(geojson_scene):
    _, labels_dir, _ = geojson_scene
    assert list(load_labels(labels_dir, scene_ids=["x/other.tif", "area/scene.tif"])) \
        == ["area/scene.tif"]
    assert list(load_labels(labels_dir, scene_ids=["elsewhere/scene.jpg"])) \
        == ["elsewhere/scene.jpg"]  # unique bare stem
    by_stem = load_labels(labels_dir)  # no scenes known: keyed by label stem
    assert list(by_stem) == ["area/scene"]
    assert labels_for_scene(by_stem, "area/scene.tif") is by_stem["area/scene"]
    with pytest.raises(MaskrayError, match="transform"):
        detections_for_tile(by_stem["area/scene"], grid_windows(W, H, TILE, OVERLAP)[0], None, W, H)


def test_geojson_class_properties(tmp_path):
    props = [{"class_id": 2, "class_name": "car"}, {"class_id": 2}, {"class_name": "car"},
             {"category": "tree"}, {}, {"category": 5}, {"class_id": "5", "score": 0.3}]
    features = [_feature([_box_ring(10 * k, 10, 10 * k + 5, 15)], **p) for k, p in enumerate(props)]
    (tmp_path / "s.geojson").write_text(json.dumps({"type": "FeatureCollection",
                                                    "features": features}))
    labels = load_labels(tmp_path, scene_ids=["s.tif"])
    assert class_names_of(labels) == ("__background__", "N/A", "car", "N/A", "N/A", "class_5",
                                      "object", "tree")
    objects = labels["s.tif"].objects
    assert [o.class_id for o in objects] == [2, 2, 2, 7, 6, 5, 5]
    assert [o.score for o in objects] == [1.0] * 6 + [0.3]
    features[0]["properties"] = {"class_id": "car"}
    (tmp_path / "s.geojson").write_text(json.dumps({"type": "FeatureCollection",
                                                    "features": features}))
    with pytest.raises(MaskrayError, match="class_id must be an integer"):
        load_labels(tmp_path, scene_ids=["s.tif"])


def test_bad_paths_and_files(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_labels(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(MaskrayError, match="cannot read"):
        load_labels(tmp_path / "bad.json")
    (tmp_path / "one.geojson").write_text("{}")
    with pytest.raises(UsageError, match="directory of one file per scene"):
        load_labels(tmp_path / "one.geojson")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(MaskrayError, match="not a COCO dataset"):
        load_labels(tmp_path / "list.json")


# ---- the project's synthetic archive ------------------------------------------------------------

@pytest.fixture(scope="module")
def synth_archive(tmp_path_factory):
    synth = pytest.importorskip("pipeline.synth")
    out = tmp_path_factory.mktemp("synth")
    synth.generate_archive(out, synth.SynthConfig(scenes=1, size=768, seed=5))
    return out


@pytest.mark.parametrize("source", ["annotations.json", "labels"])
def test_synthetic_archive_replayed(synth_archive, source):
    """The done-when: tile 256 / overlap 64 on generated scenes (touching rows, clusters, objects
    of every size), COCO or GeoJSON labels: every instance back once, IoU >= 0.98."""
    labels = load_labels(synth_archive / source, synth_archive)
    coco = json.loads((synth_archive / "annotations.json").read_text())
    assert list(labels) == [img["file_name"] for img in coco["images"]]
    for img in coco["images"]:
        h, w = img["height"], img["width"]
        with rasterio.open(synth_archive / img["file_name"]) as ds:
            transform = ds.transform
        truth = []
        for a in coco["annotations"]:
            if a["image_id"] == img["id"]:
                seg = a["segmentation"]
                rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w)) \
                    if isinstance(seg, list) else seg
                truth.append(tight(mask_utils.decode(rle)))
        scene = labels[img["file_name"]]
        assert_recovered(truth, replay_and_stitch(scene, transform, w, h))


# ---- real data (../shared/data) ---------------------------------------------------------------

@pytest.mark.shared_data
@pytest.mark.parametrize("tif, geojson, count", [
    ("sample_geotiff.tif", "geotiff_labels.geojson", 43),                     # EPSG:32616
    ("sample_geotiff_custom_proj.tif", "geotiff_custom_proj_labels.geojson", 19),  # Albers
])
def test_solaris_geojson_replayed(shared_data, tmp_path, tif, geojson, count):
    shutil.copy(shared_data / "solaris" / geojson, tmp_path / (Path(tif).stem + ".geojson"))
    scene = load_labels(tmp_path, scene_ids=[tif])[tif]
    with rasterio.open(shared_data / "solaris" / tif) as ds:
        transform, width, height = ds.transform, ds.width, ds.height
    truth = [tight(rasterio.features.rasterize([(o.geometry, 1)], out_shape=(height, width),
                                               transform=transform)) for o in scene.objects]
    assert len(truth) == count
    assert_recovered(truth, replay_and_stitch(scene, transform, width, height))


@pytest.mark.shared_data
def test_isaid_rle_replayed(shared_data):
    path = shared_data / "isaid" / "isaid_sample_rle_coco.json"
    labels = load_labels(path, shared_data / "isaid")
    data = json.loads(path.read_text())
    files = {img["id"]: img["file_name"] for img in data["images"]}
    total = 0
    for scene_id, scene in labels.items():
        truth = [tight(mask_utils.decode(a["segmentation"])) for a in data["annotations"]
                 if files[a["image_id"]] == scene_id]
        assert_recovered(truth, replay_and_stitch(scene, None, scene.width, scene.height))
        total += len(truth)
    assert total == 306
