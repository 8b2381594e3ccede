"""model/config.py, model/build.py, model/transform.py, model/weights.py on CPU at 96 px."""

import argparse
import dataclasses
import hashlib
import pickle

import pytest
import torch
from torch import nn
from torchvision.models import resnet18
from torchvision.models.detection import maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.ops.misc import FrozenBatchNorm2d

from model.build import adapt_first_conv, build_maskrcnn
from model.config import IMAGENET_MEAN, ModelConfig
from model.weights import file_sha256, load_state_dict_file
from pipeline.errors import BundleError, ConfigError

LOSSES = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"}


def _check_losses(losses):
    assert set(losses) == LOSSES
    for name, value in losses.items():
        assert value.ndim == 0 and torch.isfinite(value), name


def _check_eval(outputs, n_images, height, width, mask_size=None):
    assert len(outputs) == n_images
    for out in outputs:
        n = out["boxes"].shape[0]
        assert out["boxes"].shape == (n, 4) and out["boxes"].dtype == torch.float32
        assert out["labels"].shape == (n,) and out["labels"].dtype == torch.int64
        assert out["scores"].shape == (n,)
        if n:
            assert out["labels"].min() >= 1
            assert out["boxes"][:, 0::2].max() <= width and out["boxes"][:, 1::2].max() <= height
        h, w = mask_size or (height, width)
        assert out["masks"].shape == (n, 1, h, w)


# ----------------------------------------------------------------------------- every backbone


@pytest.mark.parametrize("backbone", ["resnet18_fpn", "mobilenet_v3_fpn"])
def test_light_backbone_trains_and_predicts(backbone, tiny_cfg, tiny_batch):
    torch.manual_seed(0)
    model = build_maskrcnn(tiny_cfg(backbone))
    images, targets = tiny_batch()  # the second image has no objects
    _check_losses(model(images, targets))
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    _check_eval(outputs, 2, 96, 96)
    assert outputs[0]["boxes"].shape[0] > 0  # score threshold 0: random weights still detect


@pytest.mark.parametrize("backbone", ["resnet50_fpn", "resnet50_fpn_v2"])
def test_resnet50_backbones_train(backbone, tiny_cfg, tiny_batch):
    model = build_maskrcnn(tiny_cfg(backbone))
    images, targets = tiny_batch()
    _check_losses(model(images, targets))
    is_v2 = isinstance(model.roi_heads.box_head, FastRCNNConvFCHead)
    assert is_v2 == (backbone == "resnet50_fpn_v2")
    assert len(model.rpn.head.conv) == (2 if is_v2 else 1)
    assert model.roi_heads.box_predictor.cls_score.out_features == 3


@pytest.mark.parametrize("backbone,builder", [
    ("resnet50_fpn", maskrcnn_resnet50_fpn), ("resnet50_fpn_v2", maskrcnn_resnet50_fpn_v2)])
def test_default_head_sizes_are_torchvisions(backbone, builder):
    """Default fpn_channels / box_head_size / mask_head_layers give torchvision's own model:
    same parameter names and shapes as its builder, so its checkpoints load."""
    ours = build_maskrcnn(ModelConfig(backbone=backbone, classes=("a", "b"))).state_dict()
    theirs = builder(weights=None, weights_backbone=None, num_classes=3).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


@pytest.mark.parametrize("backbone", ["resnet18_fpn", "mobilenet_v3_fpn", "resnet50_fpn_v2"])
def test_sized_heads_train_predict_and_shrink(backbone, tiny_cfg, tiny_batch):
    cfg = tiny_cfg(backbone, fpn_channels=64, box_head_size=128, mask_head_layers=[64, 32])
    model = build_maskrcnn(cfg)
    assert cfg.mask_head_layers == (64, 32)
    assert model.backbone.out_channels == 64
    assert all(block[0].out_channels == 64 for block in model.backbone.fpn.layer_blocks)
    assert model.roi_heads.box_predictor.cls_score.in_features == 128
    convs = [m for m in model.roi_heads.mask_head.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(64, 64), (64, 32)]
    assert model.roi_heads.mask_predictor.conv5_mask.in_channels == 32
    images, targets = tiny_batch()
    _check_losses(model(images, targets))
    model.eval()
    with torch.no_grad():
        _check_eval(model(images), 2, 96, 96)
    full = sum(p.numel() for p in build_maskrcnn(tiny_cfg(backbone)).parameters())
    assert sum(p.numel() for p in model.parameters()) < full


