"""The plan of one synthetic scene: georeference, road grid, blocks and their land use, a river,
the sun. Pure and small (memory O(roads)); everything else is derived from it on demand.

Frames:
* scene pixels (x right, y down), the frame of every polygon and mask;
* the *grid frame* (u, v): scene pixels rotated by the plan's `angle`, u = x cos + y sin,
  v = -x sin + y cos. Roads are the lines u = road_u[k] and v = road_v[k]; block (i, j) is the
  cell road_u[i] <= u < road_u[i+1], road_v[j] <= v < road_v[j+1]. Blocks never overlap, so
  objects kept inside their block never collide with another block's objects: each block is laid
  out on its own, in any order, from its own random stream.
* CRS metres: x = origin_x + pixel_size * col, y = origin_y - pixel_size * row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from rasterio.transform import Affine

from pipeline.synth.config import CommonConfig, epsg_of
from pipeline.synth.noise import hash_grid, mix_key, value_noise_points

RESIDENTIAL, INDUSTRIAL, PARK, FOREST, FIELD = range(5)
KIND_NAMES = ("residential", "industrial", "park", "forest", "field")
# Shadows are capped so that a window only needs objects within this many pixels of it.
SHADOW_CAP_PX = 96
_URBAN_CELL_M = 1500.0
_PLAN, _KINDS, _URBAN = 11, 12, 13


@dataclass(frozen=True)
class River:
    """A meandering band of water, in scene pixels. Along its axis (angle) the centreline wanders
    by two sines; its half width varies by +-15 %."""

    cx: float
    cy: float
    angle: float
    half_width: float
    amps: tuple[float, float]
    waves: tuple[float, float, float]
    phases: tuple[float, float, float]


@dataclass(frozen=True)
class ScenePlan:
    seed: int
    index: int
    width: int
    height: int
    pixel_size: float
    origin: tuple[float, float]
    epsg: int
    angle: float
    road_u: tuple[float, ...]
    road_v: tuple[float, ...]
    half_u: tuple[float, ...]
    half_v: tuple[float, ...]
    sidewalk: float
    urban_bias: float
    river: River
    sun_azimuth: float
    shadow_px_per_m: float
    tint: tuple[float, float, float]
    haze: float
    density: float

    @property
    def key(self) -> int:
        return mix_key(self.seed, self.index)

    @property
    def transform(self) -> Affine:
        return Affine(self.pixel_size, 0.0, self.origin[0], 0.0, -self.pixel_size, self.origin[1])

    @property
    def px_per_m(self) -> float:
        return 1.0 / self.pixel_size

    def to_grid(self, x, y):
        c, s = math.cos(self.angle), math.sin(self.angle)
        return x * c + y * s, -x * s + y * c

    def to_pixels(self, u, v):
        c, s = math.cos(self.angle), math.sin(self.angle)
        return u * c - v * s, u * s + v * c


def plan_scene(cfg: CommonConfig, index: int, width: int, height: int) -> ScenePlan:
    """Draw the plan of scene `index` (deterministic in cfg.seed and index)."""
    rng = np.random.default_rng([cfg.seed, index, _PLAN])
    px = cfg.pixel_size
    angle = float(rng.uniform(-math.pi / 4, math.pi / 4))
    # A whole-metre origin keeps CRS coordinates exact binary fractions (see shapes.quantize).
    origin = (float(rng.integers(300_000, 700_000)), float(rng.integers(4_000_000, 6_000_000)))
    corners = np.array([[0, 0], [width, 0], [0, height], [width, height]], np.float64)
    c, s = math.cos(angle), math.sin(angle)
    us = corners[:, 0] * c + corners[:, 1] * s
    vs = -corners[:, 0] * s + corners[:, 1] * c
    road_u, half_u = _draw_roads(rng, us.min(), us.max(), px)
    road_v, half_v = _draw_roads(rng, vs.min(), vs.max(), px)
    zenith = rng.uniform(math.radians(15), math.radians(45))
    return ScenePlan(
        seed=cfg.seed, index=index, width=width, height=height, pixel_size=px, origin=origin,
        epsg=epsg_of(cfg.crs), angle=angle, road_u=road_u, road_v=road_v, half_u=half_u,
        half_v=half_v, sidewalk=float(rng.uniform(1.5, 3.0) / px),
        urban_bias=float(rng.uniform(0.0, 0.45)), river=_draw_river(rng, width, height, px),
        sun_azimuth=float(rng.uniform(0, 2 * math.pi)),
        shadow_px_per_m=float(math.tan(zenith) / px),
        tint=tuple(float(t) for t in rng.uniform(0.92, 1.08, 3)),
        haze=float(rng.uniform(0.0, 0.06)), density=cfg.density)


def _draw_roads(rng: np.random.Generator, lo: float, hi: float, px: float):
    """Road centre lines covering [lo, hi] (grid-frame pixels) with a block of margin either side.
    Spacing: mostly town blocks (80-200 m), sometimes large industrial or rural blocks
    (250-600 m, i.e. up to 1200 px at 0.5 m: room for buildings larger than a 512 px tile)."""
    margin = 600.0 / px
    pos = lo - margin + rng.uniform(0, 200.0 / px)
    lines, halves = [], []
    while pos < hi + margin:
        lines.append(float(pos))
        main = rng.random() < 0.15
        halves.append(float(rng.uniform(6.0, 9.0) if main else rng.uniform(3.0, 4.5)) / px)
        big = rng.random() < 0.3
        pos += (rng.uniform(250, 600) if big else rng.uniform(80, 200)) / px
    lines.append(float(pos))
    halves.append(float(rng.uniform(3.0, 4.5) / px))
    return tuple(lines), tuple(halves)


def _draw_river(rng: np.random.Generator, width: int, height: int, px: float) -> River:
    side = min(width, height)
    half = float(np.clip(rng.uniform(0.06, 0.11) * side, 20.0 / px, 120.0 / px))
    span = max(width, height)
    return River(
        cx=float(width * rng.uniform(0.3, 0.7)), cy=float(height * rng.uniform(0.3, 0.7)),
        angle=float(rng.uniform(0, math.pi)), half_width=half,
        amps=(float(rng.uniform(0.05, 0.15) * side), float(rng.uniform(0.0, 0.02) * side)),
        waves=(float(rng.uniform(0.8, 2.0) * span), float(rng.uniform(0.35, 0.7) * span),
               float(rng.uniform(0.3, 1.0) * span)),
        phases=tuple(float(p) for p in rng.uniform(0, 2 * math.pi, 3)))


def water_depth(plan: ScenePlan, x, y) -> np.ndarray:
    """Signed distance to the river bank in pixels (approximately): positive in water, negative
    on land. x, y: float arrays of scene pixel coordinates (any shape, broadcast); the result
    has their dtype."""
    r = plan.river
    c, s = math.cos(r.angle), math.sin(r.angle)
    dx, dy = np.asarray(x) - r.cx, np.asarray(y) - r.cy  # float32 in, float32 out
    p, q = dx * c + dy * s, -dx * s + dy * c
    k1, k2, k3 = (2 * math.pi / w for w in r.waves)
    centre = r.amps[0] * np.sin(k1 * p + r.phases[0]) + r.amps[1] * np.sin(k2 * p + r.phases[1])
    slope = r.amps[0] * k1 * np.cos(k1 * p + r.phases[0]) + r.amps[1] * k2 * np.cos(
        k2 * p + r.phases[1])
    half = r.half_width * (1.0 + 0.15 * np.sin(k3 * p + r.phases[2]))
    return (half - np.abs(q - centre) / np.sqrt(1.0 + slope * slope))


def river_direction(plan: ScenePlan, x: float, y: float) -> float:
    """Angle (radians, scene pixels) of the river's flow at the point nearest (x, y)."""
    r = plan.river
    c, s = math.cos(r.angle), math.sin(r.angle)
    p = (x - r.cx) * c + (y - r.cy) * s
    k1, k2 = 2 * math.pi / r.waves[0], 2 * math.pi / r.waves[1]
    slope = r.amps[0] * k1 * math.cos(k1 * p + r.phases[0]) + r.amps[1] * k2 * math.cos(
        k2 * p + r.phases[1])
    return r.angle + math.atan(slope)


