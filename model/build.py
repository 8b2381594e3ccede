"""Build torchvision Mask R-CNN from a `ModelConfig`: any backbone, class count and band count.

Nothing here downloads: every torchvision constructor gets `weights=None`. Pretrained weights
enter only through `ModelConfig.backbone_weights` (a file the user names, sha256-checked) or a
model bundle (model/bundle.py).

The FPN extractors `_resnet_fpn_extractor` / `_mobilenet_extractor` are private torchvision
helpers; they are what torchvision's own `maskrcnn_*` builders use, and torchvision is pinned
(pyproject.toml). tests/model/test_build.py builds every backbone, so an upgrade that moves them
fails loudly there.
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import Callable

from torch import Tensor, nn
from torchvision.models import mobilenet_v3_large, resnet18, resnet50
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import _mobilenet_extractor, _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import (FastRCNNConvFCHead, FastRCNNPredictor,
                                                      TwoMLPHead)
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.misc import FrozenBatchNorm2d

from model.config import BACKBONES, ModelConfig
from model.precision import float32_box_deltas
from model.transform import build_transform
from model.weights import check_sha256, load_state_dict_bytes, read_bytes
from pipeline.errors import BundleError, ConfigError

log = logging.getLogger(__name__)

# Where each backbone's first convolution sits in the detection model's state dict; bundles read
# the band count from it.
FIRST_CONV_KEYS = {
    "resnet50_fpn": "backbone.body.conv1.weight",
    "resnet50_fpn_v2": "backbone.body.conv1.weight",
    "resnet18_fpn": "backbone.body.conv1.weight",
    "mobilenet_v3_fpn": "backbone.body.0.0.weight",
}


def build_maskrcnn(cfg: ModelConfig, paste_masks: bool = True, *,
                   load_backbone_weights: bool = True) -> MaskRCNN:
    """A randomly initialised torchvision `MaskRCNN` for `cfg` (train mode, CPU).

    Input: list of float32 (C, H, W) tensors of raw band values, C = len(cfg.bands).
    Train mode: `model(images, targets)` -> dict of the five losses (loss_objectness,
        loss_rpn_box_reg, loss_classifier, loss_box_reg, loss_mask); targets hold boxes
        (N, 4) float32 xyxy pixels, labels (N,) int64 in 1..len(classes), masks (N, H, W) uint8.
    Eval mode: `model(images)` -> per image {boxes (N, 4) float32 xyxy in the input image's
        pixel frame, labels (N,) int64, scores (N,) float32, masks}: masks are (N, 1, H, W)
        probabilities pasted into the image when paste_masks, else the RoI head's (N, 1, 28, 28)
        probabilities, each spanning its own box (see model/transform.py).

    load_backbone_weights: read cfg.backbone_weights when set. A bundle passes False: its full
        state dict replaces the backbone anyway, and the file may not exist where it runs.
    """
    backbone, featmaps = _build_backbone(cfg)
    kwargs = dict(
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        rpn_nms_thresh=cfg.rpn_nms_thresh,
        rpn_batch_size_per_image=cfg.rpn_batch_size_per_image,
        box_batch_size_per_image=cfg.box_batch_size_per_image,
        box_score_thresh=cfg.box_score_thresh,
        box_nms_thresh=cfg.box_nms_thresh,
        box_detections_per_img=cfg.box_detections_per_img,
    )
    anchors = _build_anchor_generator(cfg, len(featmaps) + 1)  # + the FPN's extra "pool" level
    num_anchors = anchors.num_anchors_per_location()[0]
    box_pool = MultiScaleRoIAlign(featmap_names=featmaps, output_size=7, sampling_ratio=2)
    mask_pool = MultiScaleRoIAlign(featmap_names=featmaps, output_size=14, sampling_ratio=2)
    channels = backbone.out_channels
    mask_layers = list(cfg.mask_head_layers)
    if cfg.backbone == "resnet50_fpn_v2":
        # The "v2" recipe (Li et al. 2021, torchvision's maskrcnn_resnet50_fpn_v2): deeper RPN
        # head, conv box head and mask head, all with batch norm.
        kwargs.update(
            rpn_head=RPNHead(channels, num_anchors, conv_depth=2),
            box_head=FastRCNNConvFCHead((channels, 7, 7), [256, 256, 256, 256],
                                        [cfg.box_head_size], norm_layer=nn.BatchNorm2d),
            mask_head=MaskRCNNHeads(channels, mask_layers, 1, norm_layer=nn.BatchNorm2d),
        )
    else:
        # torchvision's v1 heads, sized by the config (its defaults: 1024 and 4 x 256).
        kwargs.update(
            box_head=TwoMLPHead(channels * 7 * 7, cfg.box_head_size),
            mask_head=MaskRCNNHeads(channels, mask_layers, 1, norm_layer=head_norm_layer(cfg)),
        )
    kwargs.update(
        box_predictor=FastRCNNPredictor(cfg.box_head_size, cfg.num_classes),
        mask_predictor=MaskRCNNPredictor(mask_layers[-1], mask_layers[-1], cfg.num_classes),
    )
    model = MaskRCNN(backbone, rpn_anchor_generator=anchors,
                     box_roi_pool=box_pool, mask_roi_pool=mask_pool,
                     min_size=cfg.min_size, max_size=cfg.max_size, **kwargs)
    model.transform = build_transform(cfg, paste_masks=paste_masks)
    float32_box_deltas(model)  # box coordinates stay float32 under bf16 / fp16 autocast
    if load_backbone_weights and cfg.backbone_weights is not None:
        load_backbone_file(model, cfg)
    return model


def _build_backbone(cfg: ModelConfig) -> tuple[nn.Module, list[str]]:
    """(BackboneWithFPN with cfg.fpn_channels outputs, names of the feature maps the RoI heads
    pool from)."""
    backbone, featmaps = _build_backbone_256(cfg)
    if cfg.fpn_channels != backbone.out_channels or cfg.head_norm != "none":
        # torchvision's extractors fix 256 channels and no norm (v1); rebuild the FPN from the
        # same inputs.
        fpn = backbone.fpn
        inputs = [block[0].in_channels for block in fpn.inner_blocks]
        norm = nn.BatchNorm2d if isinstance(fpn.inner_blocks[0][-1], nn.BatchNorm2d) else None
        backbone.fpn = FeaturePyramidNetwork(inputs, cfg.fpn_channels,
                                             extra_blocks=fpn.extra_blocks,
                                             norm_layer=head_norm_layer(cfg) or norm)
        backbone.out_channels = cfg.fpn_channels
    return backbone, featmaps


def head_norm_layer(cfg: ModelConfig) -> Callable[[int], nn.Module] | None:
    """The norm after each FPN / mask-head convolution for cfg.head_norm (None: no norm)."""
    if cfg.head_norm == "group":
        return lambda channels: nn.GroupNorm(math.gcd(32, channels), channels)
    if cfg.head_norm == "batch":
        return nn.BatchNorm2d
    return None


def _build_backbone_256(cfg: ModelConfig) -> tuple[nn.Module, list[str]]:
    """torchvision's BackboneWithFPN (256 channels) for cfg.backbone, its feature map names."""
    pretrained = cfg.backbone_weights is not None
    # Frozen BN for a pretrained backbone, as torchvision does: detection batches are too small
    # to re-estimate ImageNet statistics. From scratch there is nothing to keep, so BN trains.
    norm = FrozenBatchNorm2d if pretrained else nn.BatchNorm2d
    if cfg.backbone == "mobilenet_v3_fpn":
        net = mobilenet_v3_large(weights=None, norm_layer=norm)
        _replace_first_conv(net.features[0], "0", cfg.in_channels)
        layers = 6 if cfg.trainable_backbone_layers is None else cfg.trainable_backbone_layers
        # Two maps (strides 16 and 32) plus the FPN's max-pool level.
        return _mobilenet_extractor(net, True, layers), ["0", "1"]
    if cfg.backbone == "resnet50_fpn":
        net = resnet50(weights=None, norm_layer=norm)
        fpn_norm = None
    elif cfg.backbone == "resnet50_fpn_v2":
        net = resnet50(weights=None)  # v2 keeps trainable BatchNorm2d, as torchvision's v2 does
        fpn_norm = nn.BatchNorm2d
    elif cfg.backbone == "resnet18_fpn":
        net = resnet18(weights=None, norm_layer=norm)
        fpn_norm = None
    else:
        raise ConfigError(f"model.backbone {cfg.backbone!r} is not one of: {', '.join(BACKBONES)}")
    _replace_first_conv(net, "conv1", cfg.in_channels)
    layers = 5 if cfg.trainable_backbone_layers is None else cfg.trainable_backbone_layers
    return _resnet_fpn_extractor(net, layers, norm_layer=fpn_norm), ["0", "1", "2", "3"]


