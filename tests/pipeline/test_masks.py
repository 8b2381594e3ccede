"""encode_box_masks must reproduce torchvision's full-tile paste + threshold exactly, box-local."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torchvision.models.detection.roi_heads import paste_masks_in_image

from pipeline import rle
from pipeline.masks import encode_box_masks, expand_boxes


def reference_masks(probs, boxes, image_size, threshold):
    """torchvision's way: (N, H, W) bool = paste_masks_in_image(...)[:, 0] > threshold."""
    return (paste_masks_in_image(probs, boxes, image_size, padding=1)[:, 0] > threshold).numpy()


def assert_matches_torchvision(probs, boxes, image_size, threshold=0.5):
    """Label detection i with class i + 1 so each output can be matched to its input."""
    n = probs.shape[0]
    labels = torch.arange(1, n + 1)
    scores = torch.linspace(0, 1, n, dtype=torch.float32)
    dets = encode_box_masks(probs, boxes, labels, scores, image_size, threshold)
    expected = reference_masks(probs, boxes, image_size, threshold)
    non_empty = [i for i in range(n) if expected[i].any()]
    assert [d.class_id - 1 for d in dets] == non_empty
    for det in dets:
        full = expected[det.class_id - 1]
        assert (det.x0, det.y0, det.x1, det.y1) == rle.tight_bounds(full)
        assert det.rle["size"] == [det.height, det.width]
        np.testing.assert_array_equal(rle.decode(det.rle), full[det.y0 : det.y1, det.x0 : det.x1])
        assert det.score == pytest.approx(float(scores[det.class_id - 1]))
    return dets


def random_boxes(gen, n, image_size, spread=1.2, max_side=60.0):
    """(n, 4) float32 xyxy with centres over (and a little beyond) the image."""
    h, w = image_size
    centre = (torch.rand(n, 2, generator=gen) * spread - (spread - 1) / 2) * torch.tensor([w, h])
    half = (torch.rand(n, 2, generator=gen) ** 2 * max_side + 0.05) / 2
    return torch.cat([centre - half, centre + half], dim=1)


def test_random_boxes_inside_image():
    gen = torch.Generator().manual_seed(0)
    boxes = random_boxes(gen, 40, (90, 120), spread=0.8)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, 120)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, 90)
    probs = torch.rand(40, 1, 28, 28, generator=gen)
    assert len(assert_matches_torchvision(probs, boxes, (90, 120))) > 30


def test_boxes_partly_outside_image():
    gen = torch.Generator().manual_seed(1)
    boxes = random_boxes(gen, 40, (64, 80), spread=1.3, max_side=50)
    outside = (boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > 80) | (boxes[:, 3] > 64)
    inside_somewhat = (boxes[:, 2] > 2) & (boxes[:, 3] > 2) & (boxes[:, 0] < 78) & (boxes[:, 1] < 62)
    keep = inside_somewhat
    assert (outside & keep).sum() >= 5
    probs = torch.rand(int(keep.sum()), 1, 28, 28, generator=gen)
    assert_matches_torchvision(probs, boxes[keep], (64, 80))


def test_boxes_on_the_image_border():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 12.0], [50.0, 40.0, 64.0, 48.0], [0.0, 30.0, 64.0, 48.0],
                          [0.0, 0.0, 64.0, 48.0], [63.2, 47.1, 64.0, 48.0]])
    probs = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(2)) * 0.4 + 0.3
    assert_matches_torchvision(probs, boxes, (48, 64))


def test_tiny_sub_pixel_boxes():
    gen = torch.Generator().manual_seed(3)
    corner = torch.rand(30, 2, generator=gen) * 30 + 1
    sides = torch.rand(30, 2, generator=gen) * 1.5 + 0.01
    boxes = torch.cat([corner, corner + sides], dim=1)
    probs = torch.full((30, 1, 28, 28), 0.9)
    dets = assert_matches_torchvision(probs, boxes, (33, 33))
    assert min(d.width * d.height for d in dets) <= 2


def test_constant_probs_at_threshold_match_bit_for_bit():
    """Interpolating a constant 0.5 can round either side of 0.5; we must round the same way."""
    gen = torch.Generator().manual_seed(4)
    boxes = random_boxes(gen, 30, (70, 70), spread=0.9, max_side=65).clamp(0, 70)
    probs = torch.full((30, 1, 28, 28), 0.5)
    probs[::2] = torch.nextafter(torch.tensor(0.5), torch.tensor(1.0))
    assert_matches_torchvision(probs, boxes, (70, 70))


@pytest.mark.parametrize("threshold", [0.3, 0.7])
def test_other_thresholds_and_float64(threshold):
    gen = torch.Generator().manual_seed(5)
    boxes = random_boxes(gen, 20, (50, 60), spread=0.9).clamp(0, 50)
    probs = torch.rand(20, 1, 28, 28, generator=gen, dtype=torch.float64)
    assert_matches_torchvision(probs, boxes.double(), (50, 60), threshold)


