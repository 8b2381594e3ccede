"""COCO run-length encoding of box-local masks: thin wrappers over pycocotools, plus the few
operations the stitcher and users need that never materialise a full-scene mask.

An RLE here is pycocotools' compressed form, {"size": [h, w], "counts": bytes}, column-major
(Fortran order: runs go down each column, then on to the next column), alternating runs of 0s and
1s starting with 0s. A Detection's RLE covers only its box: "box-local". Frames: masks are (h, w)
arrays indexed [row, column] = [y, x]; windows and boxes are (x0, y0, x1, y1), half-open, px.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
from pycocotools import mask as mask_utils

from pipeline.detection import Detection

Rle = dict
Box = tuple[int, int, int, int]

# pycocotools stores run lengths as uint32.
_MAX_RUN = 2**32 - 1


def encode(mask: np.ndarray) -> Rle:
    """Compressed RLE of a binary mask. mask: (h, w) bool (or 0/1 ints), any memory order."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (h, w), got shape {mask.shape}")
    fortran = np.asfortranarray(mask, dtype=np.uint8)
    return mask_utils.encode(fortran)


def decode(rle: Rle) -> np.ndarray:
    """The (h, w) bool mask of a compressed RLE (Fortran-ordered array)."""
    # pycocotools returns 0/1 uint8, so reinterpreting the bytes as bool is exact and free.
    return mask_utils.decode(rle).view(bool)


def area(rle: Rle) -> int:
    """Number of pixels set in the mask."""
    return int(mask_utils.area(rle))


def counts_to_str(counts: bytes) -> str:
    """Compressed counts as the ASCII string COCO JSON stores."""
    return counts.decode("ascii")


def str_to_counts(counts: str) -> bytes:
    """COCO JSON's string counts back to the bytes pycocotools takes."""
    return counts.encode("ascii")


