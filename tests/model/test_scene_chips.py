"""SceneChips: chips cut on the fly from synth GeoTIFF scenes + GeoJSON labels (384 px, 128 px
chips, so each scene is a 3 x 3 grid and overlap 0 chips partition it)."""

import json
import shutil

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from jobs import synth as synth_job
from model.chips import band_statistics, boxes_of
from model.scene_chips import SceneChips
from pipeline.errors import MaskrayError

CLASSES = ("building", "vehicle", "ship", "tree")  # the synth's category ids 1..4, in order
BANDS = (1, 2, 3)
SIZE, CHIP = 384, 128


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """DIR with scenes/*.tif, labels/*.geojson and the synth's exact COCO annotations.json."""
    out = tmp_path_factory.mktemp("synth")
    synth_job.main(["--out", str(out), "--scenes", "2", "--size", str(SIZE), "--seed", "3",
                    "--quiet"])
    return out


@pytest.fixture(scope="module")
def all_chips(archive):
    return SceneChips(archive, None, CLASSES, BANDS, CHIP, empty_rate=1.0)


def _items(ds):
    return [ds[i] for i in range(len(ds))]


def test_chips_are_full_size_with_stable_ids(all_chips):
    assert len(all_chips) == 2 * (SIZE // CHIP) ** 2
    assert [img["id"] for img in all_chips.images] == list(range(1, len(all_chips) + 1))
    first = all_chips.images[0]
    assert first["file_name"] == "scenes/scene_0000.tif#0,0"
    assert first["window"] == (0, 0, CHIP, CHIP) and first["width"] == first["height"] == CHIP
    for image, target in _items(all_chips):
        assert image.dtype.is_floating_point and tuple(image.shape) == (3, CHIP, CHIP)
        n = len(target["labels"])
        assert tuple(target["masks"].shape) == (n, CHIP, CHIP) and target["boxes"].shape == (n, 4)
    assert all_chips.category_of == {1: 1, 2: 2, 3: 3, 4: 4}


def test_chips_cover_every_object_exactly(archive, all_chips):
    """Each synth object cropped to each chip is one of that chip's masks, and nothing else is:
    so an object's pixels summed over the (non-overlapping) chips are its full area."""
    coco = json.loads((archive / "annotations.json").read_text())
    scene_of = {img["id"]: img["file_name"] for img in coco["images"]}
    for img, (_, target) in zip(all_chips.images, _items(all_chips)):
        x0, y0, w, h = img["window"]
        expected = []
        for ann in coco["annotations"]:
            if scene_of[ann["image_id"]] == img["scene"]:
                crop = mask_utils.decode(ann["segmentation"])[y0:y0 + h, x0:x0 + w]
                if crop.any():
                    expected.append((ann["category_id"], crop.tobytes()))
        got = [(int(l), m.numpy().tobytes()) for l, m in zip(target["labels"], target["masks"])]
        assert sorted(got) == sorted(expected), img["file_name"]
    area = sum(a["area"] for a in coco["annotations"])
    assert sum(int(t["masks"].sum()) for _, t in _items(all_chips)) == area


def test_scene_smaller_than_chip_is_one_padded_chip(archive):
    ds = SceneChips(archive / "scenes", None, CLASSES, BANDS, 512, empty_rate=0.0)
    assert len(ds) == 2 and [img["window"] for img in ds.images] == [(0, 0, 512, 512)] * 2
    image, target = ds[0]
    assert tuple(image.shape) == (3, 512, 512) and image[:, SIZE:].abs().sum() == 0
    assert image[:, :SIZE, :SIZE].abs().sum() > 0 and not target["masks"][:, SIZE:].any()


def test_empty_rate(archive, all_chips):
    with_objects = sum(len(t["labels"]) > 0 for _, t in _items(all_chips))
    empties = len(all_chips) - with_objects
    ds = SceneChips(archive, None, ("ship",), BANDS, CHIP, empty_rate=0.0)
    assert len(ds) > 0 and all(len(t["labels"]) > 0 for _, t in _items(ds))
    ships = SceneChips(archive, None, ("ship",), BANDS, CHIP, empty_rate=1.0)
    ship_empties = len(ships) - len(ds)
    assert ship_empties > empties  # ships are rare: most chips hold none
    half = SceneChips(archive, None, ("ship",), BANDS, CHIP, empty_rate=0.5)
    assert len(half) == len(ds) + round(ship_empties * 0.5)
    # the chip list ignores the augmentation seed (the trainer passes seed + rank)
    other = SceneChips(archive, None, ("ship",), BANDS, CHIP, empty_rate=0.5, seed=9)
    assert other.images == half.images


def test_gt_matches_items(archive):
    ds = SceneChips(archive, None, CLASSES, BANDS, CHIP, overlap=32, empty_rate=0.5)
    gt = ds.gt
    assert gt["categories"] == [{"id": k, "name": n} for k, n in enumerate(CLASSES, 1)]
    by_image = {}
    for ann in gt["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    results = []
    for img, (_, target) in zip(ds.images, _items(ds)):
        anns = by_image.get(img["id"], [])
        assert len(anns) == len(target["labels"])
        for ann, label, box, mask in zip(anns, target["labels"], target["boxes"],
                                         target["masks"]):
            assert ann["category_id"] == ds.category_of[int(label)] and ann["iscrowd"] == 0
            assert np.array_equal(mask_utils.decode(ann["segmentation"]), mask.numpy())
            x0, y0, x1, y1 = box.tolist()
            assert ann["bbox"] == [x0, y0, x1 - x0, y1 - y0] and ann["area"] == mask.sum()
            results.append({"image_id": img["id"], "category_id": ann["category_id"],
                            "segmentation": ann["segmentation"], "score": 1.0})
    coco = COCO()
    coco.dataset = json.loads(json.dumps(gt))  # JSON-serialisable, as COCOeval loads it
    coco.createIndex()
    ev = COCOeval(coco, coco.loadRes(results), "segm")
    ev.evaluate(), ev.accumulate()
    ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)


def test_augment_keeps_shapes_and_box_mask_consistency(archive):
    kwargs = dict(empty_rate=0.0, seed=1, scale_jitter=0.3, photometric=0.2)
    ds = SceneChips(archive, None, CLASSES, BANDS, CHIP, augment=True, **kwargs)
    plain = SceneChips(archive, None, CLASSES, BANDS, CHIP, **kwargs)
    changed = False
    for i in range(len(ds)):
        image, target = ds[i]
        assert tuple(image.shape) == (3, CHIP, CHIP)
        masks = target["masks"].numpy()
        assert masks.shape[1:] == (CHIP, CHIP) and len(masks) == len(target["labels"])
        assert masks.reshape(len(masks), -1).any(axis=1).all()
        assert np.array_equal(target["boxes"].numpy(), boxes_of(masks))
        assert np.array_equal(image.numpy(), ds[i][0].numpy())  # same (seed, epoch, index)
        changed |= not np.array_equal(image.numpy(), plain[i][0].numpy())
    assert changed
    epoch0 = [ds[i][0].numpy() for i in range(4)]
    ds.set_epoch(1)
    assert any(not np.array_equal(a, ds[i][0].numpy()) for i, a in enumerate(epoch0))


def test_scene_without_labels_is_skipped(archive, tmp_path, logged):
    root = tmp_path / "copy"
    shutil.copytree(archive / "scenes", root / "scenes")
    (root / "labels").mkdir()
    shutil.copy(archive / "labels" / "scene_0001.geojson", root / "labels")
    with logged("model.scene_chips") as lines:
        ds = SceneChips(root / "scenes", None, CLASSES, BANDS, CHIP, empty_rate=1.0)
    assert {img["scene"] for img in ds.images} == {"scene_0001.tif"} and len(ds) == 9
    assert any("scene_0000.tif has no GeoJSON labels" in line for line in lines)
    explicit = SceneChips(root / "scenes", root / "labels", CLASSES, BANDS, CHIP, empty_rate=1.0)
    assert explicit.images == ds.images
    (root / "labels" / "scene_0001.geojson").unlink()
    with pytest.raises(MaskrayError, match="no labelled GeoTIFF scene"):
        SceneChips(root, None, CLASSES, BANDS, CHIP)
    with pytest.raises(MaskrayError, match="no GeoJSON labels directory"):
        SceneChips(root / "scenes", tmp_path / "missing", CLASSES, BANDS, CHIP)


def test_classes_not_in_model_are_left_out(archive, all_chips):
    ds = SceneChips(archive, None, ("tree", "building", "crane"), BANDS, CHIP, empty_rate=1.0)
    assert [c["name"] for c in ds.gt["categories"]] == ["tree", "building", "crane"]
    rename = {4: 1, 1: 2}  # synth ids (tree 4, building 1) -> this model's ids
    for (_, full), (_, part) in zip(_items(all_chips), _items(ds)):
        keep = [k for k, l in enumerate(full["labels"].tolist()) if l in rename]
        assert part["labels"].tolist() == [rename[full["labels"][k].item()] for k in keep]
        assert np.array_equal(part["masks"].numpy(), full["masks"].numpy()[keep])
    with pytest.raises(MaskrayError, match="no label class"):
        SceneChips(archive, None, ("crane",), BANDS, CHIP)


def test_subset_and_band_statistics(all_chips, archive):
    ds = SceneChips(archive, None, CLASSES, BANDS, CHIP, empty_rate=1.0, subset=[4, 1])
    assert ds.images == [all_chips.images[4], all_chips.images[1]]
    assert np.array_equal(ds[0][0], all_chips[4][0])
    mean, std = band_statistics(all_chips)
    assert len(mean) == len(std) == 3 and all(s > 0 for s in std)
    with pytest.raises(MaskrayError, match="band"):
        SceneChips(archive, None, CLASSES, (1, 4), CHIP)
