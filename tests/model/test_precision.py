"""cpu_precision: which dtype the forward autocasts to, a bf16 training step on CPU, and the
config keys that choose it."""

from __future__ import annotations

import pytest
import torch

from model.build import build_maskrcnn
from model.precision import autocast_dtype, cpu_has_native_bf16, resolve_cpu_precision
from model.train import train_step
from pipeline.config import load_config
from pipeline.errors import ConfigError


def test_auto_follows_the_cpu_and_bad_values_are_refused():
    assert resolve_cpu_precision("fp32") == "fp32" and resolve_cpu_precision("bf16") == "bf16"
    assert resolve_cpu_precision("auto") == ("bf16" if cpu_has_native_bf16() else "fp32")
    with pytest.raises(ValueError, match="fp32, bf16, auto"):
        resolve_cpu_precision("fp16")
    assert autocast_dtype("cpu", cuda_dtype=torch.float16, cpu_precision="fp32") is None
    assert autocast_dtype("cpu", cuda_dtype=None, cpu_precision="bf16") is torch.bfloat16
    # on CUDA, cpu_precision does not matter: train.amp / the predictor decide
    assert autocast_dtype("cuda", cuda_dtype=None, cpu_precision="bf16") is None
    assert autocast_dtype("cuda", cuda_dtype=torch.float16, cpu_precision="fp32") is torch.float16


@pytest.mark.parametrize("key", ["train.cpu_precision", "infer.cpu_precision"])
def test_the_config_keys_default_to_fp32_and_name_the_choices(key):
    section = key.split(".")[0]
    assert getattr(getattr(load_config(None, []), section), "cpu_precision") == "fp32"
    assert getattr(getattr(load_config(None, [f"{key}=auto"]), section), "cpu_precision") == "auto"
    with pytest.raises(ConfigError, match="cpu_precision must be one of fp32, bf16, auto"):
        load_config(None, [f"{key}=fp16"])


def _conv_dtypes(model: torch.nn.Module) -> list[torch.dtype]:
    """Records the output dtype of the backbone's first convolution on every forward."""
    seen: list[torch.dtype] = []
    conv = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    return seen


def test_a_bf16_training_step_runs_the_convolutions_in_bf16_and_keeps_float32_weights(
        tiny_cfg, tiny_batch):
    torch.manual_seed(0)
    model = build_maskrcnn(tiny_cfg()).train()
    seen = _conv_dtypes(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images, targets = tiny_batch()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = train_step(model, images, targets, optimizer, None, 10.0, torch.bfloat16)
    assert seen == [torch.bfloat16]
    assert set(losses) >= {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness",
                           "loss_rpn_box_reg", "loss"}
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    params = dict(model.named_parameters())
    assert all(p.dtype == torch.float32 for p in params.values())
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in params.values())
    changed = [n for n, p in params.items() if not torch.equal(p.detach(), before[n])]
    assert any(n.startswith("roi_heads.mask_predictor") for n in changed)
    assert any(n.startswith("backbone.body") for n in changed)
    # without autocast the same step runs float32
    train_step(model, images, targets, optimizer, None, 10.0)
    assert seen == [torch.bfloat16, torch.float32]


def test_box_deltas_stay_float32_under_bf16_so_coordinates_are_not_quantised(tiny_cfg, tiny_batch):
    """torchvision decodes boxes in the deltas' dtype; bf16 would put coordinates on a 0.5-4 px
    grid (between 64 and 512 px). The RPN head and the box predictor return float32
    (model.precision.float32_box_deltas), and the state dict is torchvision's."""
    torch.manual_seed(0)
    model = build_maskrcnn(tiny_cfg()).eval()
    seen: dict[str, torch.dtype] = {}
    model.rpn.head.register_forward_hook(
        lambda _m, _i, out: seen.update(rpn_deltas=out[1][0].dtype, rpn_logits=out[0][0].dtype))
    model.roi_heads.box_predictor.register_forward_hook(
        lambda _m, _i, out: seen.update(box_deltas=out[1].dtype))
    proposals = []
    model.rpn.register_forward_hook(lambda _m, _i, out: proposals.extend(out[0]))
    images, _ = tiny_batch()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images)
    assert seen == {"rpn_deltas": torch.float32, "rpn_logits": torch.float32,
                    "box_deltas": torch.float32}
    assert all(p.dtype == torch.float32 for p in proposals)  # bf16 without the hooks
    assert all(o["boxes"].dtype == torch.float32 for o in out)
    names = {n for n, _ in model.named_parameters()}
    assert {"rpn.head.bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.weight"} <= names
