"""Mask -> vector geometry: the exact pixel-edge outline of a box-local mask, in the scene CRS.

A box-local mask's pixel (row r, column c) is scene pixel (x0 + c, y0 + r); its outline in CRS
units is therefore traced on the grid `scene_transform @ Affine.translation(x0, y0)`. Without a
scene transform (an image without georeferencing) the identity is used: scene pixel units, x right,
y down. Outlines follow pixel edges exactly (GDAL's polygonize via `rasterio.features.shapes`), so
rasterising the geometry back onto the same grid (pixel centres, `all_touched=False`) reproduces
the mask pixel for pixel.
"""

from __future__ import annotations

import numpy as np
import shapely
from affine import Affine
from rasterio import features
from shapely.geometry import MultiPolygon, Polygon, shape


def mask_grid_transform(x0: int, y0: int, transform: Affine | None) -> Affine:
    """The affine transform of the grid of a box-local mask whose top-left pixel is scene pixel
    (x0, y0): pixel (col, row) -> CRS (x, y). transform: the scene's; None means identity."""
    scene = Affine.identity() if transform is None else transform
    return scene @ Affine.translation(x0, y0)


def mask_to_geometry(
    mask: np.ndarray, x0: int, y0: int, transform: Affine | None = None
) -> Polygon | MultiPolygon:
    """The outline of a box-local mask as a valid (Multi)Polygon in the scene CRS, holes kept.

    mask: (h, w) bool, [row, col], top-left pixel at scene pixel (x0, y0).
    transform: scene affine (pixel -> CRS); None for pixel units.
    Pieces that touch only at a corner are separate polygons (4-connectivity: a polygon whose
    ring touched itself at a corner would be invalid). An empty mask gives an empty Polygon.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (h, w), got shape {mask.shape}")
    grid = mask_grid_transform(x0, y0, transform)
    binary = np.ascontiguousarray(mask, dtype=np.uint8)
    polygons = [
        shape(geom)
        for geom, _ in features.shapes(binary, mask=binary.astype(bool), connectivity=4,
                                        transform=grid)
    ]
    if not polygons:
        return Polygon()
    geom = polygons[0] if len(polygons) == 1 else MultiPolygon(polygons)
    # 4-connected components meet at most at corners, which a MultiPolygon allows; keep a guard
    # so a GDAL change can never write an invalid geometry.
    return geom if geom.is_valid else shapely.make_valid(geom)


def geometry_to_wkb(geom: Polygon | MultiPolygon) -> bytes:
    """ISO WKB bytes, as GeoParquet's WKB encoding stores them (2-D, little-endian)."""
    return shapely.to_wkb(geom, hex=False, output_dimension=2, byte_order=1, flavor="iso")


def geometry_bounds(geom: Polygon | MultiPolygon) -> tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) in the geometry's units: the GeoParquet bbox covering columns.
    NaNs for an empty geometry."""
    xmin, ymin, xmax, ymax = shapely.bounds(geom).tolist()
    return xmin, ymin, xmax, ymax


def rasterize_geometry(
    geom: Polygon | MultiPolygon, height: int, width: int, x0: int, y0: int,
    transform: Affine | None = None,
) -> np.ndarray:
    """The (height, width) bool mask of `geom` on the grid of a box-local mask at (x0, y0): the
    inverse of `mask_to_geometry` (pixel centres inside, `all_touched=False`)."""
    if geom.is_empty:
        return np.zeros((height, width), dtype=bool)
    grid = mask_grid_transform(x0, y0, transform)
    burned = features.rasterize([(geom, 1)], out_shape=(height, width), transform=grid,
                                fill=0, all_touched=False, dtype=np.uint8)
    return burned.astype(bool)
