"""Instance masks: polygon -> pixels exactly as rasterio rasterises it, and box-local masks ->
COCO RLE of the whole image without ever allocating an image-sized array.

Frames: scene pixels (x right, y down); a *box* is a half-open pixel rectangle
(x0, y0, x1, y1); a box-local mask is a (y1 - y0, x1 - x0) bool array whose [0, 0] is pixel
(x0, y0).
"""

from __future__ import annotations

import math

import numpy as np
from pycocotools import mask as mask_utils
from rasterio import features
from rasterio.enums import MergeAlg
from rasterio.transform import Affine


def to_crs(poly_px: np.ndarray, transform: Affine) -> np.ndarray:
    """(N, 2) scene pixels -> (N, 2) CRS coordinates of a north-up transform (no rotation).
    Written out as `origin + size * pixel` so the arithmetic is exact for dyadic pixel sizes."""
    return np.column_stack([transform.c + transform.a * poly_px[:, 0],
                            transform.f + transform.e * poly_px[:, 1]])


def geojson_polygon(ring_crs: np.ndarray) -> dict:
    """GeoJSON Polygon from an open (N, 2) ring: closed, exterior counter-clockwise (RFC 7946)."""
    ring = ring_crs
    x, y = ring[:, 0] - ring[0, 0], ring[:, 1] - ring[0, 1]  # shoelace, relative for precision
    if np.dot(x[:-1], y[1:]) - np.dot(y[:-1], x[1:]) < 0:
        ring = ring[::-1]
    coords = [[float(a), float(b)] for a, b in ring]
    return {"type": "Polygon", "coordinates": [coords + [coords[0]]]}


def polygon_box(poly_px: np.ndarray) -> tuple[int, int, int, int]:
    """Smallest pixel box (x0, y0, x1, y1) holding every pixel centre the polygon can cover."""
    x0, y0 = np.floor(poly_px.min(axis=0)).astype(int)
    x1, y1 = np.ceil(poly_px.max(axis=0)).astype(int)
    return int(x0), int(y0), int(x1), int(y1)


def rasterize_in_box(geometry: dict, transform: Affine, box: tuple[int, int, int, int]
                     ) -> np.ndarray:
    """Pixels of `geometry` (GeoJSON, CRS coordinates) inside `box`, as rasterio.features
    .rasterize(all_touched=False) gives them over the whole scene: rasterising over the box with
    the scene transform shifted to the box origin computes the very same pixel-centre tests.
    Returns (y1 - y0, x1 - x0) bool."""
    x0, y0, x1, y1 = box
    shifted = transform @ Affine.translation(x0, y0)
    burnt = features.rasterize([(geometry, 1)], out_shape=(y1 - y0, x1 - x0), transform=shifted,
                               all_touched=False, fill=0, dtype="uint8")
    return burnt.astype(bool)


def rasterize_labels(geometries: list[dict], transform: Affine, box: tuple[int, int, int, int]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise many polygons over one box in two calls: labels (int32, k + 1 for the last
    geometry k that covers a pixel, 0 for none) and counts (uint8, how many cover it). GDAL
    rasterises each geometry on its own, so wherever counts == 1 the label is exactly that
    geometry's own rasterisation. Both (y1 - y0, x1 - x0)."""
    x0, y0, x1, y1 = box
    shifted = transform @ Affine.translation(x0, y0)
    shape = (y1 - y0, x1 - x0)
    labels = features.rasterize([(g, k + 1) for k, g in enumerate(geometries)], out_shape=shape,
                                transform=shifted, all_touched=False, fill=0, dtype="int32")
    counts = features.rasterize([(g, 1) for g in geometries], out_shape=shape, transform=shifted,
                                all_touched=False, fill=0, dtype="uint8", merge_alg=MergeAlg.add)
    return labels, counts


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the set pixels of a (H, W) mask, half-open; None when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def encode(mask: np.ndarray) -> dict:
    """COCO compressed RLE of a (H, W) bool mask: {"size": [H, W], "counts": bytes}."""
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def decode(rle: dict) -> np.ndarray:
    """Inverse of `encode`: (H, W) bool."""
    return mask_utils.decode(rle).astype(bool)


def place_rle(mask: np.ndarray, x0: int, y0: int, height: int, width: int) -> dict:
    """COCO compressed RLE, over a (height, width) image, of a box-local mask at (x0, y0).

    mask: (h, w) bool, entirely inside the image. COCO counts run column-major (down each column,
    then to the next), alternating background / foreground, starting with background. The runs
    are computed per column from the box alone, so memory is O(box), not O(image).
    """
    h, w = mask.shape
    padded = np.zeros((w, h + 2), np.int8)
    padded[:, 1:-1] = mask.T
    step = np.diff(padded, axis=1)
    col_s, row_s = np.nonzero(step == 1)
    col_e, row_e = np.nonzero(step == -1)
    starts = (x0 + col_s).astype(np.int64) * height + y0 + row_s
    ends = (x0 + col_e).astype(np.int64) * height + y0 + row_e
    if starts.size:
        # A run reaching the bottom of a full-height column continues at the top of the next.
        joined = starts[1:] == ends[:-1]
        starts = np.concatenate([starts[:1], starts[1:][~joined]])
        ends = np.concatenate([ends[:-1][~joined], ends[-1:]])
    edges = np.column_stack([starts, ends]).ravel()
    bounds = np.concatenate([[0], edges, [height * width]])
    counts = np.diff(bounds).astype(np.uint64).tolist()
    if len(counts) > 1 and counts[-1] == 0:
        counts.pop()  # pycocotools writes no empty background run after the last foreground
    return mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)


def box_area(box: tuple[int, int, int, int]) -> int:
    x0, y0, x1, y1 = box
    return max(x1 - x0, 0) * max(y1 - y0, 0)


def clip_box(box: tuple[int, int, int, int], region: tuple[int, int, int, int]
             ) -> tuple[int, int, int, int] | None:
    """Intersection of two boxes, None when empty."""
    x0, y0 = max(box[0], region[0]), max(box[1], region[1])
    x1, y1 = min(box[2], region[2]), min(box[3], region[3])
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def sun_offset(azimuth: float, length: float) -> tuple[float, float]:
    """Pixel offset (dx, dy) of a shadow `length` px long, cast away from a sun at `azimuth`
    (radians clockwise from north, i.e. from -y)."""
    return -length * math.sin(azimuth), length * math.cos(azimuth)
