"""The model's own pre/post-processing: normalise, optionally resize, and map outputs back.

torchvision's `GeneralizedRCNNTransform` always resizes in eval mode and always pastes the
(N, 1, 28, 28) RoI mask probabilities into full (N, 1, H, W) image-sized tensors. For a 1024 px
tile with 100 detections that is 400 MB of float32 per image, only for the inference actor to
crop each mask back to its box. `MaskrayTransform` can skip both.
"""

from __future__ import annotations

from torch import Tensor
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

from model.config import ModelConfig


class MaskrayTransform(GeneralizedRCNNTransform):
    """`GeneralizedRCNNTransform` with two switches.

    resize=False: images and targets keep their native size in training and eval (torchvision's
        `_skip_resize` only skips in training). They are still zero-padded to a multiple of 32
        when batched, which does not change `image_sizes`.
    paste_masks=False: in eval, `boxes` are rescaled to the original image frame (x right, y down,
        pixels, float32 (N, 4) xyxy) but `masks` stay the RoI head's (N, 1, 28, 28) float32
        probabilities, each covering its own box; paste them box-locally downstream.
    """

    def __init__(self, min_size: int, max_size: int, image_mean: list[float],
                 image_std: list[float], resize: bool = True, paste_masks: bool = True) -> None:
        super().__init__(min_size, max_size, image_mean, image_std)
        self.resize_images = resize
        self.paste_masks = paste_masks

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None,
               ) -> tuple[Tensor, dict[str, Tensor] | None]:
        if not self.resize_images:
            return image, target
        return super().resize(image, target)

    def postprocess(self, result: list[dict[str, Tensor]], image_shapes: list[tuple[int, int]],
                    original_image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        if self.training or self.paste_masks:
            return super().postprocess(result, image_shapes, original_image_sizes)
        for pred, size, original in zip(result, image_shapes, original_image_sizes):
            pred["boxes"] = resize_boxes(pred["boxes"], size, original)
        return result

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(mean={self.image_mean}, std={self.image_std}, "
                f"resize={self.resize_images} (min_size={self.min_size}, "
                f"max_size={self.max_size}), paste_masks={self.paste_masks})")


def build_transform(cfg: ModelConfig, paste_masks: bool = True) -> MaskrayTransform:
    """The transform for `cfg`: raw-unit mean/std per band, cfg's resize policy."""
    mean, std = cfg.normalization()
    return MaskrayTransform(cfg.min_size, cfg.max_size, list(mean), list(std),
                            resize=cfg.resize, paste_masks=paste_masks)