@pytest.mark.parametrize("backbone", ["resnet18_fpn", "mobilenet_v3_fpn"])
def test_anchor_scales_add_sizes_on_every_level(backbone, tiny_cfg, tiny_batch):
    cfg = tiny_cfg(backbone, anchor_scales=[1.0, 1.5])
    model = build_maskrcnn(cfg)
    sizes = model.rpn.anchor_generator.sizes
    if backbone == "resnet18_fpn":  # one size per level, times each scale
        assert sizes == tuple((s * 1.0, s * 1.5) for s in cfg.anchor_sizes)
    else:  # every size on every level
        assert all(len(level) == 2 * len(cfg.anchor_sizes) for level in sizes)
    per_location = len(sizes[0]) * len(cfg.aspect_ratios)
    assert model.rpn.head.cls_logits.out_channels == per_location
    images, targets = tiny_batch()
    _check_losses(model(images, targets))


@pytest.mark.parametrize("norm,layer", [("group", nn.GroupNorm), ("batch", nn.BatchNorm2d)])
def test_head_norm_follows_every_fpn_and_mask_head_conv(norm, layer, tiny_cfg, tiny_batch):
    cfg = tiny_cfg("resnet18_fpn", fpn_channels=64, mask_head_layers=[64, 48], head_norm=norm)
    model = build_maskrcnn(cfg)
    for blocks in (model.backbone.fpn.inner_blocks, model.backbone.fpn.layer_blocks,
                   model.roi_heads.mask_head):
        for block in blocks:
            assert isinstance(block[1], layer) and block[0].bias is None
    if norm == "group":  # 32 groups where the channels allow it
        assert [b[1].num_groups for b in model.roi_heads.mask_head] == [32, 16]
    images, targets = tiny_batch()
    _check_losses(model(images, targets))
    plain = build_maskrcnn(tiny_cfg("resnet18_fpn", fpn_channels=64, mask_head_layers=[64, 48]))
    assert not any(isinstance(m, (nn.GroupNorm, nn.BatchNorm2d))
                   for m in [*plain.backbone.fpn.modules(), *plain.roi_heads.modules()])


@pytest.mark.parametrize("backbone,bands",
                         [("resnet18_fpn", (1,)), ("mobilenet_v3_fpn", (1, 2, 3, 4))])
def test_band_counts_other_than_three(backbone, bands, tiny_cfg, tiny_batch):
    n = len(bands)
    cfg = tiny_cfg(backbone, bands=bands, image_mean=(100.0,) * n, image_std=(50.0,) * n)
    model = build_maskrcnn(cfg)
    first = model.backbone.body.conv1 if backbone == "resnet18_fpn" else model.backbone.body["0"][0]
    assert first.in_channels == n
    images, targets = tiny_batch(channels=n)
    _check_losses(model(images, targets))
    model.eval()
    with torch.no_grad():
        _check_eval(model(images), 2, 96, 96)


def test_mobilenet_anchors_match_its_feature_maps(tiny_cfg):
    model = build_maskrcnn(tiny_cfg("mobilenet_v3_fpn", anchor_sizes=(16, 32, 64)))
    with torch.no_grad():
        features = model.backbone(torch.rand(1, 3, 96, 96))
    assert len(model.rpn.anchor_generator.sizes) == len(features) == 3
    assert model.rpn.anchor_generator.sizes[0] == (16, 32, 64)


def test_trainable_backbone_layers_freezes_early_stages(tiny_cfg):
    model = build_maskrcnn(tiny_cfg("resnet18_fpn", trainable_backbone_layers=2))
    body = model.backbone.body
    assert not body.conv1.weight.requires_grad and not body.layer2[0].conv1.weight.requires_grad
    assert body.layer3[0].conv1.weight.requires_grad and body.layer4[0].conv1.weight.requires_grad


# ----------------------------------------------------------------------------- transform


def test_unpasted_masks_keep_detections_and_box_frame(tiny_cfg):
    cfg = tiny_cfg("mobilenet_v3_fpn")
    torch.manual_seed(1)
    pasted = build_maskrcnn(cfg).eval()
    boxed = build_maskrcnn(cfg, paste_masks=False).eval()
    boxed.load_state_dict(pasted.state_dict())
    images = [torch.rand(3, 112, 128) * 255]  # resized to 84 x 96 inside, boxes come back
    with torch.no_grad():
        a, b = pasted(images)[0], boxed(images)[0]
    assert a["boxes"].shape[0] > 0
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(a[key], b[key]), key
    _check_eval([a], 1, 112, 128)
    _check_eval([b], 1, 112, 128, mask_size=(28, 28))
    assert 0.0 <= b["masks"].min() and b["masks"].max() <= 1.0


