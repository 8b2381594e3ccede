"""TilePredictor on one batch, without Ray: out-of-memory errors split the batch, and a tile that
never fits becomes an error row of its scene (never a silent drop)."""

from __future__ import annotations

import numpy as np
import torch

from faults import OutOfMemoryPredictor
from pipeline.predictor import TilePredictor, is_out_of_memory


def _batch(n: int, poisoned: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (n, 3, 128, 128), dtype=np.uint8)
    image[poisoned] = 7
    return {"image": image, "x0": np.arange(n) * 96, "y0": np.zeros(n, int),
            "width": np.full(n, 96 * n + 32), "height": np.full(n, 128),
            "skip": np.zeros(n, bool), "scene_id": np.array(["a.tif"] * n),
            "error_type": np.array([""] * n), "error_message": np.array([""] * n)}


def test_out_of_memory_splits_the_batch_and_fails_only_the_tile_that_never_fits(tiny_bundle):
    batch = _batch(6, poisoned=4)
    oom = OutOfMemoryPredictor(str(tiny_bundle), device="cpu", batch_size=4, fits=1)
    out = oom(dict(batch))
    # 4 -> 2 + 2 -> 1 + 1 + 1 + 1, then chunks of one; the poisoned tile alone fails.
    assert oom.forwards[:7] == [4, 2, 1, 1, 2, 1, 1] and oom.batch_size == 1
    assert oom.forwards[7:] == [1, 1]
    assert list(out["error_type"]) == ["", "", "", "", "out_of_memory", ""]
    assert "single 128 px tile at x=384 y=0" in out["error_message"][4]
    assert out["skip"].tolist() == [False] * 4 + [True, False]
    assert "image" not in out and out["detections"][4] == []
    plain = TilePredictor(str(tiny_bundle), device="cpu", batch_size=1)(dict(batch))
    for row in (0, 1, 2, 3, 5):  # the same detections as a run that never ran out of memory
        assert out["detections"][row] == plain["detections"][row]
    assert sum(len(d) for d in out["detections"]) > 0


def test_other_errors_are_not_taken_for_out_of_memory(tiny_bundle):
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"))
    assert not is_out_of_memory(RuntimeError("Expected all tensors to be on the same device"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_channels_last_gives_the_same_detections(tiny_bundle):
    """infer.channels_last changes the memory layout of the convolutions, not the answer."""
    batch = _batch(3, poisoned=1)
    nchw = TilePredictor(str(tiny_bundle), device="cpu", batch_size=3)(dict(batch))
    nhwc = TilePredictor(str(tiny_bundle), device="cpu", batch_size=3, channels_last=True)
    assert next(nhwc.model.backbone.parameters()).is_contiguous(memory_format=torch.channels_last)
    out = nhwc(dict(batch))
    assert sum(len(d) for d in out["detections"]) > 0
    for a, b in zip(nchw["detections"], out["detections"]):
        assert [(d.class_id, d.x0, d.y0, d.x1, d.y1) for d in a] == \
               [(d.class_id, d.x0, d.y0, d.x1, d.y1) for d in b]
        np.testing.assert_allclose([d.score for d in a], [d.score for d in b], atol=1e-4)


def test_bf16_on_cpu_autocasts_the_model_and_keeps_the_strongest_detections(tiny_bundle):
    """infer.cpu_precision=bf16: the convolutions run bf16; the tiles' detections are still
    float32 rows, and the fp32 run's strongest boxes are found again (bf16 keeps 8 bits of
    mantissa, so scores move in the third digit and the weakest boxes may trade places)."""
    from torchvision.ops import box_iou

    batch = _batch(3, poisoned=1)
    fp32 = TilePredictor(str(tiny_bundle), device="cpu", batch_size=3)
    bf16 = TilePredictor(str(tiny_bundle), device="cpu", batch_size=3, cpu_precision="bf16")
    assert fp32.autocast is None and bf16.autocast is torch.bfloat16
    seen: list[torch.dtype] = []
    conv = next(m for m in bf16.model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    a, b = fp32(dict(batch))["detections"], bf16(dict(batch))["detections"]
    assert seen == [torch.bfloat16]
    for ours, theirs in zip(a, b):
        assert len(theirs) > 0 and all(isinstance(d.score, float) for d in theirs)
        strongest = sorted(ours, key=lambda d: -d.score)[:3]
        boxes = torch.tensor([[d.x0, d.y0, d.x1, d.y1] for d in theirs], dtype=torch.float32)
        for d in strongest:
            iou = box_iou(torch.tensor([[d.x0, d.y0, d.x1, d.y1]], dtype=torch.float32), boxes)[0]
            assert float(iou.max()) > 0.7, (d, theirs[:5])
