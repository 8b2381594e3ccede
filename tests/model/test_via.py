"""model/via.py: VIA 1 / VIA 2 / VIA 2 project JSON -> COCO, and CocoChips training on it.
Hand-written JSONs over tiny PNGs in tmp_path (no shared data needed)."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from model.chips import CocoChips, boxes_of, count_images
from model.via import ellipse_polygon, is_via, region_class, via_to_coco
from pipeline.errors import MaskrayError

SIZES = {"b.png": (40, 30), "a.png": (64, 48), "c.png": (20, 10)}  # name -> (width, height)
POLY = {"name": "polygon", "all_points_x": [2, 20, 20, 2], "all_points_y": [3, 3, 13, 13]}
RECT = {"name": "rect", "x": 10, "y": 5, "width": 8, "height": 6}
CIRCLE = {"name": "circle", "cx": 18, "cy": 14, "r": 9}
ELLIPSE = {"name": "ellipse", "cx": 20, "cy": 15, "rx": 12, "ry": 4, "theta": math.pi / 2}
POINT = {"name": "point", "cx": 5, "cy": 5}


def _region(shape, **attrs):
    return {"shape_attributes": shape, "region_attributes": attrs}


# filename -> regions, written unsorted ("b" before "a") to check the id order
REGIONS = {
    "b.png": [_region(CIRCLE, name="building"),
              _region(ELLIPSE, kind={"building": True, "tree": False}),  # checkbox attribute
              _region(POINT, name="tree")],
    "a.png": [_region(POLY, name="building", note=""), _region(RECT, type="tree")],
    "c.png": [],  # a negative image
}


def via2(regions=REGIONS):
    """VIA 2 annotation export: regions a list, keyed by filename + size."""
    return {f"{name}{100 + i}": {"filename": name, "size": 100 + i, "regions": copy.deepcopy(r),
                                 "file_attributes": {}}
            for i, (name, r) in enumerate(regions.items())}


def via1(regions=REGIONS):
    """VIA 1 export (Matterport balloon style): regions a dict {"0": region, ...}."""
    data = via2(regions)
    for entry in data.values():
        entry["regions"] = {str(i): r for i, r in enumerate(entry["regions"])}
        entry.update(fileref="", base64_img_data="")
    return data


def via2_project(regions=REGIONS):
    return {"_via_settings": {"ui": {}}, "_via_img_metadata": via2(regions),
            "_via_attributes": {"region": {}, "file": {}}, "_via_data_format_version": "2.0.10"}


@pytest.fixture
def root(tmp_path):
    for name, (w, h) in SIZES.items():
        rgb = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(tmp_path / name)
    return tmp_path


def _mask(ann, img):
    rle = mask_utils.frPyObjects(ann["segmentation"], img["height"], img["width"])
    return mask_utils.decode(mask_utils.merge(rle))


def test_is_via_tells_the_formats_apart():
    assert is_via(via2()) and is_via(via1()) and is_via(via2_project())
    assert not is_via({"images": [], "annotations": [], "categories": []})
    assert not is_via({}) and not is_via([]) and not is_via({"project": {}, "file": {}})


def test_via2_export_becomes_coco(root, logged):
    with logged("model.via") as lines:
        coco = via_to_coco(via2(), root)
    assert coco["images"] == [{"id": i, "file_name": n, "width": SIZES[n][0],
                               "height": SIZES[n][1]}
                              for i, n in enumerate(["a.png", "b.png", "c.png"], start=1)]
    assert coco["categories"] == [{"id": 1, "name": "building"}, {"id": 2, "name": "tree"}]
    anns = coco["annotations"]
    assert [a["id"] for a in anns] == [1, 2, 3, 4]
    assert [(a["image_id"], a["category_id"], a["iscrowd"]) for a in anns] == [
        (1, 1, 0), (1, 2, 0), (2, 1, 0), (2, 1, 0)]
    assert anns[0]["segmentation"] == [[2, 3, 20, 3, 20, 13, 2, 13]]  # copied unchanged
    assert anns[1]["segmentation"] == [[10, 5, 18, 5, 18, 11, 10, 11]]
    assert coco["info"]["skipped_regions"] == {"point": 1}
    text = "\n".join(lines)
    assert "skipped 1 region(s)" in text and "point" in text


def test_rect_decodes_to_its_pixels(root):
    coco = via_to_coco(via2(), root)
    img, rect = coco["images"][0], coco["annotations"][1]
    m = _mask(rect, img)
    assert m.sum() == RECT["width"] * RECT["height"] == rect["area"]
    ys, xs = np.nonzero(m)  # pixels x in [10, 18), y in [5, 11): (0, 0) = corner of pixel (0, 0)
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (10, 18, 5, 11)
    assert rect["bbox"] == [10, 5, 8, 6]


def test_circle_and_rotated_ellipse_are_polygons_on_the_curve(root):
    coco = via_to_coco(via2(), root)
    img = coco["images"][1]
    circle, ellipse = coco["annotations"][2:]
    xy = np.array(circle["segmentation"][0]).reshape(-1, 2)
    assert np.allclose(np.hypot(xy[:, 0] - 18, xy[:, 1] - 14), 9)
    assert _mask(circle, img).sum() == pytest.approx(math.pi * 81, rel=0.1)
    # theta = pi/2 turns the long axis (rx = 12) from x to y: tall, not wide (x 16..24, y 3..27)
    x, y, w, h = ellipse["bbox"]
    assert w == pytest.approx(8, abs=1.5) and h == pytest.approx(24, abs=1.5)
    assert (x + w / 2, y + h / 2) == (pytest.approx(20, abs=1), pytest.approx(15, abs=1))
    assert ellipse_polygon(5, 5, 0, 3) is None
    pts = np.array(ellipse_polygon(0, 0, 500, 500)).reshape(-1, 2)
    chord_mid = (pts[0] + pts[1]) / 2  # the polygon stays within 0.25 px of a large circle
    assert 500 - np.hypot(*chord_mid) <= 0.25


def test_via1_and_the_via2_project_give_the_same_coco(root):
    expected = via_to_coco(via2(), root)
    assert via_to_coco(via1(), root) == expected
    assert via_to_coco(via2_project(), root) == expected


def test_region_class_rules():
    assert region_class({"name": "roof"}) == "roof"
    assert region_class({"name": "roof", "note": ""}) == "roof"  # empty text attributes ignored
    assert region_class({"kind": {"roof": True, "tree": False}}) == "roof"
    assert region_class({"name": "roof", "type": "flat"}) is None  # ambiguous
    assert region_class({"name": "roof", "type": "flat"}, "type") == "flat"
    assert region_class({"name": "roof", "type": "flat"}, default_class="x") == "x"
    assert region_class({"kind": {"roof": True, "tree": True}}) is None
    assert region_class({}, default_class="balloon") == "balloon"
    assert region_class({"name": "roof"}, "type") is None


def test_class_attribute_and_default_class(root):
    regions = {"a.png": [_region(POLY, name="roof", type="flat"), _region(RECT)]}
    coco = via_to_coco(via2(regions), root, class_attribute="type", default_class="other")
    assert coco["categories"] == [{"id": 1, "name": "flat"}, {"id": 2, "name": "other"}]
    assert [a["category_id"] for a in coco["annotations"]] == [1, 2]


def test_a_region_without_class_is_an_error_naming_file_and_region(root):
    regions = {"a.png": [_region(POLY, name="roof"), _region(RECT, name="a", type="b")]}
    with pytest.raises(MaskrayError, match=r"a\.png: region 1 has no class"):
        via_to_coco(via2(regions), root)


def test_a_missing_image_is_an_error_naming_it(root):
    with pytest.raises(MaskrayError, match=r"VIA image not found: .*missing\.png"):
        via_to_coco(via2({"missing.png": [_region(POLY, name="roof")]}), root)
    (root / "bad.png").write_text("not an image")
    with pytest.raises(MaskrayError, match=r"cannot read VIA image .*bad\.png"):
        via_to_coco(via2({"bad.png": []}), root)


def test_a_malformed_shape_is_an_error(root):
    broken = {"name": "polygon", "all_points_x": [1, 2, 3], "all_points_y": [1, 2]}
    with pytest.raises(MaskrayError, match=r"a\.png: region 0 has a malformed 'polygon'"):
        via_to_coco(via2({"a.png": [_region(broken, name="roof")]}), root)
    with pytest.raises(MaskrayError, match="unknown VIA shape 'freehand'"):
        via_to_coco(via2({"a.png": [_region({"name": "freehand"}, name="roof")]}), root)


@pytest.mark.parametrize("make", [via1, via2, via2_project])
def test_coco_chips_train_on_a_via_json(root, make):
    path = root / "via.json"
    path.write_text(json.dumps(make()))
    ds = CocoChips(path, ("building", "tree"), (1, 2, 3))
    assert len(ds) == count_images(path) == 3
    image_a, target_a = ds[0]
    assert image_a.shape == (3, 48, 64)
    assert target_a["labels"].tolist() == [1, 2] and target_a["masks"].shape == (2, 48, 64)
    assert target_a["boxes"].tolist() == [[2, 3, 20, 13], [10, 5, 18, 11]]
    _, target_b = ds[1]
    assert target_b["labels"].tolist() == [1, 1] and target_b["masks"].shape == (2, 30, 40)
    assert np.array_equal(target_b["boxes"].numpy(), boxes_of(target_b["masks"].numpy()))
    assert len(ds[2][1]["labels"]) == 0  # c.png, no regions


def test_coco_chips_give_unlabelled_regions_a_one_class_models_class(root, tmp_path):
    balloon = {"a.png": [_region(POLY), _region(RECT)]}  # region_attributes {} like the demo
    path = root / "balloon.json"
    path.write_text(json.dumps(via1(balloon)))
    assert CocoChips(path, ("balloon",), (1, 2, 3))[0][1]["labels"].tolist() == [1, 1]
    with pytest.raises(MaskrayError, match="region 0 has no class"):
        CocoChips(path, ("balloon", "tree"), (1, 2, 3))
    # an explicit root: images are looked up there, not beside the JSON
    elsewhere = tmp_path / "labels"
    elsewhere.mkdir()
    (elsewhere / "balloon.json").write_text(path.read_text())
    assert len(CocoChips(elsewhere / "balloon.json", ("balloon",), (1, 2, 3), root=root)) == 1
