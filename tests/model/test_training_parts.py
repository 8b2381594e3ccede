"""The ray-free pieces training is built from: augmentation, train / validation split, band
statistics, and validation gathered from shards (COCO metrics of the union of the shards)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from jobs import synth as synth_job
from model.augment import augment, zoom
from model.build import build_maskrcnn
from model.chips import CocoChips, band_statistics, split_indices
from model.config import ModelConfig
from pipeline.labels import coco_rle
from model.validation import ShardResult, epoch_metrics, shard_indices, validate_shard

CLASSES = ("building", "vehicle", "ship", "tree")


@pytest.fixture(scope="module")
def chips(tmp_path_factory):
    out = tmp_path_factory.mktemp("chips") / "chips"
    assert synth_job.main(["--out", str(out), "--chips", "--count", "6", "--chip-size", "96",
                           "--seed", "4", "--empty-fraction", "0.2", "--quiet"]) == 0
    return out


def test_zoom_in_crops_and_zoom_out_pads_with_the_band_mean():
    rng = np.random.default_rng(0)
    image = np.stack([np.full((64, 64), 10.0), np.full((64, 64), 50.0)]).astype(np.float32)
    image[:, 24:40, 24:40] = 200
    masks = np.zeros((1, 64, 64), np.uint8)
    masks[0, 24:40, 24:40] = 1
    big_img, big_mask = zoom(image, masks, 2.0, rng)
    assert big_img.shape == image.shape and big_mask.shape == masks.shape
    # the 16 px square becomes up to 32 x 32 px (a random crop may cut it), a filled rectangle
    # on the square's pixels of the zoomed image
    ys, xs = np.nonzero(big_mask[0])
    assert 0 < big_mask.sum() <= 32 * 32
    assert big_mask.sum() == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    assert ys.max() - ys.min() + 1 <= 32 and xs.max() - xs.min() + 1 <= 32
    inside = big_img[:, ys.min() + 1:ys.max(), xs.min() + 1:xs.max()]  # away from bilinear edges
    assert inside.size and np.all(inside == 200)
    small_img, small_mask = zoom(image, masks, 0.5, rng)
    assert small_mask.sum() == 8 * 8
    assert small_img[0, 0, 0] == pytest.approx(image[0].mean()) or small_img[0, -1, -1] == \
        pytest.approx(image[0].mean())


def test_augment_keeps_masks_on_their_pixels_and_photometric_leaves_masks_alone():
    rng = np.random.default_rng(1)
    image = np.random.default_rng(2).uniform(0, 255, (3, 48, 48)).astype(np.float32)
    masks = np.zeros((2, 48, 48), np.uint8)
    masks[0, 5:15, 5:20] = 1
    masks[1, 30:40, 30:44] = 1
    for _ in range(20):
        a_img, a_masks = augment(image, masks, rng, scale_jitter=0.25, photometric=0.2)
        assert a_img.shape == image.shape and a_masks.shape == masks.shape
        assert a_masks.dtype == np.uint8 and set(np.unique(a_masks)) <= {0, 1}
    same_img, same_masks = augment(image, masks, np.random.default_rng(5), photometric=0.3)
    # without zoom the masks are a flip / rotation of the originals: areas unchanged
    assert same_masks.sum(axis=(1, 2)).tolist() == masks.sum(axis=(1, 2)).tolist()


def test_an_empty_chip_survives_augmentation(chips):
    ds = CocoChips(chips / "annotations.json", CLASSES, (1, 2, 3), augment=True,
                   scale_jitter=0.5, photometric=0.2)
    empties = [i for i in range(len(ds)) if not ds.annotations[ds.images[i]["id"]]]
    assert empties, "the synthetic set should hold an empty chip"
    image, target = ds[empties[0]]
    assert image.shape == (3, 96, 96) and target["masks"].shape == (0, 96, 96)
    assert target["boxes"].shape == (0, 4)


def test_split_is_seeded_disjoint_and_covers_everything():
    train, val = split_indices(20, 0.25, seed=3)
    assert len(val) == 5 and sorted(train + val) == list(range(20))
    assert (train, val) == split_indices(20, 0.25, seed=3)
    assert val != split_indices(20, 0.25, seed=4)[1]
    assert split_indices(5, 0.0, 0) == ([0, 1, 2, 3, 4], [])
    assert split_indices(2, 0.01, 0)[1] and split_indices(1, 0.5, 0) == ([0], [])


def test_band_statistics_are_the_pixel_mean_and_std(chips):
    ds = CocoChips(chips / "annotations.json", CLASSES, (1, 2, 3))
    pixels = np.concatenate([ds[i][0].numpy().reshape(3, -1) for i in range(len(ds))], axis=1)
    mean, std = band_statistics(ds)
    assert mean == pytest.approx(pixels.mean(axis=1).tolist(), rel=1e-6)
    assert std == pytest.approx(pixels.std(axis=1).tolist(), rel=1e-5)


def test_shards_partition_the_validation_images():
    shards = [shard_indices(7, r, 3) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(7))


def test_gathered_metrics_are_coco_metrics_of_all_shards(chips):
    """Ground truth given as detections, split over two shards: AP 1 for masks and boxes; a
    shard that is lost lowers recall (the gather really takes both)."""
    ds = CocoChips(chips / "annotations.json", CLASSES, (1, 2, 3))
    perfect = []
    for ann in ds.gt["annotations"]:
        img = next(i for i in ds.images if i["id"] == ann["image_id"])
        rle = coco_rle(ann["segmentation"], img["height"], img["width"])
        perfect.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                        "score": 1.0, "segmentation": rle,
                        "bbox": [float(v) for v in mask_utils.toBbox(rle)]})
    half = len(perfect) // 2
    shards = [ShardResult(perfect[:half], {"loss_mask": 2.0}, 2),
              ShardResult(perfect[half:], {"loss_mask": 1.0}, 4)]
    m = epoch_metrics(shards, ds.gt)
    assert m["segm_AP"] == pytest.approx(1.0) and m["bbox_AP"] == pytest.approx(1.0)
    assert m["val_loss"] == pytest.approx(0.5) and m["val_images"] == 6
    assert epoch_metrics(shards[:1], ds.gt)["segm_AP"] < 1.0


def test_validate_shard_gives_coco_results_and_leaves_the_model_training(chips):
    cfg = ModelConfig(backbone="resnet18_fpn", classes=CLASSES, min_size=96, max_size=96,
                      rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50,
                      rpn_batch_size_per_image=32, box_batch_size_per_image=32,
                      box_score_thresh=0.0, box_detections_per_img=10)
    torch.manual_seed(0)
    model = build_maskrcnn(cfg)
    ds = CocoChips(chips / "annotations.json", CLASSES, (1, 2, 3))
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    shard = validate_shard(model, ds, [0, 1, 2], torch.device("cpu"), batch_size=2)
    assert model.training and torch.equal(bn.running_mean, before)
    assert shard.images == 3 and set(shard.loss_sums) >= {"loss_mask", "loss_classifier"}
    ids = {img["id"] for img in ds.images[:3]}
    for r in shard.results:
        assert r["image_id"] in ids and r["category_id"] in {c["id"] for c in ds.gt["categories"]}
        assert r["segmentation"]["size"] == [96, 96] and len(r["bbox"]) == 4