def test_resize_false_keeps_native_size(tiny_cfg):
    model = build_maskrcnn(tiny_cfg("mobilenet_v3_fpn", resize=False, min_size=32, max_size=64))
    images = [torch.rand(3, 100, 120) * 255]
    for training in (True, False):
        model.train(training)
        batch, _ = model.transform(images)
        assert batch.image_sizes == [(100, 120)]
        assert batch.tensors.shape[-2:] == (128, 128)  # zero padding to a multiple of 32 only
    with torch.no_grad():
        _check_eval(model(images), 1, 100, 120)
    resizing = build_maskrcnn(tiny_cfg("mobilenet_v3_fpn", min_size=32, max_size=64)).eval()
    assert resizing.transform(images)[0].image_sizes == [(32, 38)]  # short side 100 -> 32


def test_transform_normalizes_raw_values_with_imagenet_defaults(tiny_cfg):
    model = build_maskrcnn(tiny_cfg("mobilenet_v3_fpn", resize=False)).eval()
    image = torch.tensor(IMAGENET_MEAN).view(3, 1, 1).expand(3, 32, 32).clone()
    batch, _ = model.transform([image])
    assert batch.tensors.abs().max() < 1e-5  # the mean pixel maps to zero


# ----------------------------------------------------------------------------- config


def test_default_config_is_valid_and_lists_become_tuples():
    assert ModelConfig().num_classes == 2
    cfg = ModelConfig(classes=["a", "b"], bands=[1], image_mean=[10.0], image_std=[2.0])
    assert cfg.classes == ("a", "b") and cfg.num_classes == 3 and cfg.in_channels == 1
    assert cfg.normalization() == ((10.0,), (2.0,))
    hash(cfg)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(backbone="vgg16"), "resnet50_fpn, resnet50_fpn_v2, resnet18_fpn, mobilenet_v3_fpn"),
    (dict(classes=()), "model.classes"),
    (dict(classes=("a", "a")), "model.classes"),
    (dict(bands=(1, 2, 3, 4)), "model.image_mean"),
    (dict(image_mean=(1.0, 2.0, 3.0), image_std=(1.0, 2.0)), "model.image_std"),
    (dict(image_mean=(1.0, 2.0, 3.0)), "model.image_std"),
    (dict(image_mean=(1.0,) * 3, image_std=(1.0, 0.0, 1.0)), "model.image_std must be positive"),
    (dict(anchor_sizes=(32, 64)), "model.anchor_sizes"),
    (dict(min_size=900, max_size=800), "model.min_size"),
    (dict(box_score_thresh=1.5), "model.box_score_thresh"),
    (dict(trainable_backbone_layers=6), "model.trainable_backbone_layers"),
    (dict(fpn_channels=0), "model.fpn_channels"),
    (dict(box_head_size=0), "model.box_head_size"),
    (dict(mask_head_layers=()), "model.mask_head_layers"),
    (dict(mask_head_layers=(256, 0)), "model.mask_head_layers"),
    (dict(backbone_weights_sha256="abc"), "model.backbone_weights_sha256"),
    (dict(anchor_scales=()), "model.anchor_scales must be positive"),
    (dict(anchor_scales=(1.0, 0.0)), "model.anchor_scales must be positive"),
    (dict(head_norm="layer"), "model.head_norm must be one of none, group, batch"),
    (dict(backbone="resnet50_fpn_v2", head_norm="group"), "model.head_norm must be none"),
])
def test_config_refuses_bad_values(kwargs, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        ModelConfig(**kwargs)


def test_config_keys_load_through_pipeline_config():
    config = pytest.importorskip("pipeline.config")
    cfg = config.load_config(None, ["model.backbone=mobilenet_v3_fpn", "model.classes=[a, b]",
                                    "model.bands=[4, 3, 2, 1]", "model.image_mean=[1, 2, 3, 4]",
                                    "model.image_std=[1, 1, 1, 1]"])
    assert cfg.model.bands == (4, 3, 2, 1) and cfg.model.image_mean == (1.0, 2.0, 3.0, 4.0)
    with pytest.raises(ConfigError, match="model.image_mean"):
        config.load_config(None, ["model.bands=[1, 2]"])


# ----------------------------------------------------------------------------- weights


def _save(obj, path):
    torch.save(obj, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _Payload:
    """Stands in for any pickled object that is not plain tensors."""

    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_load_state_dict_file_checks_and_refuses(tmp_path):
    state = {"w": torch.arange(4.0)}
    sha = _save(state, tmp_path / "ok.pt")
    assert file_sha256(str(tmp_path / "ok.pt")) == sha
    assert torch.equal(load_state_dict_file(tmp_path / "ok.pt", sha)["w"], state["w"])
    with pytest.raises(BundleError, match=f"expected sha256 {'0' * 16}"):
        load_state_dict_file(tmp_path / "ok.pt", "0" * 64)
    with pytest.raises(BundleError, match="not found"):
        load_state_dict_file(tmp_path / "missing.pt")
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"w": _Payload()}, f, protocol=2)
    with pytest.raises(BundleError, match="weights_only=True refused"):
        load_state_dict_file(tmp_path / "evil.pt")
    _save({"w": argparse.Namespace(x=1)}, tmp_path / "object.pt")  # a custom class instance
    with pytest.raises(BundleError, match="weights_only=True refused"):
        load_state_dict_file(tmp_path / "object.pt")
    _save({"model": state, "epoch": 3}, tmp_path / "ckpt.pt")  # a training checkpoint
    assert set(load_state_dict_file(tmp_path / "ckpt.pt")) == {"w"}
    _save([1, 2], tmp_path / "list.pt")
    with pytest.raises(BundleError, match="not a state dict"):
        load_state_dict_file(tmp_path / "list.pt")


