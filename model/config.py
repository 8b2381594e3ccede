"""`ModelConfig`: everything needed to rebuild the same Mask R-CNN, and nothing else.

The knob names follow torchvision's `MaskRCNN` arguments, which users of Matterport's Mask R-CNN
also recognise (IMAGE_MIN_DIM -> min_size, RPN_ANCHOR_SCALES -> anchor_sizes, ...).

Pixel convention (Matterport): the model takes float32 *raw* band values, shape (C, H, W) with
C = len(bands), and normalises them itself with `image_mean` / `image_std`, given in raw pixel
units. For 3 bands the default is ImageNet's statistics for 8-bit RGB; any other band count must
name its own statistics, because no default could be right for, say, 16-bit NIR.

Every field type is one the config loader (pipeline/config.py) can set from YAML or `--set`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.errors import ConfigError

BACKBONES = ("resnet50_fpn", "resnet50_fpn_v2", "resnet18_fpn", "mobilenet_v3_fpn")
# train.cpu_precision / infer.cpu_precision (model/precision.py says what each does)
CPU_PRECISIONS = ("fp32", "bf16", "auto")
HEAD_NORMS = ("none", "group", "batch")


def check_cpu_precision(value: str) -> None:
    """ValueError unless `value` is one of CPU_PRECISIONS."""
    if value not in CPU_PRECISIONS:
        raise ValueError(f"cpu_precision must be one of {', '.join(CPU_PRECISIONS)}, "
                         f"not {value!r}")

# ImageNet statistics (torchvision's 0-1 values) times 255, i.e. for 8-bit RGB bands.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture, classes, input bands and inference knobs of one Mask R-CNN.

    backbone: one of BACKBONES.
    classes: foreground class names; class id i + 1 is classes[i], id 0 is background, so the
        model has len(classes) + 1 outputs.
    bands: 1-based raster band indexes read as input channels, in this order.
    image_mean, image_std: per input channel, raw pixel units; None means ImageNet x 255, which
        is only allowed for 3 bands.
    min_size, max_size: the shorter image side is scaled to min_size unless the longer one would
        then exceed max_size (torchvision's resize); ignored when resize is False.
    resize: False feeds images at their native size (tiles already at the training GSD).
    anchor_sizes: pixels. ResNet backbones: exactly one per FPN level (5: P2-P6). MobileNetV3 has
        3 coarse levels and uses every size on each of them (torchvision's choice).
    aspect_ratios: height / width of the anchors, used at every level.
    anchor_scales: multipliers of each level's anchor size, all used on that level (the
        RetinaNet / Detectron "scales per octave"; (1.0, 1.41) puts a second size halfway to the
        next level, so an object between two sizes has an anchor close to its own size).
    rpn_*_nms_top_n_*: proposals kept before / after the RPN's NMS, per image (per level before).
    rpn_nms_thresh: IoU threshold of the RPN's NMS.
    rpn_batch_size_per_image, box_batch_size_per_image: anchors / RoIs sampled per image for the
        training losses (smaller is much faster on CPU, see DESIGN.md).
    box_score_thresh, box_nms_thresh, box_detections_per_img: inference post-processing.
    mask_threshold: mask probability at or above which a pixel belongs to the instance; applied
        by whoever binarises the (N, 1, 28, 28) mask probabilities, not inside the model.
    fpn_channels: channels of every FPN level, hence of the RPN head and the RoI heads' input
        (torchvision: 256). Fewer make a from-scratch CPU model much cheaper (DESIGN.md).
    box_head_size: width of the box head's two fully connected layers (torchvision's
        TwoMLPHead representation_size, 1024); resnet50_fpn_v2 uses it for its one FC layer.
    mask_head_layers: output channels of each 3x3 convolution of the mask head, in order
        (torchvision's MaskRCNNHeads layers, 4 x 256); the 28 x 28 predictor follows the last.
    head_norm: normalisation after every convolution of the FPN and the mask head: "none"
        (torchvision's v1 heads), "group" (GroupNorm, 32 groups; what from-scratch detectors use,
        He et al. 2019, "Rethinking ImageNet Pre-training") or "batch" (BatchNorm2d).
        resnet50_fpn_v2 has its own batch norm and needs "none".
    trainable_backbone_layers: ResNet 0-5, MobileNetV3 0-6, counted from the last stage; None
        trains every layer.
    backbone_weights: path or URI of a state dict for the backbone alone (e.g. a torchvision
        ImageNet ResNet file); backbone_weights_sha256 is then required.
    """

    backbone: str = "resnet50_fpn"
    classes: tuple[str, ...] = ("object",)
    bands: tuple[int, ...] = (1, 2, 3)
    image_mean: tuple[float, ...] | None = None
    image_std: tuple[float, ...] | None = None
    min_size: int = 800
    max_size: int = 1333
    resize: bool = True
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    anchor_scales: tuple[float, ...] = (1.0,)
    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 512
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100
    mask_threshold: float = 0.5
    fpn_channels: int = 256
    box_head_size: int = 1024
    mask_head_layers: tuple[int, ...] = (256, 256, 256, 256)
    head_norm: str = "none"
    trainable_backbone_layers: int | None = None
    backbone_weights: str | None = None
    backbone_weights_sha256: str | None = None

    def __post_init__(self) -> None:
        # Tuples arrive as lists from JSON (bundle.json) or Python callers; keep the dataclass
        # hashable and comparable.
        for name in ("classes", "bands", "image_mean", "image_std", "anchor_sizes",
                     "aspect_ratios", "anchor_scales", "mask_head_layers"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        _validate(self)

    @property
    def num_classes(self) -> int:
        """Model outputs including background (class id 0)."""
        return len(self.classes) + 1

    @property
    def in_channels(self) -> int:
        return len(self.bands)

    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) per input channel in raw pixel units, defaults resolved."""
        if self.image_mean is None:
            return IMAGENET_MEAN, IMAGENET_STD
        assert self.image_std is not None  # _validate guarantees both or neither
        return self.image_mean, self.image_std


def _validate(cfg: ModelConfig) -> None:
    """Raise ConfigError naming the first bad `model.*` key."""
    if cfg.backbone not in BACKBONES:
        raise ConfigError(f"model.backbone {cfg.backbone!r} is not one of: {', '.join(BACKBONES)}")
    if not cfg.classes:
        raise ConfigError("model.classes must name at least one foreground class")
    if len(set(cfg.classes)) != len(cfg.classes) or any(not c for c in cfg.classes):
        raise ConfigError(f"model.classes must be distinct non-empty names, "
                          f"got {list(cfg.classes)}")
    if not cfg.bands or any(b < 1 for b in cfg.bands):
        raise ConfigError(f"model.bands must be 1-based band indexes, got {list(cfg.bands)}")
    _validate_normalization(cfg)
    _validate_positive(cfg, ("min_size", "max_size", "rpn_pre_nms_top_n_train",
                             "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_train",
                             "rpn_post_nms_top_n_test", "rpn_batch_size_per_image",
                             "box_batch_size_per_image", "box_detections_per_img",
                             "fpn_channels", "box_head_size"))
    if not cfg.mask_head_layers or any(c < 1 for c in cfg.mask_head_layers):
        raise ConfigError(f"model.mask_head_layers must be one or more positive channel counts, "
                          f"got {list(cfg.mask_head_layers)}")
    if cfg.min_size > cfg.max_size:
        raise ConfigError(f"model.min_size ({cfg.min_size}) must not exceed model.max_size "
                          f"({cfg.max_size})")
    if not cfg.anchor_sizes or any(s <= 0 for s in cfg.anchor_sizes):
        raise ConfigError(f"model.anchor_sizes must be positive pixels, "
                          f"got {list(cfg.anchor_sizes)}")
    if cfg.backbone != "mobilenet_v3_fpn" and len(cfg.anchor_sizes) != 5:
        raise ConfigError(f"model.anchor_sizes needs one size per FPN level (5) for "
                          f"{cfg.backbone}, got {len(cfg.anchor_sizes)}")
    if not cfg.aspect_ratios or any(r <= 0 for r in cfg.aspect_ratios):
        raise ConfigError(f"model.aspect_ratios must be positive, got {list(cfg.aspect_ratios)}")
    if not cfg.anchor_scales or any(k <= 0 for k in cfg.anchor_scales):
        raise ConfigError(f"model.anchor_scales must be positive, got {list(cfg.anchor_scales)}")
    for name in ("rpn_nms_thresh", "box_score_thresh", "box_nms_thresh", "mask_threshold"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ConfigError(f"model.{name} must be in [0, 1], got {getattr(cfg, name)}")
    if cfg.head_norm not in HEAD_NORMS:
        raise ConfigError(f"model.head_norm must be one of {', '.join(HEAD_NORMS)}, "
                          f"got {cfg.head_norm!r}")
    if cfg.head_norm != "none" and cfg.backbone == "resnet50_fpn_v2":
        raise ConfigError("model.head_norm must be none for resnet50_fpn_v2 (its FPN and heads "
                          "have their own batch norm)")
    top = 6 if cfg.backbone == "mobilenet_v3_fpn" else 5
    layers = cfg.trainable_backbone_layers
    if layers is not None and not 0 <= layers <= top:
        raise ConfigError(f"model.trainable_backbone_layers must be in [0, {top}] for "
                          f"{cfg.backbone}, got {layers}")
    sha = cfg.backbone_weights_sha256
    if sha is not None and not _SHA256.match(sha):
        raise ConfigError("model.backbone_weights_sha256 must be 64 lowercase hex digits")


def _validate_normalization(cfg: ModelConfig) -> None:
    mean, std = cfg.image_mean, cfg.image_std
    if (mean is None) != (std is None):
        missing = "model.image_std" if std is None else "model.image_mean"
        raise ConfigError(f"{missing} must be given together with the other")
    if mean is None:
        if len(cfg.bands) != 3:
            raise ConfigError(f"model.image_mean and model.image_std must be given for "
                              f"{len(cfg.bands)} bands (the default is ImageNet's, for 3 bands)")
        return
    assert std is not None
    if len(mean) != len(cfg.bands) or len(std) != len(cfg.bands):
        raise ConfigError(f"model.image_mean ({len(mean)} values) and model.image_std "
                          f"({len(std)} values) need one value per band ({len(cfg.bands)})")
    if any(s <= 0 for s in std):
        raise ConfigError(f"model.image_std must be positive, got {list(std)}")


def _validate_positive(cfg: ModelConfig, names: tuple[str, ...]) -> None:
    for name in names:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"model.{name} must be >= 1, got {getattr(cfg, name)}")
