"""Mask -> (Multi)Polygon: exact pixel-edge outlines that rasterise back to the same mask."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from shapely.geometry import MultiPolygon, Polygon

from pipeline.geometry import (
    geometry_bounds,
    geometry_to_wkb,
    mask_grid_transform,
    mask_to_geometry,
    masks_to_geometries,
    rasterize_geometry,
)

UTM_HALF_METRE = Affine(0.5, 0.0, 500_000.0, 0.0, -0.5, 4_200_000.0)
ROTATED = Affine(0.3, 0.1, 1000.0, 0.1, -0.3, 2000.0)


def test_square_in_pixel_units_is_offset_by_its_box():
    mask = np.zeros((4, 5), bool)
    mask[1:3, 1:4] = True
    geom = mask_to_geometry(mask, 10, 20, None)
    assert isinstance(geom, Polygon) and geom.is_valid
    assert geom.equals(shapely.box(11, 21, 14, 23))
    assert geometry_bounds(geom) == (11.0, 21.0, 14.0, 23.0)


def test_holes_are_kept():
    ring = np.ones((5, 5), bool)
    ring[1:4, 1:4] = False
    ring[2, 2] = True  # an island inside the hole is a second polygon
    geom = mask_to_geometry(ring, 0, 0, None)
    assert isinstance(geom, MultiPolygon) and geom.is_valid
    polygons = sorted(geom.geoms, key=lambda p: -p.area)
    assert len(polygons[0].interiors) == 1 and polygons[0].area == 16
    assert polygons[1].area == 1


def test_corner_touching_pieces_stay_valid():
    checker = np.indices((4, 4)).sum(axis=0) % 2 == 0
    geom = mask_to_geometry(checker, 3, 4, None)
    assert isinstance(geom, MultiPolygon) and len(geom.geoms) == 8 and geom.is_valid
    # a loop of 4-connected pieces around a hole that leaks out at its corners
    loop = np.array([[0, 1, 1, 0], [1, 0, 0, 1], [1, 0, 0, 1], [0, 1, 1, 0]], bool)
    assert mask_to_geometry(loop, 0, 0, None).is_valid


def test_georeferenced_outline_uses_scene_transform_and_box_offset():
    mask = np.ones((2, 3), bool)
    geom = mask_to_geometry(mask, 100, 40, UTM_HALF_METRE)
    # scene pixel (100, 40) is x = 500000 + 50, y = 4200000 - 20
    assert geometry_bounds(geom) == (500_050.0, 4_199_979.0, 500_051.5, 4_199_980.0)
    assert geom.area == pytest.approx(6 * 0.25)
    assert mask_grid_transform(100, 40, UTM_HALF_METRE) @ (0, 0) == (500_050.0, 4_199_980.0)


def test_empty_mask_gives_empty_polygon():
    geom = mask_to_geometry(np.zeros((3, 3), bool), 0, 0, None)
    assert geom.is_empty
    assert not rasterize_geometry(geom, 3, 3, 0, 0).any()


def test_wkb_round_trip():
    mask = np.zeros((6, 6), bool)
    mask[1:5, 1:5] = True
    mask[2:4, 2:4] = False
    geom = mask_to_geometry(mask, 7, 8, UTM_HALF_METRE)
    wkb = geometry_to_wkb(geom)
    assert isinstance(wkb, bytes) and wkb[0] == 1  # little-endian
    assert shapely.from_wkb(wkb).equals_exact(geom, tolerance=0)


@settings(max_examples=120, deadline=None)
@given(
    mask=hnp.arrays(bool, st.tuples(st.integers(1, 12), st.integers(1, 12))),
    x0=st.integers(0, 5000),
    y0=st.integers(0, 5000),
    transform=st.sampled_from([None, UTM_HALF_METRE, ROTATED]),
)
def test_rasterising_the_outline_gives_back_the_mask(mask, x0, y0, transform):
    geom = mask_to_geometry(mask, x0, y0, transform)
    assert geom.is_valid
    assert isinstance(geom, (Polygon, MultiPolygon))
    if transform is None:
        assert geom.area == mask.sum()
    back = rasterize_geometry(geom, mask.shape[0], mask.shape[1], x0, y0, transform)
    np.testing.assert_array_equal(back, mask)


@settings(max_examples=60, deadline=None)
@given(
    masks=st.lists(st.tuples(hnp.arrays(bool, st.tuples(st.integers(1, 14), st.integers(1, 14))),
                             st.integers(0, 5000), st.integers(0, 5000)), max_size=40),
    transform=st.sampled_from([None, UTM_HALF_METRE, ROTATED]),
    canvas_pixels=st.sampled_from([64, 1 << 22]),
)
def test_batched_outlines_equal_one_by_one_to_the_bit(masks, transform, canvas_pixels):
    """Packing masks onto shared canvases (several canvases when small) changes nothing: same
    WKB bytes as `mask_to_geometry` mask by mask, empty masks included."""
    batched = masks_to_geometries(masks, transform, canvas_pixels=canvas_pixels)
    assert len(batched) == len(masks)
    for (mask, x0, y0), geom in zip(masks, batched):
        assert geometry_to_wkb(geom) == geometry_to_wkb(mask_to_geometry(mask, x0, y0, transform))


def test_batched_outlines_of_a_mask_wider_than_a_canvas():
    big = np.ones((40, 3000), bool)
    big[10:20, 100:200] = False  # a hole
    small = np.eye(5, dtype=bool)  # five pieces touching at corners
    masks = [(small, 0, 0), (big, 10, 20), (small, 9, 9)]
    batched = masks_to_geometries(masks, UTM_HALF_METRE, canvas_pixels=1000)
    for (mask, x0, y0), geom in zip(masks, batched):
        assert geom.is_valid
        assert geometry_to_wkb(geom) == geometry_to_wkb(mask_to_geometry(mask, x0, y0,
                                                                         UTM_HALF_METRE))
