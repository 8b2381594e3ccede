"""Object placement: one block at a time, each from its own random stream.

`layout_block(plan, i, j, ...)` lays out block (i, j) of a scene plan: the land-use generators in
`blocks.py` propose objects and `Placer.add` accepts or rejects each one. Acceptance is where
overlap is resolved (never by painting order): a proposal is rejected when it leaves its block,
stands on the wrong surface (ships need water, the rest need land), overlaps an accepted polygon
by more than half a pixel of area, or shares a pixel with an accepted mask. Touching is allowed
and common (terraces, bumper-to-bumper rows, tree clusters).

The output region (the scene, or a chip of a virtual scene) only decides what is kept: proposals
that can neither be seen in it nor cast a shadow into it are skipped before any geometry work,
and masks are clipped to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import shapely

from pipeline.synth import masks
from pipeline.synth.frame import Frame, block_frame
from pipeline.synth.plan import SHADOW_CAP_PX, ScenePlan, water_depth
from pipeline.synth.shadows import Shadow, cast_shadows
from pipeline.synth.shapes import quantize

_MAX_OVERLAP_PX2 = 0.5


@dataclass(frozen=True, slots=True)
class Style:
    """How an object looks. look: "gable" | "hip" | "flat" | "warehouse" | "tank" | "car" |
    "truck" | "bus" | "boat" | "ship" | "tree". colour: RGB in [0, 1]. (cx, cy), angle (radians),
    length, width: the object's local frame in scene pixels, for roof ridges, windscreens..."""

    look: str
    colour: tuple[float, float, float]
    height_m: float
    cx: float
    cy: float
    angle: float
    length: float
    width: float
    variant: float = 0.0


@dataclass(frozen=True, slots=True)
class Instance:
    """One labelled object. polygon: (N, 2) float64 scene pixels, quantised, open ring.
    box: (x0, y0, x1, y1) tight half-open pixel box of the mask clipped to the output region;
    rle: COCO RLE of the mask cropped to box; area: mask pixels."""

    class_name: str
    polygon: np.ndarray
    box: tuple[int, int, int, int]
    rle: dict
    area: int
    style: Style


@dataclass(frozen=True, slots=True)
class Feature:
    """Unlabelled ground detail drawn under the objects: "parking" | "pool" | "pier" | "wake" |
    "yard". polygon: (N, 2) scene pixels; angle: direction of its markings (radians)."""

    look: str
    polygon: np.ndarray
    angle: float
    param: float = 0.0


@dataclass
class BlockLayout:
    """A block's labelled objects, its unlabelled ground details and its shadows."""

    instances: list[Instance] = field(default_factory=list)
    features: list[Feature] = field(default_factory=list)
    shadows: list[Shadow] = field(default_factory=list)


