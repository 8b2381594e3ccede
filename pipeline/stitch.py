"""Per-scene stitching: tile detections -> one instance per object (owner-tile rule + seam merge).

Pure (numpy + pycocotools, no I/O, no Ray). Coordinate frame: scene pixels, x right, y down,
half-open boxes. Input detections are already in the scene frame (`Detection.shifted`) and lie
inside the scene (the predictor drops what it saw in a tile's padding). Masks stay box-local COCO
RLEs throughout: memory is bounded by the detections (plus one mask of one object at a time),
never by the scene's pixel count.

Steps (DESIGN.md, "Tiling and stitching"):
1. owner-tile rule: a detection survives only in the tile whose core holds its box centre;
2. seam merge: surviving pieces of the same class from tiles whose windows overlap are united
   (union-find, so an object on a four-tile corner chains through all four) when their masks
   overlap inside the band the two tiles share: |A n B n band| / min(|A n band|, |B n band|)
   > merge_threshold. Pieces of one object agree inside the band (both tiles saw all of it);
   distinct objects that merely touch share no pixel, so they stay apart;
3. numbering: instance_id = index in a stable sort on (y0, x0, y1, x1, class_id, -score, counts).

Known limit: two *different* same-class objects that overlap each other by more than
merge_threshold of the smaller inside a band are merged (their masks overlap like pieces would).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Hashable, Iterator, Mapping, Sequence

import numpy as np

from pipeline import rle
from pipeline.detection import Detection
from pipeline.tiling import Tile

Box = tuple[int, int, int, int]
_CHUNK = 512  # rows of the candidate-pair matrix built at once (bounds memory in crowded bands)


@dataclass(frozen=True, slots=True)
class Instance:
    """One stitched object instance of a scene.

    instance_id: 0..n-1, deterministic (stable sort, see module docstring), unique in the scene.
    class_id, score: class of its pieces (all the same) and the best score among them.
    x0, y0, x1, y1: tight box of the mask in scene px, half-open.
    rle: COCO compressed RLE cropped to the box, {"size": [y1 - y0, x1 - x0], "counts": bytes},
        column-major (pycocotools' layout).
    area: pixels in the mask.
    """

    instance_id: int
    class_id: int
    score: float
    x0: int
    y0: int
    x1: int
    y1: int
    rle: dict
    area: int


def stitch_scene(tiles: Sequence[Tile],
                 detections_by_tile: Mapping[Hashable, Sequence[Detection]],
                 merge_threshold: float = 0.5) -> list[Instance]:
    """Stitch one scene's tile detections into instances.

    tiles: the scene's grid (`grid_windows`), or the subset of it that was predicted (all-nodata
        tiles skipped). detections_by_tile: key = (row, col) or index into `tiles`; value = that
        tile's detections in the SCENE frame. merge_threshold: in [0, 1), see module docstring.
    Returns instances sorted by instance_id. Cost: near-linear in the number of detections; only
    pieces touching a band shared by two tiles are compared, band by band.
    """
    if not 0.0 <= merge_threshold < 1.0:
        raise ValueError(f"merge_threshold must be in [0, 1), got {merge_threshold}")
    pieces, tile_of = _owned_pieces(tiles, detections_by_tile)
    parent = list(range(len(pieces)))
    by_tile: dict[int, list[int]] = defaultdict(list)
    for i, t in enumerate(tile_of):
        by_tile[t].append(i)
    boxes = np.array([(d.x0, d.y0, d.x1, d.y1) for d in pieces], dtype=np.int64).reshape(-1, 4)
    classes = np.array([d.class_id for d in pieces], dtype=np.int64)
    for ti, tj, band in _overlapping_tile_pairs(tiles):
        a = _in_band(by_tile.get(ti, []), boxes, band)
        b = _in_band(by_tile.get(tj, []), boxes, band)
        if len(a) and len(b):
            for i, j in _seam_matches(a, b, pieces, boxes, classes, band, merge_threshold):
                _union(parent, i, j)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(pieces)):
        groups[_find(parent, i)].append(i)
    merged = [_merge([pieces[i] for i in members]) for members in groups.values()]
    return _number(merged)


def _owned_pieces(tiles: Sequence[Tile], detections_by_tile: Mapping[Hashable, Sequence[Detection]]
                  ) -> tuple[list[Detection], list[int]]:
    """Step 1, the owner-tile rule. Returns surviving detections and the tile index of each.

    Why dropping is safe, even for a piece cut at a tile edge: a detection of tile t lies inside
    t's window; if its box centre lies in the core of another tile u, the box lies wholly inside
    u's window too (`tiling._core_bounds`: core boundaries sit at the rounded-up midpoint of the
    band two windows share, so a box reaching at most to t's edge whose centre is past that
    midpoint starts inside u). So u saw this piece whole - as part of its own, larger or equal,
    view of the same object - and keeping u's piece (or the piece u's defers to, and so on)
    loses no pixel. Objects smaller than the overlap are seen whole by several tiles and kept once.
    """
    index = {(t.row, t.col): k for k, t in enumerate(tiles)}
    pieces: list[Detection] = []
    tile_of: list[int] = []
    for key in sorted(detections_by_tile, key=_sortable_key):
        k = int(key) if isinstance(key, (int, np.integer)) else index.get(tuple(key))
        if k is None or not 0 <= k < len(tiles):
            raise KeyError(f"detections for unknown tile {key!r}")
        tile = tiles[k]
        for d in detections_by_tile[key]:
            if tile.owns_box(d.x0, d.y0, d.x1, d.y1):
                pieces.append(d)
                tile_of.append(k)
    return pieces, tile_of


def _sortable_key(key: Hashable) -> tuple:
    return (0, int(key), ()) if isinstance(key, (int, np.integer)) else (1, 0, tuple(key))


def _overlapping_tile_pairs(tiles: Sequence[Tile]) -> Iterator[tuple[int, int, Box]]:
    """(i, j, band) for every pair i < j of tiles whose windows intersect; band = the intersection.

    Usually the 8-neighbourhood; an edge tile shifted inward can also overlap the tile two columns
    (rows) back, so pairs come from window extents, not from index arithmetic.
    """
    index = {(t.row, t.col): k for k, t in enumerate(tiles)}
    near_rows = _near(sorted({(t.row, t.y0, t.y1) for t in tiles}))
    near_cols = _near(sorted({(t.col, t.x0, t.x1) for t in tiles}))
    for i, t in enumerate(tiles):
        for r in near_rows[t.row]:
            for c in near_cols[t.col]:
                j = index.get((r, c))
                if j is not None and j > i:
                    u = tiles[j]
                    yield i, j, (max(t.x0, u.x0), max(t.y0, u.y0), min(t.x1, u.x1), min(t.y1, u.y1))


def _near(spans: list[tuple[int, int, int]]) -> dict[int, list[int]]:
    """For 1-D windows (index, start, end) sorted by index: index -> indices of intersecting ones
    (itself included). Windows are sorted by start too, so the scan stops at the first miss."""
    near: dict[int, list[int]] = {k: [k] for k, _, _ in spans}
    for p, (k, _, end) in enumerate(spans):
        for k2, start2, _ in spans[p + 1:]:
            if start2 >= end:
                break
            near[k].append(k2)
            near[k2].append(k)
    return near


def _in_band(members: list[int], boxes: np.ndarray, band: Box) -> np.ndarray:
    """Piece indices among `members` whose boxes intersect `band`: the only merge candidates."""
    if not members:
        return np.empty(0, dtype=np.int64)
    idx = np.asarray(members, dtype=np.int64)
    b = boxes[idx]
    hit = (b[:, 0] < band[2]) & (b[:, 2] > band[0]) & (b[:, 1] < band[3]) & (b[:, 3] > band[1])
    return idx[hit]


def _seam_matches(a: np.ndarray, b: np.ndarray, pieces: list[Detection], boxes: np.ndarray,
                  classes: np.ndarray, band: Box, threshold: float) -> Iterator[tuple[int, int]]:
    """Step 2 within one band: pairs (i from one tile, j from the other) of the same class whose
    masks overlap inside the band by more than `threshold` of the smaller piece's in-band area.

    Masks are decoded once per band (each piece is at most a tile), never into a scene array.
    """
    masks: dict[int, np.ndarray] = {}
    areas: dict[int, int] = {}

    def in_band(k: int, region: Box) -> np.ndarray:
        if k not in masks:
            masks[k] = rle.decode(pieces[k].rle)
        x0, y0 = boxes[k, 0], boxes[k, 1]
        return masks[k][region[1] - y0:region[3] - y0, region[0] - x0:region[2] - x0]

    def band_area(k: int) -> int:
        if k not in areas:
            areas[k] = int(np.count_nonzero(in_band(k, _clip(boxes[k], band))))
        return areas[k]

    for i, j, region in _box_pairs(a, b, boxes, classes, band):
        inter = int(np.count_nonzero(in_band(i, region) & in_band(j, region)))
        if inter and inter > threshold * min(band_area(i), band_area(j)):
            yield int(i), int(j)


def _box_pairs(a: np.ndarray, b: np.ndarray, boxes: np.ndarray, classes: np.ndarray,
               band: Box) -> Iterator[tuple[int, int, Box]]:
    """Same-class pairs whose boxes intersect each other inside the band, with that region."""
    bb = _clip_many(boxes[b], band)
    for s in range(0, len(a), _CHUNK):
        ai = a[s:s + _CHUNK]
        ab = _clip_many(boxes[ai], band)
        x0 = np.maximum(ab[:, None, 0], bb[None, :, 0])
        y0 = np.maximum(ab[:, None, 1], bb[None, :, 1])
        x1 = np.minimum(ab[:, None, 2], bb[None, :, 2])
        y1 = np.minimum(ab[:, None, 3], bb[None, :, 3])
        ok = (x0 < x1) & (y0 < y1) & (classes[ai][:, None] == classes[b][None, :])
        for p, q in zip(*np.nonzero(ok)):
            yield ai[p], b[q], (int(x0[p, q]), int(y0[p, q]), int(x1[p, q]), int(y1[p, q]))


def _clip(box: np.ndarray, band: Box) -> Box:
    return (max(int(box[0]), band[0]), max(int(box[1]), band[1]),
            min(int(box[2]), band[2]), min(int(box[3]), band[3]))


def _clip_many(b: np.ndarray, band: Box) -> np.ndarray:
    return np.stack([np.maximum(b[:, 0], band[0]), np.maximum(b[:, 1], band[1]),
                     np.minimum(b[:, 2], band[2]), np.minimum(b[:, 3], band[3])], axis=1)


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]  # path halving keeps the trees flat
        i = parent[i]
    return i


def _union(parent: list[int], i: int, j: int) -> None:
    ri, rj = _find(parent, i), _find(parent, j)
    if ri != rj:
        parent[max(ri, rj)] = min(ri, rj)


def _merge(group: list[Detection]) -> tuple[Detection, int]:
    """One object from its pieces: the RLE union placed in the union of their boxes (memory: that
    box, i.e. the object, never the scene), best score. Returns (detection, mask area)."""
    if len(group) == 1:
        return group[0], rle.area(group[0].rle)
    x0, y0, x1, y1, union = rle.union(group)
    best = max(d.score for d in group)
    return Detection(group[0].class_id, best, x0, y0, x1, y1, union), rle.area(union)


def _counts_bytes(mask_rle: dict) -> bytes:
    counts = mask_rle["counts"]
    return counts.encode("ascii") if isinstance(counts, str) else bytes(counts)


def _number(merged: list[tuple[Detection, int]]) -> list[Instance]:
    """Step 3: instance_id = rank in a total order on the instance's content (not on input order),
    so re-running a scene gives the same ids."""
    def key(item: tuple[Detection, int]) -> tuple:
        d = item[0]
        return (d.y0, d.x0, d.y1, d.x1, d.class_id, -d.score, _counts_bytes(d.rle))

    ordered = sorted(merged, key=key)
    return [Instance(k, d.class_id, float(d.score), d.x0, d.y0, d.x1, d.y1, d.rle, area)
            for k, (d, area) in enumerate(ordered)]
