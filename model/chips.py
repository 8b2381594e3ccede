"""Training images with instance targets, from a COCO JSON (polygon or RLE masks).

`CocoChips[i]` -> (image, target), what torchvision's `MaskRCNN(images, targets)` takes:
    image:  float32 (C, H, W) raw band values (C = len(bands); the model normalises them itself)
    target: boxes (N, 4) float32 xyxy pixels, labels (N,) int64 in 1..K (the MODEL's class ids,
            matched to COCO categories by name), masks (N, H, W) uint8
An image with no objects gives N = 0 (torchvision trains on it as a negative). Annotations of a
category the model does not have are left out; an annotation with an empty mask too.

Augmentation for overhead imagery (no "up"): random horizontal and vertical flips and 90-degree
rotations, applied to the image and its masks together, boxes recomputed from the masks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils

from pipeline.errors import MaskrayError
from pipeline.labels import coco_rle
from pipeline.rle import tight_bounds


class CocoChips(torch.utils.data.Dataset):
    """Images listed in a COCO JSON, read whole (chips, not scenes) with rasterio."""

    def __init__(self, coco_json: str | Path, classes: Sequence[str], bands: Sequence[int],
                 root: str | Path | None = None, augment: bool = False, seed: int = 0) -> None:
        path = Path(coco_json)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise MaskrayError(f"cannot read training labels {path}: {exc}") from exc
        if not isinstance(data, dict) or not {"images", "annotations"} <= data.keys():
            raise MaskrayError(f"{path}: not a COCO dataset (needs 'images' and 'annotations')")
        self.root = Path(root) if root else path.parent
        self.bands = tuple(bands)
        self.augment = augment
        self.rng = np.random.default_rng(seed)
        model_id = {name: i + 1 for i, name in enumerate(classes)}
        label_of = {int(c["id"]): model_id[c["name"]] for c in data.get("categories", [])
                    if c.get("name") in model_id}
        if data["annotations"] and not label_of:
            names = sorted({c.get("name") for c in data.get("categories", [])})
            raise MaskrayError(f"{path}: no category ({', '.join(map(str, names))}) is a model "
                               f"class ({', '.join(classes)})")
        self.images = sorted(data["images"], key=lambda img: img["id"])
        self.annotations: dict[Any, list[tuple[int, Any]]] = {img["id"]: [] for img in self.images}
        for ann in data["annotations"]:
            label = label_of.get(int(ann["category_id"]))
            if label is not None and ann.get("segmentation") and ann["image_id"] in self.annotations:
                self.annotations[ann["image_id"]].append((label, ann["segmentation"]))

    def __len__(self) -> int:
        return len(self.images)

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
        if self.augment:
            image, mask_array = self._augment(image, mask_array)
        return torch.from_numpy(np.ascontiguousarray(image)), {
            "boxes": torch.from_numpy(boxes_of(mask_array)),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": torch.from_numpy(np.ascontiguousarray(mask_array)),
        }

    def _augment(self, image: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.rng.random() < 0.5:
            image, masks = image[:, :, ::-1], masks[:, :, ::-1]
        if self.rng.random() < 0.5:
            image, masks = image[:, ::-1, :], masks[:, ::-1, :]
        k = int(self.rng.integers(4))
        if k and image.shape[1] == image.shape[2]:  # square chips keep their size when rotated
            image, masks = np.rot90(image, k, axes=(1, 2)), np.rot90(masks, k, axes=(1, 2))
        return image, masks


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