class Placer:
    """Collects the objects of one block in two phases.

    `add` (phase 1) checks a proposal's polygon: inside the block, on the right surface, not
    overlapping an accepted polygon by more than half a pixel of area. `finish` (phase 2)
    rasterises every accepted polygon that reaches the region in two batched calls (labels and
    coverage counts) and keeps, in proposal order, those whose pixels are not already taken:
    polygons that only touch can still share a pixel centre on a common edge after
    quantisation, and the first one keeps it. Empty masks are dropped.
    """

    def __init__(self, frame: Frame, classes: tuple[str, ...], region: tuple[int, int, int, int]):
        self.frame, self.plan, self.classes, self.region = frame, frame.plan, classes, region
        self.reach = (region[0] - SHADOW_CAP_PX, region[1] - SHADOW_CAP_PX,
                      region[2] + SHADOW_CAP_PX, region[3] + SHADOW_CAP_PX)
        self.boxes = np.zeros((64, 4))  # bounds of accepted polygons, first `count` rows
        self.shapes = np.empty(64, dtype=object)
        self.count = 0
        self.pending: list[tuple[str, np.ndarray, Style]] = []
        self.features: list[Feature] = []
        self.dry = _is_dry(frame)

    def add(self, class_name: str, poly_px: np.ndarray, style: Style, water: bool = False) -> bool:
        """Propose an object; True when its polygon is accepted."""
        if class_name not in self.classes:
            return False
        lo, hi = poly_px.min(axis=0), poly_px.max(axis=0)
        if lo[0] >= self.reach[2] or lo[1] >= self.reach[3] or hi[0] <= self.reach[0] \
                or hi[1] <= self.reach[1]:
            return False  # can neither be seen nor cast a shadow into the region
        poly = quantize(poly_px)
        if not self.frame.contains(poly) or not self._on_surface(poly, water):
            return False
        shape = shapely.polygons(poly)
        if not shapely.is_valid(shape) or shapely.area(shape) <= 0 or self._overlaps(shape):
            return False
        if self.count == len(self.shapes):
            self.boxes = np.vstack([self.boxes, np.zeros_like(self.boxes)])
            self.shapes = np.concatenate([self.shapes, np.empty(len(self.shapes), object)])
        self.boxes[self.count] = shape.bounds
        self.shapes[self.count] = shape
        self.count += 1
        self.pending.append((class_name, poly, style))
        return True

    def add_feature(self, look: str, poly_px: np.ndarray, angle: float, param: float = 0.0):
        """Ground detail; pools, car parks and yards only on land (piers and wakes are checked
        for water by their makers)."""
        if look in ("pier", "wake") or self._on_surface(poly_px, water=False):
            self.features.append(Feature(look, poly_px, angle, param))

    def reaches(self, x: float, y: float, radius: float) -> bool:
        """Whether something within `radius` px of scene pixel (x, y) could be seen in the
        region or shade it; generators skip whole clusters and rows that cannot."""
        r = self.reach
        return x + radius > r[0] and x - radius < r[2] and y + radius > r[1] and y - radius < r[3]

    def blocked(self, x: float, y: float) -> bool:
        """Whether scene pixel (x, y) lies in the bounding box of an accepted object: a cheap
        way to skip proposals centred on something (the polygon test would reject them)."""
        b = self.boxes[:self.count]
        return bool(((b[:, 0] < x) & (b[:, 2] > x) & (b[:, 1] < y) & (b[:, 3] > y)).any())

    def water_depth(self, x: float, y: float) -> float:
        return float(water_depth(self.plan, np.array([x]), np.array([y]))[0])

    def _on_surface(self, poly: np.ndarray, water: bool) -> bool:
        if self.dry:
            return not water
        # Vertices, edge midpoints and the centre: enough for convex-ish shapes at river scale.
        mids = (poly + np.concatenate([poly[1:], poly[:1]])) / 2
        pts = np.vstack([poly, mids, poly.mean(axis=0, keepdims=True)])
        depth = water_depth(self.plan, pts[:, 0], pts[:, 1])
        margin = 1.0 * self.plan.px_per_m
        return bool((depth > margin).all()) if water else bool((depth < -margin).all())

    def _overlaps(self, shape: shapely.Polygon) -> bool:
        if not self.count:
            return False
        b = self.boxes[:self.count]
        x0, y0, x1, y1 = shape.bounds
        near = np.flatnonzero((b[:, 0] < x1) & (b[:, 2] > x0) & (b[:, 1] < y1) & (b[:, 3] > y0))
        if near.size == 0:
            return False
        others = self.shapes[near]
        shapely.prepare(shape)
        others = others[shapely.intersects(shape, others)]  # cheap test first; most only near
        if others.size == 0:
            return False
        return bool((shapely.area(shapely.intersection(shape, others)) > _MAX_OVERLAP_PX2).any())

    def finish(self) -> BlockLayout:
        """Phase 2 (see class docstring): the block's instances, masks clipped to the region."""
        layout = BlockLayout(features=self.features)
        todo = []
        for name, poly, style in self.pending:
            box = masks.clip_box(masks.polygon_box(poly), self.region)
            if box is not None:
                todo.append((name, poly, style, box))
        if not todo:
            return layout
        area = (min(t[3][0] for t in todo), min(t[3][1] for t in todo),
                max(t[3][2] for t in todo), max(t[3][3] for t in todo))
        transform = self.plan.transform
        geoms = [masks.geojson_polygon(masks.to_crs(t[1], transform)) for t in todo]
        labels, counts = masks.rasterize_labels(geoms, transform, area)
        taken = np.zeros(labels.shape, bool)
        for k, (name, poly, style, box) in enumerate(todo):
            sl = (slice(box[1] - area[1], box[3] - area[1]), slice(box[0] - area[0],
                                                                 box[2] - area[0]))
            if (counts[sl] > 1).any():  # shares a pixel: rasterise alone, first come keeps it
                mask = masks.rasterize_in_box(geoms[k], transform, box)
                if (mask & taken[sl]).any():
                    continue
            else:
                mask = labels[sl] == k + 1
            taken[sl] |= mask
            inst = _instance(name, poly, style, box, mask)
            if inst is not None:
                layout.instances.append(inst)
        return layout


def _instance(name, poly, style, box, mask) -> Instance | None:
    tight = masks.tight_box(mask)
    if tight is None:
        return None
    tx0, ty0, tx1, ty1 = tight
    crop = mask[ty0:ty1, tx0:tx1]
    out_box = (box[0] + tx0, box[1] + ty0, box[0] + tx1, box[1] + ty1)
    return Instance(name, poly, out_box, masks.encode(crop), int(crop.sum()), style)


def _is_dry(frame: Frame) -> bool:
    """True when no water comes near the block: sampled every `step` px, every sample is well
    away from the river (the depth field changes by about a pixel per pixel; the margin covers
    its error on bends)."""
    step = 16.0
    s = np.arange(0.0, frame.length + step, step)
    t = np.arange(0.0, frame.depth + step, step)
    ss, tt = np.meshgrid(np.minimum(s, frame.length), np.minimum(t, frame.depth))
    u, v = frame.grid(ss.ravel(), tt.ravel())
    x, y = frame.plan.to_pixels(u, v)
    depth = water_depth(frame.plan, x, y)
    return bool((depth < -(4 * step + 10 * frame.plan.px_per_m)).all())


def layout_block(plan: ScenePlan, i: int, j: int, classes: tuple[str, ...],
                 region: tuple[int, int, int, int]) -> BlockLayout:
    """Lay out block (i, j): deterministic in (plan.seed, plan.index, i, j) alone.

    classes: class names to generate; region: output box (x0, y0, x1, y1) in scene pixels that
    returned masks are clipped to (objects with nothing inside it are left out)."""
    from pipeline.synth import blocks  # the generators import this module's types

    frame = block_frame(plan, i, j)
    if frame.size_u < 4 or frame.size_v < 4 or not classes:
        return BlockLayout()
    placer = Placer(frame, classes, region)
    rng = np.random.default_rng([plan.seed, plan.index, i, j])
    blocks.fill_block(placer, rng, i, j)
    layout = placer.finish()
    # Objects just outside the region still cast shadows into it.
    shadow = cast_shadows(plan, [(poly, style.height_m) for _, poly, style in placer.pending],
                          region)
    if shadow is not None:
        layout.shadows.append(shadow)
    return layout
