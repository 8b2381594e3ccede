"""Tile grid: cover, partition, windows inside the scene, the owner rule's containment property."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.tiling import Tile, grid_windows, owner_tile


@st.composite
def grids(draw, max_side: int = 900):
    tile_size = draw(st.integers(1, 300))
    overlap = draw(st.integers(0, tile_size - 1))
    # at most ~15 tiles per axis, so a tiny tile_size does not make a huge grid
    width = draw(st.integers(1, min(max_side, 15 * tile_size)))
    height = draw(st.integers(1, min(max_side, 15 * tile_size)))
    return width, height, tile_size, overlap


def _axis_spans(tiles: list[Tile], axis: str) -> list[tuple[int, int, int, int]]:
    if axis == "x":
        return sorted({(t.x0, t.x1, t.core_x0, t.core_x1) for t in tiles})
    return sorted({(t.y0, t.y1, t.core_y0, t.core_y1) for t in tiles})


def test_example_grid_256_64():
    tiles = grid_windows(700, 600, 256, 64)
    xs = [(t.x0, t.core_x0, t.core_x1) for t in tiles if t.row == 0]
    # stride 192; the fourth window is shifted inward to end at 700 (start 444, not 576)
    assert xs == [(0, 0, 224), (192, 224, 416), (384, 416, 542), (444, 542, 700)]
    ys = [(t.y0, t.core_y0, t.core_y1) for t in tiles if t.col == 0]
    assert ys == [(0, 0, 224), (192, 224, 396), (344, 396, 600)]
    assert [(t.row, t.col) for t in tiles] == [(r, c) for r in range(3) for c in range(4)]


def test_scene_smaller_than_tile_gets_one_padded_tile_per_short_axis():
    tiles = grid_windows(100, 300, 256, 64)
    assert {(t.x0, t.x1, t.core_x0, t.core_x1) for t in tiles} == {(0, 256, 0, 100)}
    assert [(t.y0, t.y1) for t in tiles] == [(0, 256), (44, 300)]


@pytest.mark.parametrize("tile_size, overlap, match", [
    (0, 0, "tiling.tile_size"), (-5, 0, "tiling.tile_size"), (256, 256, "tiling.overlap"),
    (256, -1, "tiling.overlap"), (256, 300, "tiling.overlap"), (256.0, 0, "tiling.tile_size"),
])
def test_rejects_bad_config(tile_size, overlap, match):
    with pytest.raises(ValueError, match=match):
        grid_windows(500, 500, tile_size, overlap)


def test_rejects_empty_scene():
    with pytest.raises(ValueError, match="scene size"):
        grid_windows(0, 10, 8, 2)


@settings(max_examples=300, deadline=None)
@given(grids())
def test_windows_cover_and_cores_partition_each_axis(args):
    width, height, tile_size, overlap = args
    tiles = grid_windows(width, height, tile_size, overlap)
    for spans, length in ((_axis_spans(tiles, "x"), width), (_axis_spans(tiles, "y"), height)):
        assert all(x1 - x0 == tile_size for x0, x1, _, _ in spans)
        assert spans[0][0] == 0 and spans[0][2] == 0 and spans[-1][3] == length
        assert max(x1 for _, x1, _, _ in spans) >= length  # cover
        for (a0, a1, ac0, ac1), (b0, b1, bc0, bc1) in zip(spans, spans[1:]):
            assert a0 < b0 <= a1  # no gap between windows
            assert b1 - tile_size == b0 and a1 - b0 >= min(overlap, length)  # overlap kept
            assert ac1 == bc0  # cores tile the axis with no gap and no overlap
        for x0, x1, c0, c1 in spans:
            assert x0 <= c0 < c1 <= x1  # a core is non-empty and inside its window
            if length >= tile_size:
                assert 0 <= x0 and x1 <= length  # windows inside the scene
            else:
                assert (x0, x1) == (0, tile_size)  # one padded tile


@settings(max_examples=60, deadline=None)
@given(grids(max_side=120))
def test_every_pixel_in_exactly_one_core_and_some_window(args):
    width, height, tile_size, overlap = args
    cores = np.zeros((height, width), dtype=np.int32)
    windows = np.zeros((height, width), dtype=np.int32)
    for t in grid_windows(width, height, tile_size, overlap):
        cores[t.core_y0:t.core_y1, t.core_x0:t.core_x1] += 1
        windows[max(t.y0, 0):t.y1, max(t.x0, 0):t.x1] += 1
    assert (cores == 1).all()
    assert (windows >= 1).all()


@settings(max_examples=200, deadline=None)
@given(grids(max_side=600), st.data())
def test_box_in_a_window_centred_in_another_core_lies_in_that_window(args, data):
    """The property the owner-tile rule relies on: nothing is lost by dropping a piece whose
    centre lies in another tile's core, because that tile saw the piece whole."""
    width, height, tile_size, overlap = args
    tiles = grid_windows(width, height, tile_size, overlap)
    t = data.draw(st.sampled_from(tiles))
    wx0, wy0, wx1, wy1 = t.x0, t.y0, min(t.x1, width), min(t.y1, height)
    x0 = data.draw(st.integers(wx0, wx1 - 1))
    x1 = data.draw(st.integers(x0 + 1, wx1))
    y0 = data.draw(st.integers(wy0, wy1 - 1))
    y1 = data.draw(st.integers(y0 + 1, wy1))
    owners = [u for u in tiles if u.owns_box(x0, y0, x1, y1)]
    assert len(owners) == 1
    u = owners[0]
    assert u.x0 <= x0 and x1 <= u.x1 and u.y0 <= y0 and y1 <= u.y1
    assert owner_tile(tiles, x0, y0, x1, y1) == u


@settings(max_examples=50, deadline=None)
@given(grids(max_side=200))
def test_containment_exhaustively_per_axis(args):
    """The same property, checked for EVERY interval inside every window along one axis (the 2-D
    property is the product of the two axes). Catches off-by-one rounding of core boundaries."""
    length, _, tile_size, overlap = args
    if tile_size > 40:
        tile_size, overlap = 40, overlap % 40
    spans = _axis_spans(grid_windows(length, 1, tile_size, overlap), "x")
    for w0, w1, _, _ in spans:
        for x0 in range(w0, min(w1, length)):
            for x1 in range(x0 + 1, min(w1, length) + 1):
                [owner] = [s for s in spans if 2 * s[2] <= x0 + x1 < 2 * s[3]]
                assert owner[0] <= x0 and x1 <= owner[1], (x0, x1, owner)


@settings(max_examples=100, deadline=None)
@given(grids())
def test_cores_grown_by_one_pixel_stay_in_their_window_when_overlap_at_least_2(args):
    """Seam merge needs it: two 4-adjacent object pixels in different cores both lie in the
    band the two windows share, so the pieces of a connected object always overlap there."""
    width, height, tile_size, overlap = args
    if overlap < 2:
        return
    for t in grid_windows(width, height, tile_size, overlap):
        assert t.x0 <= max(t.core_x0 - 1, 0) and min(t.core_x1 + 1, width) <= t.x1
        assert t.y0 <= max(t.core_y0 - 1, 0) and min(t.core_y1 + 1, height) <= t.y1


@settings(max_examples=50, deadline=None)
@given(grids())
def test_deterministic(args):
    assert grid_windows(*args) == grid_windows(*args)


def test_owner_tile_outside_scene_is_none():
    tiles = grid_windows(300, 300, 256, 64)
    assert owner_tile(tiles, -10, 5, -2, 9) is None
    assert owner_tile(tiles, 0, 0, 2, 2) == tiles[0]