def block_kinds(plan: ScenePlan, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Land use of blocks (i, j) (int arrays, broadcast): RESIDENTIAL .. FIELD (int8).

    A low-frequency "urbanness" field, sampled at the block centre, sets the odds, so towns,
    suburbs and countryside form patches larger than a block; big blocks lean industrial."""
    i, j = np.broadcast_arrays(np.asarray(i, np.int64), np.asarray(j, np.int64))
    ru, rv = np.asarray(plan.road_u), np.asarray(plan.road_v)
    iu, jv = np.clip(i, 0, len(ru) - 2), np.clip(j, 0, len(rv) - 2)
    u = (ru[iu] + ru[iu + 1]) / 2
    v = (rv[jv] + rv[jv + 1]) / 2
    x, y = plan.to_pixels(u, v)
    cell = _URBAN_CELL_M / plan.pixel_size
    urban = np.clip(0.7 * value_noise_points(x, y, cell, mix_key(plan.key, _URBAN))
                    + plan.urban_bias, 0.0, 1.0)
    big = np.minimum(ru[iu + 1] - ru[iu], rv[jv + 1] - rv[jv]) * plan.pixel_size > 240.0
    r = hash_grid(mix_key(plan.key, _KINDS), i, j)
    town = np.select([r < np.where(big, 0.25, 0.6), r < np.where(big, 0.85, 0.85)],
                     [RESIDENTIAL, INDUSTRIAL], PARK)
    suburb = np.select([r < 0.45, r < np.where(big, 0.6, 0.52), r < 0.67, r < 0.8],
                       [RESIDENTIAL, INDUSTRIAL, PARK, FOREST], FIELD)
    country = np.select([r < 0.12, r < 0.17, r < 0.5], [RESIDENTIAL, PARK, FOREST], FIELD)
    kinds = np.where(urban >= 0.55, town, np.where(urban >= 0.35, suburb, country))
    return kinds.astype(np.int8)


def has_road(kind_a: np.ndarray, kind_b: np.ndarray) -> np.ndarray:
    """A road runs between two blocks unless both are countryside (forest / field)."""
    return (kind_a <= PARK) | (kind_b <= PARK)


def block_bbox(plan: ScenePlan, i: int, j: int) -> tuple[float, float, float, float]:
    """Scene-pixel bounding box (x0, y0, x1, y1) of the whole cell (i, j), roads included."""
    u = np.array([plan.road_u[i], plan.road_u[i + 1]])
    v = np.array([plan.road_v[j], plan.road_v[j + 1]])
    x, y = plan.to_pixels(u[[0, 1, 1, 0]], v[[0, 0, 1, 1]])
    return float(x.min()), float(y.min()), float(x.max()), float(y.max())


def blocks_in_rect(plan: ScenePlan, x0: float, y0: float, x1: float,
                   y1: float) -> list[tuple[int, int]]:
    """Blocks (i, j) whose bounding box meets the pixel rectangle [x0, x1) x [y0, y1), ordered
    by the top of their bounding box, then left (the order scenes are streamed in)."""
    u, v = plan.to_grid(np.array([x0, x1, x0, x1]), np.array([y0, y0, y1, y1]))
    ru, rv = np.asarray(plan.road_u), np.asarray(plan.road_v)
    i_lo = max(int(np.searchsorted(ru, u.min(), "right")) - 1, 0)
    i_hi = min(int(np.searchsorted(ru, u.max(), "right")), len(ru) - 1)
    j_lo = max(int(np.searchsorted(rv, v.min(), "right")) - 1, 0)
    j_hi = min(int(np.searchsorted(rv, v.max(), "right")), len(rv) - 1)
    found = []
    for i in range(i_lo, i_hi):
        for j in range(j_lo, j_hi):
            bx0, by0, bx1, by1 = block_bbox(plan, i, j)
            if bx0 < x1 and bx1 > x0 and by0 < y1 and by1 > y0:
                found.append((by0, bx0, i, j))
    return [(i, j) for _, _, i, j in sorted(found)]
