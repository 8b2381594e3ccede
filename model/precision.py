"""Which dtype a forward pass autocasts to, on GPU and on CPU.

On CUDA, training autocasts to float16 (with a GradScaler) and inference to bfloat16, as before:
`train.amp` turns the first off. On CPU both run float32 unless `cpu_precision` asks for bfloat16:

    "fp32"  float32 (the default: results equal torchvision's CPU model)
    "bf16"  bfloat16 autocast: convolutions and linear layers in bf16 through oneDNN, weights,
            gradients and optimiser state stay float32, so no GradScaler is needed
    "auto"  "bf16" where the CPU has native bf16 instructions (AMX or AVX-512 BF16), else "fp32":
            elsewhere bf16 is emulated and slower than float32

On this project's 2-core Xeon (AMX), bf16 makes a demo training step 1.55x and a prediction 2.0x
as fast (bench/precision.py); docs/benchmarks.md has the figures and what it does to AP.
"""

from __future__ import annotations

import functools
import logging

import torch

from model.config import check_cpu_precision

log = logging.getLogger(__name__)


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when this CPU runs bf16 matrix products natively (Intel AMX or AVX-512 BF16)."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def resolve_cpu_precision(value: str) -> str:
    """"fp32" | "bf16" | "auto" -> "fp32" | "bf16" for this machine."""
    check_cpu_precision(value)
    if value == "auto":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if value == "bf16" and not cpu_has_native_bf16():
        log.warning("cpu_precision=bf16 on a CPU without native bf16 instructions: it is "
                    "emulated and likely slower than fp32")
    return value


def float32_box_deltas(model: torch.nn.Module) -> torch.nn.Module:
    """Make the RPN head and the box predictor of a torchvision `MaskRCNN` return float32, so
    that box coordinates stay float32 under any autocast. Returns `model`, changed in place.

    Why: torchvision's `BoxCoder.decode` casts the reference boxes (anchors, proposals: pixel
    coordinates) to the dtype of the predicted deltas. Under bf16 autocast the deltas are bf16,
    whose 8-bit mantissa puts coordinates between 256 and 512 px on a 2 px grid (4 px above):
    every box, and so every RoI the mask head sees, moves by up to that much, which costs small
    objects their IoU. The deltas themselves keep bf16's relative precision (0.4 %), a tenth of a
    pixel on a 25 px box. A forward hook (not a subclass) leaves the state dict, and so every
    bundle, as it is; in float32 it changes nothing.
    """
    model.rpn.head.register_forward_hook(_rpn_outputs_to_float32)
    model.roi_heads.box_predictor.register_forward_hook(_predictor_outputs_to_float32)
    return model


def _rpn_outputs_to_float32(_module, _inputs, outputs):
    """RPNHead -> (objectness per level, box deltas per level), each (N, A(*4), H, W)."""
    logits, deltas = outputs
    return [t.float() for t in logits], [t.float() for t in deltas]


def _predictor_outputs_to_float32(_module, _inputs, outputs):
    """FastRCNNPredictor -> (class logits (R, K + 1), box deltas (R, 4 (K + 1)))."""
    scores, deltas = outputs
    return scores.float(), deltas.float()


def autocast_dtype(device_type: str, *, cuda_dtype: torch.dtype | None,
                   cpu_precision: str) -> torch.dtype | None:
    """The dtype to autocast a forward to on `device_type` ("cuda" | "cpu"), or None for none.
    cuda_dtype: what CUDA uses (None: AMP off); cpu_precision: see the module docstring."""
    if device_type == "cuda":
        return cuda_dtype
    if device_type == "cpu" and resolve_cpu_precision(cpu_precision) == "bf16":
        return torch.bfloat16
    return None
