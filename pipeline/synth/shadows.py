"""Sun shadows of a block's objects, rasterised once per block and kept as one RLE.

A shadow is an object's footprint swept away from the sun by height x tan(zenith) pixels
(capped at SHADOW_CAP_PX). Burning every piece of every object of a block in one rasterize call
gives the union; windows then only decode and paste it, instead of rasterising the same shadows
again for every window they reach.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from rasterio import features
from rasterio.transform import Affine

from pipeline.synth import masks
from pipeline.synth.plan import SHADOW_CAP_PX, ScenePlan
from pipeline.synth.shapes import sweep


@dataclass(frozen=True, slots=True)
class Shadow:
    """Shadow pixels of a block: box (x0, y0, x1, y1) in scene pixels and the COCO RLE of the
    mask cropped to it."""

    box: tuple[int, int, int, int]
    rle: dict


def shadow_pieces(plan: ScenePlan, items) -> list[np.ndarray]:
    """(N, 2) scene-pixel polygons whose union is the shadow of `items`, a list of
    (footprint (N, 2) scene pixels, height in metres)."""
    pieces, clouds = [], []
    for poly, height in items:
        length = min(height * plan.shadow_px_per_m, SHADOW_CAP_PX)
        if length < 0.5:
            continue
        dx, dy = masks.sun_offset(plan.sun_azimuth, length)
        if _convex(poly) or len(poly) > 8:
            # The sweep of a convex footprint is the hull of its two positions; crowns and round
            # roofs are nearly convex, and a hull is one piece instead of one per edge.
            clouds.append(np.vstack([poly, poly + [dx, dy]]))
        else:  # L and U shapes: the exact sweep
            pieces += sweep(poly, dx, dy)
    if clouds:
        index = np.repeat(np.arange(len(clouds)), [len(c) for c in clouds])
        hulls = shapely.convex_hull(shapely.multipoints(np.vstack(clouds), indices=index))
        pieces += [shapely.get_coordinates(shapely.get_exterior_ring(h))[:-1] for h in hulls]
    return pieces


def _convex(poly: np.ndarray) -> bool:
    """Whether an (N, 2) ring turns the same way at every vertex."""
    edges = np.diff(np.vstack([poly, poly[:1]]), axis=0)
    turns = edges[:, 0] * np.roll(edges[:, 1], -1) - edges[:, 1] * np.roll(edges[:, 0], -1)
    return bool((turns >= -1e-9).all() or (turns <= 1e-9).all())


def cast_shadows(plan: ScenePlan, items, region: tuple[int, int, int, int]) -> Shadow | None:
    """The union of the shadows of `items` ((footprint, height m) pairs), clipped to region, or
    None when empty."""
    pieces = shadow_pieces(plan, items)
    if not pieces:
        return None
    lo = np.min([p.min(axis=0) for p in pieces], axis=0)
    hi = np.max([p.max(axis=0) for p in pieces], axis=0)
    box = masks.clip_box((int(np.floor(lo[0])), int(np.floor(lo[1])), int(np.ceil(hi[0])),
                          int(np.ceil(hi[1]))), region)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    geoms = [({"type": "Polygon", "coordinates": [p.tolist() + [p[0].tolist()]]}, 1)
             for p in pieces]
    burnt = features.rasterize(geoms, out_shape=(y1 - y0, x1 - x0),
                               transform=Affine.translation(x0, y0), fill=0, dtype="uint8")
    tight = masks.tight_box(burnt.astype(bool))
    if tight is None:
        return None
    tx0, ty0, tx1, ty1 = tight
    return Shadow((x0 + tx0, y0 + ty0, x0 + tx1, y0 + ty1),
                  masks.encode(burnt[ty0:ty1, tx0:tx1].astype(bool)))
