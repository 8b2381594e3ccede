"""Stitching time against instances per scene: shows that `stitch_scene` scales linearly.

Synthetic scenes at constant object density: one object per `cell` x `cell` px cell (a random
rectangle inside it, class 1), plus one large class-2 object (larger than a tile) per 16 x 16
cells, so a scene with N instances is about sqrt(N) * cell px on a side. Each tile reports the
part of every object inside its window (exact clipping, as the labels predictor does), so pieces
cut by seams must be merged and duplicates in bands dropped; the stitched count is checked
against N. Only `stitch_scene` is timed (not building the tile detections).

    python -m bench.stitch                       # 10^2 .. 10^5
    python -m bench.stitch --sizes 100 10000 1000000
"""

from __future__ import annotations

import argparse
import math
import resource
import time

import numpy as np
from pycocotools import mask as mask_utils

from pipeline.detection import Detection
from pipeline.stitch import stitch_scene
from pipeline.tiling import Tile, grid_windows


def build_scene(n: int, cell: int, seed: int) -> tuple[int, np.ndarray, np.ndarray]:
    """(side px, boxes (n, 4) int64 x0 y0 x1 y1, classes (n,)) of a scene with about n objects."""
    rng = np.random.default_rng(seed)
    per_side = max(1, math.isqrt(n - 1) + 1)
    big_every = 16
    cy, cx = np.divmod(np.arange(per_side * per_side), per_side)
    is_big = (cx % big_every == big_every // 2) & (cy % big_every == big_every // 2)
    cells = np.flatnonzero(~is_big)[: n - int(is_big.sum())]
    w = rng.integers(6, cell - 4, size=len(cells))
    h = rng.integers(6, cell - 4, size=len(cells))
    x0 = cx[cells] * cell + rng.integers(0, cell - w + 1)
    y0 = cy[cells] * cell + rng.integers(0, cell - h + 1)
    small = np.stack([x0, y0, x0 + w, y0 + h], axis=1)
    bx, by = cx[is_big] * cell, cy[is_big] * cell  # 7 x 7 cells: larger than a 256 px tile
    big = np.stack([bx - 3 * cell, by - 3 * cell, bx + 4 * cell, by + 4 * cell], axis=1)
    side = per_side * cell
    big = np.clip(big, 0, side)
    boxes = np.concatenate([small, big]).astype(np.int64)
    classes = np.concatenate([np.ones(len(small), np.int64), np.full(len(big), 2, np.int64)])
    return side, boxes, classes


def tile_views(tiles: list[Tile], boxes: np.ndarray, classes: np.ndarray
               ) -> dict[tuple[int, int], list[Detection]]:
    """Each tile's clipped view of the (rectangular) objects, scene frame."""
    rle_cache: dict[tuple[int, int], dict] = {}
    order = np.argsort(boxes[:, 0], kind="stable")
    x0s = boxes[order, 0]
    widest = int((boxes[:, 2] - boxes[:, 0]).max())
    out = {}
    for t in tiles:
        lo, hi = np.searchsorted(x0s, [t.x0 - widest, t.x1])
        idx = order[lo:hi]
        b = boxes[idx]
        hit = (b[:, 2] > t.x0) & (b[:, 0] < t.x1) & (b[:, 3] > t.y0) & (b[:, 1] < t.y1)
        dets = []
        for k in idx[hit]:
            x0, y0 = max(boxes[k, 0], t.x0), max(boxes[k, 1], t.y0)
            x1, y1 = min(boxes[k, 2], t.x1), min(boxes[k, 3], t.y1)
            key = (int(y1 - y0), int(x1 - x0))
            if key not in rle_cache:
                rle_cache[key] = mask_utils.encode(np.ones(key, dtype=np.uint8, order="F"))
            dets.append(Detection(int(classes[k]), 0.9, int(x0), int(y0), int(x1), int(y1),
                                  rle_cache[key]))
        out[(t.row, t.col)] = dets
    return out


def run_one(n: int, cell: int, tile_size: int, overlap: int, seed: int) -> dict:
    side, boxes, classes = build_scene(n, cell, seed)
    tiles = grid_windows(side, side, tile_size, overlap)
    by_tile = tile_views(tiles, boxes, classes)
    pieces = sum(len(v) for v in by_tile.values())
    start = time.perf_counter()
    instances = stitch_scene(tiles, by_tile)
    seconds = time.perf_counter() - start
    if len(instances) != len(boxes):
        raise SystemExit(f"stitched {len(instances)} instances, expected {len(boxes)}")
    return {"instances": len(boxes), "side_px": side, "tiles": len(tiles), "pieces": pieces,
            "seconds": seconds, "us_per_instance": 1e6 * seconds / len(boxes)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10_000, 100_000])
    parser.add_argument("--cell", type=int, default=40, help="px per object cell (density)")
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cols = ["instances", "side_px", "tiles", "pieces", "seconds", "us_per_instance"]
    print(f"tile_size={args.tile_size} overlap={args.overlap} cell={args.cell}px")
    print(" ".join(f"{c:>15}" for c in cols))
    for n in args.sizes:
        row = run_one(n, args.cell, args.tile_size, args.overlap, args.seed)
        print(" ".join(f"{row[c]:>15.3f}" if isinstance(row[c], float) else f"{row[c]:>15}"
                       for c in cols), flush=True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of the whole run (inputs included): {peak_mb:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
