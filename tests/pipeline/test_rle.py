"""Box-local RLE helpers: round trips, full-image placement, seam unions and window overlaps."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pycocotools import mask as mask_utils

from pipeline import rle
from pipeline.detection import Detection

small_masks = hnp.arrays(bool, hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=12))


def make_detection(mask: np.ndarray, x: int, y: int, class_id: int = 1) -> Detection:
    """A Detection for `mask` placed at (x, y), tightened as the contract requires."""
    x0, y0, x1, y1 = rle.tight_bounds(mask)
    return Detection(class_id, 0.9, x + x0, y + y0, x + x1, y + y1, rle.encode(mask[y0:y1, x0:x1]))


def place(det: Detection, height: int, width: int) -> np.ndarray:
    full = np.zeros((height, width), dtype=bool)
    full[det.y0 : det.y1, det.x0 : det.x1] = rle.decode(det.rle)
    return full


@pytest.mark.parametrize("shape", [(0, 0), (0, 3), (4, 0), (1, 1), (3, 5)])
@pytest.mark.parametrize("fill", [False, True])
def test_round_trip_edge_shapes(shape, fill):
    mask = np.full(shape, fill)
    encoded = rle.encode(mask)
    assert encoded["size"] == list(shape)
    assert isinstance(encoded["counts"], bytes)
    decoded = rle.decode(encoded)
    assert decoded.dtype == bool and decoded.shape == shape
    np.testing.assert_array_equal(decoded, mask)
    assert rle.area(encoded) == int(mask.sum())


@settings(max_examples=100, deadline=None)
@given(small_masks)
def test_round_trip_property(mask):
    encoded = rle.encode(mask)
    np.testing.assert_array_equal(rle.decode(encoded), mask)
    assert rle.area(encoded) == int(mask.sum())


def test_encode_is_column_major_like_pycocotools():
    mask = np.array([[1, 0, 0], [1, 1, 0]], dtype=bool)
    expected = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert rle.encode(mask) == expected
    assert rle.encode(np.ascontiguousarray(mask)) == rle.encode(np.asfortranarray(mask))


def test_counts_json_round_trip():
    encoded = rle.encode(np.eye(7, dtype=bool))
    text = json.dumps({"size": encoded["size"], "counts": rle.counts_to_str(encoded["counts"])})
    loaded = json.loads(text)
    back = {"size": loaded["size"], "counts": rle.str_to_counts(loaded["counts"])}
    assert back == encoded
    np.testing.assert_array_equal(rle.decode(back), np.eye(7, dtype=bool))


def test_tight_bounds():
    mask = np.zeros((5, 6), dtype=bool)
    assert rle.tight_bounds(mask) is None
    mask[1, 2] = mask[3, 4] = True
    assert rle.tight_bounds(mask) == (2, 1, 5, 4)


def test_crop_windows_inside_partly_outside_and_outside():
    mask = np.arange(12).reshape(3, 4) % 3 == 0
    encoded = rle.encode(mask)
    np.testing.assert_array_equal(rle.crop(encoded, 1, 1, 3, 3), mask[1:3, 1:3])
    window = rle.crop(mask, -1, -2, 2, 2)
    assert window.shape == (4, 3)
    np.testing.assert_array_equal(window[2:, 1:], mask[:2, :2])
    assert not window[:2].any() and not window[:, 0].any()
    assert not rle.crop(mask, 10, 10, 12, 13).any()


@st.composite
def placements(draw):
    """A box-local mask, an image, and where the mask goes (possibly beyond the image edges)."""
    mask = draw(small_masks)
    height, width = draw(st.integers(1, 16)), draw(st.integers(1, 16))
    x0 = draw(st.integers(-mask.shape[1] - 1, width + 1))
    y0 = draw(st.integers(-mask.shape[0] - 1, height + 1))
    return mask, x0, y0, height, width


def full_image_encode(mask, x0, y0, height, width):
    full = rle.crop(mask, -x0, -y0, width - x0, height - y0)
    return rle.encode(full)


@settings(max_examples=200, deadline=None)
@given(placements())
def test_to_full_image_equals_direct_encode(placement):
    mask, x0, y0, height, width = placement
    got = rle.to_full_image(rle.encode(mask), x0, y0, height, width)
    assert got == full_image_encode(mask, x0, y0, height, width)


@pytest.mark.parametrize("mask", [np.ones((4, 3), bool), np.array([[1, 0], [1, 1], [0, 1]], bool)])
def test_to_full_image_runs_joined_across_full_height_columns(mask):
    """A full-height box: a run at the bottom of one column continues at the top of the next."""
    height = mask.shape[0]
    got = rle.to_full_image(rle.encode(mask), 2, 0, height, 7)
    assert got == full_image_encode(mask, 2, 0, height, 7)


def test_to_full_image_on_a_40000_px_scene_stays_small():
    mask = np.zeros((30, 20), dtype=bool)
    mask[5:25, 3:17] = True
    mask[10:12, 8:10] = False
    got = rle.to_full_image(rle.encode(mask), 39_970, 20_000, 40_000, 40_000)
    assert got["size"] == [40_000, 40_000]
    assert rle.area(got) == int(mask.sum())
    assert mask_utils.toBbox(got).tolist() == [39_973.0, 20_005.0, 14.0, 20.0]
    assert len(got["counts"]) < 200


def test_to_full_image_refuses_runs_beyond_uint32():
    with pytest.raises(ValueError, match="uint32"):
        rle.to_full_image(rle.encode(np.ones((1, 1), bool)), 69_999, 69_999, 70_000, 70_000)


def test_union_of_seam_pieces():
    left = np.zeros((6, 5), bool)
    left[1:5, 1:5] = True
    right = np.zeros((6, 5), bool)
    right[2:6, 0:3] = True
    a, b = make_detection(left, 10, 20), make_detection(right, 14, 20)
    x0, y0, x1, y1, merged = rle.union([a, b])
    expected = place(a, 40, 40) | place(b, 40, 40)
    assert (x0, y0, x1, y1) == (11, 21, 17, 26)
    assert (x0, y0, x1, y1) == rle.tight_bounds(expected)
    np.testing.assert_array_equal(rle.decode(merged), expected[y0:y1, x0:x1])


def test_union_of_one_and_of_none():
    det = make_detection(np.eye(3, dtype=bool), 4, 5)
    assert rle.union([det]) == (4, 5, 7, 8, det.rle)
    with pytest.raises(ValueError):
        rle.union([])


@st.composite
def detection_pairs(draw):
    """Two non-empty detections in a 20 x 20 scene and a window (the band two tiles share)."""
    dets = []
    for _ in range(2):
        mask = draw(hnp.arrays(bool, (draw(st.integers(1, 8)), draw(st.integers(1, 8)))))
        if not mask.any():
            mask[0, 0] = True
        dets.append(make_detection(mask, draw(st.integers(0, 12)), draw(st.integers(0, 12))))
    wx0, wy0 = draw(st.integers(0, 19)), draw(st.integers(0, 19))
    window = (wx0, wy0, draw(st.integers(wx0, 20)), draw(st.integers(wy0, 20)))
    return dets[0], dets[1], window


@settings(max_examples=150, deadline=None)
@given(detection_pairs())
def test_intersection_area_in_window_property(pair):
    a, b, (wx0, wy0, wx1, wy1) = pair
    in_window = np.zeros((20, 20), bool)
    in_window[wy0:wy1, wx0:wx1] = True
    full_a, full_b = place(a, 20, 20) & in_window, place(b, 20, 20) & in_window
    expected = (int((full_a & full_b).sum()), int(full_a.sum()), int(full_b.sum()))
    assert rle.intersection_area_in_window(a, b, (wx0, wy0, wx1, wy1)) == expected


@settings(max_examples=100, deadline=None)
@given(st.lists(detection_pairs(), min_size=1, max_size=2))
def test_union_property(pairs):
    dets = [d for a, b, _ in pairs for d in (a, b)]
    x0, y0, x1, y1, merged = rle.union(dets)
    expected = np.zeros((20, 20), bool)
    for det in dets:
        expected |= place(det, 20, 20)
    assert (x0, y0, x1, y1) == rle.tight_bounds(expected)
    np.testing.assert_array_equal(rle.decode(merged), expected[y0:y1, x0:x1])