def tight_bounds(mask: np.ndarray) -> Box | None:
    """(x0, y0, x1, y1), half-open, of the set pixels of a (h, w) bool mask; None when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def crop(rle_or_mask: Union[Rle, np.ndarray], x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """Window [x0, x1) x [y0, y1) of a mask, in the mask's own frame, as (y1 - y0, x1 - x0) bool.

    The window may reach outside the mask; those pixels are False. Memory: mask + window.
    """
    mask = decode(rle_or_mask) if isinstance(rle_or_mask, dict) else rle_or_mask
    out = np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), dtype=bool)
    h, w = mask.shape
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if cx1 > cx0 and cy1 > cy0:
        out[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = mask[cy0:cy1, cx0:cx1]
    return out


def to_full_image(rle: Rle, x0: int, y0: int, height: int, width: int) -> Rle:
    """A box-local RLE placed with its top-left pixel at (x0, y0) in a height x width image, as a
    full-image compressed RLE (what COCO tools and users expect).

    Built from run lengths: memory is O(box + runs), never O(height x width), so it works for a
    40 000 x 40 000 px scene. Parts of the box outside the image are dropped. pycocotools keeps
    runs as uint32, so an image must have fewer than 2**32 pixels between two set pixels.
    """
    starts, ends = _runs_in_image(decode(rle), x0, y0, height, width)
    counts = _interleave_runs(starts, ends, height * width)
    if counts and max(counts) > _MAX_RUN:
        raise ValueError(f"a run is longer than pycocotools' uint32 limit in a {height}x{width} image")
    return mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)


def _runs_in_image(
    mask: np.ndarray, x0: int, y0: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Column-major [start, end) pixel indices of the 1-runs of `mask` placed at (x0, y0)."""
    h, w = mask.shape
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x0 + w, width), min(y0 + h, height)
    if cx1 <= cx0 or cy1 <= cy0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    clipped = mask[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    # One row per image column; a 0 either side so every run has a rising and a falling edge.
    edges = np.diff(np.pad(clipped.T.astype(np.int8), ((0, 0), (1, 1))), axis=1)
    col_s, row_s = np.nonzero(edges == 1)
    col_e, row_e = np.nonzero(edges == -1)
    starts = (cx0 + col_s).astype(np.int64) * height + cy0 + row_s
    ends = (cx0 + col_e).astype(np.int64) * height + cy0 + row_e
    # A run reaching the bottom of a full-height column goes on at the top of the next one.
    joined = np.flatnonzero(ends[:-1] == starts[1:])
    return np.delete(starts, joined + 1), np.delete(ends, joined)


def _interleave_runs(starts: np.ndarray, ends: np.ndarray, total: int) -> list[int]:
    """pycocotools' uncompressed counts (0-run, 1-run, 0-run, ...) for sorted 1-runs."""
    if starts.size == 0:
        return [total]
    counts = np.empty(2 * starts.size + 1, dtype=np.int64)
    counts[0] = starts[0]
    counts[1::2] = ends - starts
    counts[2:-1:2] = starts[1:] - ends[:-1]
    counts[-1] = total - ends[-1]
    # A mask ending in a 1-run has no trailing 0-run in pycocotools' own encoding.
    return counts[:-1].tolist() if counts[-1] == 0 else counts.tolist()


def union(dets: Sequence[Detection]) -> tuple[int, int, int, int, Rle]:
    """Merge pieces of one object (seam merge): (x0, y0, x1, y1, rle) of the union of their masks.

    Each box-local mask is placed into the union of the boxes and OR-ed; the result is re-tightened
    (pieces are tight already, but this keeps the contract if one is not). Memory: the union box.
    """
    if not dets:
        raise ValueError("union of no detections")
    ux0, uy0 = min(d.x0 for d in dets), min(d.y0 for d in dets)
    ux1, uy1 = max(d.x1 for d in dets), max(d.y1 for d in dets)
    canvas = np.zeros((uy1 - uy0, ux1 - ux0), dtype=bool)
    for d in dets:
        canvas[d.y0 - uy0 : d.y1 - uy0, d.x0 - ux0 : d.x1 - ux0] |= decode(d.rle)
    bounds = tight_bounds(canvas)
    if bounds is None:
        return ux0, uy0, ux0, uy0, encode(np.zeros((0, 0), dtype=bool))
    x0, y0, x1, y1 = bounds
    return ux0 + x0, uy0 + y0, ux0 + x1, uy0 + y1, encode(canvas[y0:y1, x0:x1])


def intersection_area_in_window(a: Detection, b: Detection, window: Box) -> tuple[int, int, int]:
    """(pixels of a AND b, pixels of a, pixels of b), all counted inside `window` only.

    window: (x0, y0, x1, y1), half-open, in the detections' frame (the band two tiles share).
    For the stitcher's "intersection over the smaller piece within the band". Memory: the boxes.
    """
    mask_a, mask_b = decode(a.rle), decode(b.rle)
    area_a = int(_window_part(mask_a, _box(a), window).sum())
    area_b = int(_window_part(mask_b, _box(b), window).sum())
    shared = _intersect(_intersect(_box(a), _box(b)), window)
    if shared is None or area_a == 0 or area_b == 0:
        return 0, area_a, area_b
    inter = _window_part(mask_a, _box(a), shared) & _window_part(mask_b, _box(b), shared)
    return int(inter.sum()), area_a, area_b


def _box(det: Detection) -> Box:
    return det.x0, det.y0, det.x1, det.y1


def _intersect(p: Box | None, q: Box | None) -> Box | None:
    """Intersection of two half-open boxes; None when empty."""
    if p is None or q is None:
        return None
    x0, y0, x1, y1 = max(p[0], q[0]), max(p[1], q[1]), min(p[2], q[2]), min(p[3], q[3])
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _window_part(mask: np.ndarray, box: Box, window: Box) -> np.ndarray:
    """The part of a box-local mask inside `window` (both in the same frame); may be empty."""
    part = _intersect(box, window)
    if part is None:
        return np.zeros((0, 0), dtype=bool)
    x0, y0, x1, y1 = part
    return mask[y0 - box[1] : y1 - box[1], x0 - box[0] : x1 - box[0]]
