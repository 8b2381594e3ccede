"""Training images with instance targets, from a COCO JSON (polygon or RLE masks) or VIA JSON.

`CocoChips[i]` -> (image, target), what torchvision's `MaskRCNN(images, targets)` takes:
    image:  float32 (C, H, W) raw band values (C = len(bands); the model normalises them itself)
    target: boxes (N, 4) float32 xyxy pixels, labels (N,) int64 in 1..K (the MODEL's class ids,
            matched to COCO categories by name), masks (N, H, W) uint8
An image with no objects gives N = 0 (torchvision trains on it as a negative). Annotations of a
category the model does not have are left out; an annotation with an empty mask too.

Augmentation (`model.augment`) is applied to the image and its masks together, boxes recomputed
from the masks. The random draws of an image depend only on (seed, epoch, index): a resumed run
sees the same augmentations.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils

from model.augment import augment
from model.via import is_via, via_files, via_to_coco
from pipeline.errors import MaskrayError
from pipeline.labels import coco_rle
from pipeline.rle import tight_bounds


class ChipSet(torch.utils.data.Dataset):
    """What every training set shares (CocoChips here, SceneChips in model/scene_chips.py):
    `images` (one COCO image dict per item), per-epoch augmentation and the item's tensors.
    Subclasses set images, augment, seed, epoch, scale_jitter and photometric."""

    images: list[dict[str, Any]]

    def set_epoch(self, epoch: int) -> None:
        """Draw new augmentations (call once per epoch, like DistributedSampler.set_epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def _item(self, index: int, image: np.ndarray, masks: np.ndarray, labels: list[int]
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(C, H, W) float32 image, (N, H, W) uint8 masks and N model labels -> the item, after
        this epoch's augmentation of `index` (masks emptied by it are dropped)."""
        if self.augment:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            image, masks = augment(image, masks, rng, self.scale_jitter, self.photometric)
            keep = masks.any(axis=(1, 2))
            masks, labels = masks[keep], [label for label, k in zip(labels, keep) if k]
        return torch.from_numpy(np.ascontiguousarray(image)), {
            "boxes": torch.from_numpy(boxes_of(masks)),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": torch.from_numpy(np.ascontiguousarray(masks)),
        }


class CocoChips(ChipSet):
    """Images listed in a COCO or VIA JSON (`model.via`), read whole (chips, not scenes)."""

    def __init__(self, coco_json: str | Path, classes: Sequence[str], bands: Sequence[int],
                 root: str | Path | None = None, augment: bool = False, seed: int = 0,
                 scale_jitter: float = 0.0, photometric: float = 0.0,
                 subset: Sequence[int] | None = None) -> None:
        """subset: positions in the image list sorted by id to keep (a train / val split);
        None keeps every image."""
        path = Path(coco_json)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise MaskrayError(f"cannot read training labels {path}: {exc}") from exc
        self.root = Path(root) if root else path.parent
        if is_via(data):  # a region with no class attribute gets a one-class model's class
            default = classes[0] if len(classes) == 1 else None
            data = via_to_coco(data, self.root, default_class=default)
        if not isinstance(data, dict) or not {"images", "annotations"} <= data.keys():
            raise MaskrayError(f"{path}: not a COCO dataset (needs 'images' and 'annotations')")
        self.bands = tuple(bands)
        self.augment = augment
        self.seed, self.epoch = seed, 0
        self.scale_jitter, self.photometric = scale_jitter, photometric
        model_id = {name: i + 1 for i, name in enumerate(classes)}
        label_of = {int(c["id"]): model_id[c["name"]] for c in data.get("categories", [])
                    if c.get("name") in model_id}
        if data["annotations"] and not label_of:
            names = sorted({c.get("name") for c in data.get("categories", [])})
            raise MaskrayError(f"{path}: no category ({', '.join(map(str, names))}) is a model "
                               f"class ({', '.join(classes)})")
        self.category_of = {label: cat for cat, label in label_of.items()}  # model id -> COCO id
        self.images = sorted(data["images"], key=lambda img: img["id"])
        if subset is not None:
            self.images = [self.images[i] for i in subset]
        self.annotations: dict[Any, list[tuple[int, Any]]] = {img["id"]: [] for img in self.images}
        for ann in data["annotations"]:
            label = label_of.get(int(ann["category_id"]))
            if label is not None and ann.get("segmentation") and ann["image_id"] in self.annotations:
                self.annotations[ann["image_id"]].append((label, ann["segmentation"]))
        # Ground truth of these images for COCOeval (validation): the model's classes only.
        self.gt = {"images": self.images,
                   "annotations": [a for a in data["annotations"] if a["image_id"] in
                                   self.annotations and int(a["category_id"]) in label_of],
                   "categories": [c for c in data.get("categories", [])
                                  if int(c["id"]) in label_of]}

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        img = self.images[index]
        image = read_image(self.root / img["file_name"], self.bands)
        height, width = image.shape[1:]
        labels, masks = [], []
        for label, seg in self.annotations[img["id"]]:
            m = decode_segmentation(seg, height, width)
            if m.any():
                labels.append(label)
                masks.append(m)
        mask_array = np.stack(masks) if masks else np.zeros((0, height, width), np.uint8)
        return self._item(index, image, mask_array, labels)

def collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """DataLoader collate for detection: lists, not stacked tensors (images differ in size)."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def read_image(path: Path, bands: Sequence[int]) -> np.ndarray:
    """The whole image, float32 (C, H, W) raw values of `bands` (1-based), any format GDAL reads."""
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                if max(bands) > src.count:
                    raise MaskrayError(f"{path}: has {src.count} band(s), the model reads bands "
                                       f"{list(bands)}")
                return src.read(list(bands)).astype(np.float32)
    except rasterio.errors.RasterioIOError as exc:
        raise MaskrayError(f"cannot read training image {path}: {exc}") from exc


def decode_segmentation(seg: Any, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) -> (H, W) uint8 mask."""
    rle = coco_rle(seg, height, width)
    if rle is None:
        return np.zeros((height, width), np.uint8)
    return mask_utils.decode(rle).astype(np.uint8)


def boxes_of(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) non-empty masks -> (N, 4) float32 tight xyxy boxes (half-open)."""
    return np.array([tight_bounds(m) for m in masks], np.float32).reshape(-1, 4)


def count_images(coco_json: str | Path) -> int:
    """Number of images a COCO or VIA JSON lists (what `subset` positions index)."""
    try:
        data = json.loads(Path(coco_json).read_text())
        return len(via_files(data)) if is_via(data) else len(data["images"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MaskrayError(f"cannot read training labels {coco_json}: {exc}") from exc


def split_indices(count: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) positions 0..count-1: a seeded random `fraction` (at least one image
    when fraction > 0 and count > 1) validates, the rest trains; both sorted."""
    if fraction <= 0 or count < 2:
        return list(range(count)), []
    n_val = min(count - 1, max(1, round(count * fraction)))
    order = np.random.default_rng(seed).permutation(count)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def band_statistics(chips: torch.utils.data.Dataset, max_images: int = 64
                    ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-band mean and standard deviation of the raw pixel values of up to `max_images`
    images spread over a training set (CocoChips or any dataset of the same (image, target)
    items, built without augmentation): the model's image_mean / image_std. A constant band
    gets std 1."""
    if len(chips) == 0:
        raise MaskrayError("no training images to measure band statistics on")
    picks = np.unique(np.linspace(0, len(chips) - 1, min(max_images, len(chips))).round())
    sums = sq = None
    pixels = 0
    for i in picks.astype(int):
        image = chips[int(i)][0].numpy().astype(np.float64)
        flat = image.reshape(image.shape[0], -1)
        sums = flat.sum(1) if sums is None else sums + flat.sum(1)
        sq = (flat ** 2).sum(1) if sq is None else sq + (flat ** 2).sum(1)
        pixels += flat.shape[1]
    mean = sums / pixels
    std = np.sqrt(np.maximum(sq / pixels - mean ** 2, 0))
    std[std < 1e-6] = 1.0
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