def test_other_mask_size():
    gen = torch.Generator().manual_seed(6)
    boxes = random_boxes(gen, 10, (40, 40), spread=0.9).clamp(0, 40)
    assert_matches_torchvision(torch.rand(10, 1, 14, 14, generator=gen), boxes, (40, 40))


def test_empty_masks_and_boxes_outside_are_dropped():
    boxes = torch.tensor([[2.0, 2.0, 20.0, 20.0], [200.0, 5.0, 220.0, 30.0], [-50.0, -40.0, -30.0, -20.0],
                          [5.0, 5.0, 25.0, 25.0]])
    probs = torch.full((4, 1, 28, 28), 0.9)
    probs[0] = 0.1
    dets = encode_box_masks(probs, boxes, torch.tensor([1, 2, 3, 4]), torch.ones(4), (32, 32))
    assert [d.class_id for d in dets] == [4]


def test_no_detections():
    empty = torch.zeros(0, 1, 28, 28)
    assert encode_box_masks(empty, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64),
                            torch.zeros(0), (10, 10)) == []


def test_huge_image_costs_only_the_box():
    """A 100 000 px square image would need 40 GB per full-image float mask; box-local needs none."""
    boxes = torch.tensor([[99_950.0, 50_000.0, 100_000.0, 50_020.0]])
    dets = encode_box_masks(torch.full((1, 1, 28, 28), 0.8), boxes, torch.tensor([3]),
                            torch.tensor([0.9]), (100_000, 100_000))
    (det,) = dets
    assert det.class_id == 3 and det.x1 == 100_000 and det.width <= 51 and det.height <= 22


def test_expand_boxes_matches_torchvision_integer_boxes():
    from torchvision.models.detection import roi_heads

    boxes = random_boxes(torch.Generator().manual_seed(7), 50, (100, 100), spread=1.5)
    padded, scale = roi_heads.expand_masks(torch.zeros(50, 1, 28, 28), padding=1)
    expected = roi_heads.expand_boxes(boxes, scale).to(torch.int64)
    assert torch.equal(expand_boxes(boxes, 28), expected)


def test_rejects_bad_shapes():
    with pytest.raises(ValueError, match="mask_probs"):
        encode_box_masks(torch.zeros(2, 28, 28), torch.zeros(2, 4), torch.zeros(2), torch.zeros(2),
                         (5, 5))
    with pytest.raises(ValueError, match="same length"):
        encode_box_masks(torch.zeros(2, 1, 28, 28), torch.zeros(3, 4), torch.zeros(2),
                         torch.zeros(2), (5, 5))


@st.composite
def paste_problems(draw):
    """A small image, boxes that overlap it (some beyond its edges), and probability maps."""
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    n = draw(st.integers(1, 6))
    boxes = []
    for _ in range(n):
        x0 = draw(st.floats(-10, w - 0.5, allow_nan=False))
        y0 = draw(st.floats(-10, h - 0.5, allow_nan=False))
        bw = draw(st.floats(0.01, 50, allow_nan=False))
        bh = draw(st.floats(0.01, 50, allow_nan=False))
        boxes.append([x0, y0, max(x0 + bw, 0.5), max(y0 + bh, 0.5)])
    kind = draw(st.sampled_from(["uniform", "constant", "binary"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "uniform":
        probs = rng.random((n, 1, 28, 28))
    elif kind == "constant":
        probs = np.full((n, 1, 28, 28), draw(st.sampled_from([0.5, 0.5000001, 0.75, 0.499999])))
    else:
        probs = (rng.random((n, 1, 28, 28)) > 0.5).astype(float)
    threshold = draw(st.sampled_from([0.5, 0.5, 0.3]))
    return (torch.tensor(probs, dtype=torch.float32), torch.tensor(boxes, dtype=torch.float32),
            (h, w), threshold)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(paste_problems())
def test_matches_torchvision_paste_property(problem):
    probs, boxes, image_size, threshold = problem
    assert_matches_torchvision(probs, boxes, image_size, threshold)


@pytest.mark.gpu
def test_cuda_inputs_give_the_same_detections():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    gen = torch.Generator().manual_seed(8)
    boxes = random_boxes(gen, 30, (100, 100), spread=0.9).clamp(0, 100)
    probs = torch.rand(30, 1, 28, 28, generator=gen)
    labels, scores = torch.arange(1, 31), torch.rand(30, generator=gen)
    on_cpu = encode_box_masks(probs, boxes, labels, scores, (100, 100))
    on_gpu = encode_box_masks(probs.cuda(), boxes.cuda(), labels.cuda(), scores.cuda(), (100, 100))
    assert on_gpu == on_cpu