def _replace_first_conv(parent: nn.Module, name: str, in_channels: int) -> None:
    """Swap `parent.<name>` (a 3-channel Conv2d) for one taking `in_channels`, same geometry."""
    old = getattr(parent, name)
    if old.in_channels == in_channels:
        return
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                    bias=old.bias is not None)
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    setattr(parent, name, new)


def _build_anchor_generator(cfg: ModelConfig, levels: int) -> AnchorGenerator:
    """One anchor size per level for ResNet-FPN (P2..P6), times each of cfg.anchor_scales;
    every size on every MobileNet level."""
    ratios = (tuple(float(r) for r in cfg.aspect_ratios),) * levels
    if cfg.backbone == "mobilenet_v3_fpn":
        every = tuple(s * k for s in cfg.anchor_sizes for k in cfg.anchor_scales)
        return AnchorGenerator((every,) * levels, ratios)
    if len(cfg.anchor_sizes) != levels:
        raise ConfigError(f"model.anchor_sizes needs one size per FPN level ({levels}) for "
                          f"{cfg.backbone}, got {len(cfg.anchor_sizes)}")
    return AnchorGenerator(tuple(tuple(s * k for k in cfg.anchor_scales)
                                 for s in cfg.anchor_sizes), ratios)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters); buffers such as BN statistics not counted."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


