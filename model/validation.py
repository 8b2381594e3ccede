"""Validation during training, ray-free: the detections of a validation shard as COCO results,
the validation losses, and the COCO metrics of the gathered results.

`jobs/train.py` runs `validate_shard` on every worker over its own share of the validation images,
gathers the `ShardResult`s on rank 0 and turns them into one flat dict with `epoch_metrics`:
    val_loss, val_loss_<name> (the five losses), segm_AP, segm_AP50, ... , bbox_AP, ...,
    segm_per_class {class name: AP or None}
`segm_AP` is what Ray Train's CheckpointConfig ranks checkpoints by.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import nn

from model.chips import CocoChips
from model.evaluate import coco_metrics


@dataclass
class ShardResult:
    """What one worker found on its share of the validation images.

    results: COCO results, image ids and category ids of the validation JSON; `segmentation` a
        compressed full-chip RLE (counts as str), `bbox` xywh pixels.
    loss_sums: per loss name, summed over the shard's images; images: how many.
    """

    results: list[dict[str, Any]] = field(default_factory=list)
    loss_sums: dict[str, float] = field(default_factory=dict)
    images: int = 0


def shard_indices(count: int, rank: int, world: int) -> list[int]:
    """Indices 0..count-1 of worker `rank` of `world`: every image on exactly one worker (a
    DistributedSampler would pad with repeats, which would count twice in COCOeval)."""
    return list(range(rank, count, world))


@torch.no_grad()
def validate_shard(model: nn.Module, dataset: CocoChips, indices: Sequence[int],
                   device: torch.device, batch_size: int = 2, mask_threshold: float = 0.5
                   ) -> ShardResult:
    """Detections (eval mode) and losses (train-mode forward, batch norm frozen) of `indices`.

    The model is left in train mode. `model` may be DDP-wrapped; its `.module` is used so that
    no collective runs (workers may hold different numbers of images).
    """
    net = getattr(model, "module", model)
    out = ShardResult()
    for start in range(0, len(indices), batch_size):
        batch = [dataset[i] for i in indices[start:start + batch_size]]
        images = [im.to(device) for im, _ in batch]
        targets = [{k: v.to(device) for k, v in t.items()} for _, t in batch]
        net.eval()
        for index, det in zip(indices[start:start + batch_size], net(images)):
            out.results.extend(_coco_results(det, dataset, index, mask_threshold))
        _train_mode_frozen_norm(net)
        for name, value in net(images, targets).items():
            out.loss_sums[name] = out.loss_sums.get(name, 0.0) + float(value) * len(images)
        out.images += len(images)
    net.train()
    return out


def epoch_metrics(shards: Sequence[ShardResult], gt: dict[str, Any]) -> dict[str, Any]:
    """The gathered shards -> the flat validation metrics (see the module docstring)."""
    images = sum(s.images for s in shards)
    metrics: dict[str, Any] = {}
    sums: dict[str, float] = {}
    for s in shards:
        for k, v in s.loss_sums.items():
            sums[k] = sums.get(k, 0.0) + v
    for k, v in sums.items():
        metrics[f"val_{k}"] = v / max(images, 1)
    metrics["val_loss"] = sum(sums.values()) / max(images, 1)
    results = [r for s in shards for r in s.results]
    for iou_type in ("segm", "bbox"):
        m = coco_metrics(gt, results, iou_type)
        metrics.update({f"{iou_type}_{k}": v for k, v in m.metrics.items()})
        metrics[f"{iou_type}_per_class"] = m.per_class
    metrics["val_images"] = images
    metrics["val_detections"] = len(results)
    return metrics


def _coco_results(det: dict[str, torch.Tensor], dataset: CocoChips, index: int,
                  mask_threshold: float) -> list[dict[str, Any]]:
    image_id = dataset.images[index]["id"]
    masks = (det["masks"][:, 0] >= mask_threshold).cpu().numpy().astype(np.uint8)
    boxes = det["boxes"].cpu().numpy()
    results = []
    for mask, box, label, score in zip(masks, boxes, det["labels"].tolist(),
                                       det["scores"].tolist()):
        rle = mask_utils.encode(np.asfortranarray(mask))
        rle["counts"] = rle["counts"].decode("ascii")
        x0, y0, x1, y1 = (float(v) for v in box)
        results.append({"image_id": image_id, "category_id": dataset.category_of[label],
                        "score": float(score), "segmentation": rle,
                        "bbox": [x0, y0, x1 - x0, y1 - y0]})
    return results


def _train_mode_frozen_norm(model: nn.Module) -> None:
    """Train mode (torchvision returns losses only then) without updating batch-norm statistics
    with validation images."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