def test_load_state_dict_file_reads_uris():
    fsspec = pytest.importorskip("fsspec")
    import io

    buffer = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buffer)
    fsspec.filesystem("memory").pipe("/maskray-test/w.pt", buffer.getvalue())
    sha = hashlib.sha256(buffer.getvalue()).hexdigest()
    assert file_sha256("memory://maskray-test/w.pt") == sha
    assert torch.equal(load_state_dict_file("memory://maskray-test/w.pt", sha)["w"], torch.ones(2))


@pytest.mark.parametrize("bands", [(1, 2, 3), (1, 2, 3, 4)])
def test_backbone_initialised_from_a_local_file(tmp_path, tiny_cfg, bands):
    torch.manual_seed(0)
    source = resnet18(weights=None).state_dict()  # an ImageNet-style classification file
    path = tmp_path / "resnet18.pt"
    sha = _save(source, path)
    n = len(bands)
    cfg = tiny_cfg("resnet18_fpn", bands=bands, image_mean=(100.0,) * n, image_std=(50.0,) * n,
                   backbone_weights=str(path), backbone_weights_sha256=sha)
    body = build_maskrcnn(cfg).backbone.body
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    assert torch.equal(body.layer4[1].conv2.weight, source["layer4.1.conv2.weight"])
    assert torch.equal(body.bn1.running_var, source["bn1.running_var"])
    assert torch.allclose(body.conv1.weight, adapt_first_conv(source["conv1.weight"], n))
    with pytest.raises(BundleError, match="checksum mismatch"):
        build_maskrcnn(dataclasses.replace(cfg, backbone_weights_sha256="f" * 64))
    with pytest.raises(ConfigError, match=f"sha256 of .* is {sha}"):
        build_maskrcnn(dataclasses.replace(cfg, backbone_weights_sha256=None))


def test_backbone_file_of_the_wrong_architecture_is_refused(tmp_path, tiny_cfg):
    path = tmp_path / "tiny.pt"
    sha = _save(nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(BundleError, match="do not fit resnet18_fpn"):
        build_maskrcnn(tiny_cfg("resnet18_fpn", backbone_weights=str(path),
                                backbone_weights_sha256=sha))


def test_adapt_first_conv_keeps_grey_response():
    weight = torch.randn(8, 3, 3, 3)
    grey = torch.rand(1, 1, 5, 5)
    rgb_out = nn.functional.conv2d(grey.expand(1, 3, 5, 5), weight)
    one = nn.functional.conv2d(grey, adapt_first_conv(weight, 1))
    assert torch.allclose(one, rgb_out, atol=1e-5)
    six = nn.functional.conv2d(grey.expand(1, 6, 5, 5), adapt_first_conv(weight, 6))
    assert torch.allclose(six, rgb_out, atol=1e-5)
