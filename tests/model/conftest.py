"""Tiny model configs and batches: 96 px images, small RPN/RoI samples, so CPU runs stay fast."""

import pytest
import torch

from model.config import ModelConfig


def make_cfg(backbone: str = "mobilenet_v3_fpn", **overrides) -> ModelConfig:
    """A ModelConfig sized for 96 px test images; score threshold 0 so random weights detect."""
    values = dict(
        backbone=backbone, classes=("building", "tree"), min_size=96, max_size=96,
        rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=50,
        rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50,
        rpn_batch_size_per_image=32, box_batch_size_per_image=32,
        box_score_thresh=0.0, box_detections_per_img=10,
    )
    values.update(overrides)
    return ModelConfig(**values)


def make_batch(channels: int = 3, size: int = 96, seed: int = 0):
    """Two (C, size, size) float32 raw-value images: one with two objects, one with none.

    Returns (images, targets) in torchvision's training format.
    """
    gen = torch.Generator().manual_seed(seed)
    images = [torch.rand(channels, size, size, generator=gen) * 255 for _ in range(2)]
    masks = torch.zeros(2, size, size, dtype=torch.uint8)
    masks[0, 10:40, 10:50] = 1
    masks[1, 50:90, 60:80] = 1
    targets = [
        {"boxes": torch.tensor([[10.0, 10.0, 50.0, 40.0], [60.0, 50.0, 80.0, 90.0]]),
         "labels": torch.tensor([1, 2]), "masks": masks},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
         "masks": torch.zeros(0, size, size, dtype=torch.uint8)},
    ]
    return images, targets


@pytest.fixture
def tiny_cfg():
    return make_cfg


@pytest.fixture
def tiny_batch():
    return make_batch