# ----------------------------------------------------------------------------- backbone weights


def load_backbone_file(model: MaskRCNN, cfg: ModelConfig) -> None:
    """Initialise `model.backbone.body` from cfg.backbone_weights (checked against its sha256).

    Accepts a classification state dict (torchvision `resnet18-*.pth`, `mobilenet_v3_large-*.pth`;
    the classifier keys are ignored) or a detection one (`backbone.body.*`). When the file was
    trained on 3 bands and the model takes another count, the first conv is adapted: summed over
    RGB for 1 band, else RGB repeated and scaled by 3 / C so activations keep their magnitude.
    """
    path = cfg.backbone_weights
    assert path is not None
    data = read_bytes(path)
    if cfg.backbone_weights_sha256 is None:
        actual = hashlib.sha256(data).hexdigest()
        raise ConfigError(f"model.backbone_weights_sha256 is required with model.backbone_weights "
                          f"(the sha256 of {path} is {actual})")
    check_sha256(data, cfg.backbone_weights_sha256, path)
    source = _strip_prefixes(load_state_dict_bytes(data, path), cfg.backbone)
    body = model.backbone.body
    target = body.state_dict()
    missing = [k for k in target if k not in source and not k.endswith("num_batches_tracked")]
    if missing:
        raise BundleError(f"backbone weights {path} do not fit {cfg.backbone}: {len(missing)} "
                          f"tensors missing, e.g. {missing[0]!r}")
    merged: dict[str, Tensor] = {}
    first = FIRST_CONV_KEYS[cfg.backbone].removeprefix("backbone.body.")
    for key, want in target.items():
        got = source.get(key, want)
        if key == first and got.shape[1] != want.shape[1]:
            got = adapt_first_conv(got, want.shape[1])
            log.info("backbone weights: first conv adapted from %d to %d bands",
                     source[key].shape[1], want.shape[1])
        if got.shape != want.shape:
            raise BundleError(f"backbone weights {path} do not fit {cfg.backbone}: {key!r} has "
                              f"shape {tuple(got.shape)}, the model needs {tuple(want.shape)}")
        merged[key] = got
    body.load_state_dict(merged, strict=True)
    log.info("backbone initialised from %s", path)


def adapt_first_conv(weight: Tensor, in_channels: int) -> Tensor:
    """(O, 3, k, k) RGB conv weights -> (O, in_channels, k, k), keeping the response scale."""
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = math.ceil(in_channels / weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)


def _strip_prefixes(state: dict[str, Tensor], backbone: str) -> dict[str, Tensor]:
    """Map classification / detection / DDP key names onto `backbone.body` names."""
    prefixes = ["module.", "backbone.body.", "body."]
    if backbone == "mobilenet_v3_fpn":
        prefixes.append("features.")  # the body *is* mobilenet's `features` Sequential
    out = {}
    for key, value in state.items():
        for prefix in prefixes:
            key = key.removeprefix(prefix)
        out[key] = value
    return out
