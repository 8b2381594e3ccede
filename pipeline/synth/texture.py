"""Ground appearance of one window: land use, roads, sidewalks, tracks, river, crops.

`render_ground(plan, x0, y0, w, h)` is a pure function of the plan and global pixel coordinates
(noise is hashed from global coordinates, block properties from block indices), so windows are
seamless and independent of the order they are rendered in.

Colours are display RGB in [0, 1] (float32), "veg" is a vegetation fraction in [0, 1] and
"wet" marks open water; both feed the extra (near-infrared, SWIR) bands.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.synth.noise import fractal_noise, hash_grid, mix_key, pixel_centres
from pipeline.synth.plan import FIELD, RESIDENTIAL, ScenePlan, block_kinds, has_road, water_depth

# Two colours per land use, mixed by a patch noise (RESIDENTIAL, INDUSTRIAL, PARK, FOREST, FIELD).
_GROUND_A = np.array([[0.32, 0.38, 0.22], [0.52, 0.52, 0.50], [0.30, 0.41, 0.19],
                      [0.15, 0.21, 0.11], [0.0, 0.0, 0.0]], np.float32)
_GROUND_B = np.array([[0.50, 0.47, 0.40], [0.40, 0.40, 0.39], [0.40, 0.46, 0.25],
                      [0.24, 0.26, 0.15], [0.0, 0.0, 0.0]], np.float32)
_VEG = np.array([0.55, 0.08, 0.75, 0.85, 0.0], np.float32)
# How strongly the two colours separate into patches (gardens vs paving, concrete stains...).
_CONTRAST = np.array([2.2, 1.2, 1.6, 1.8, 1.0], np.float32)
# Field crops: (colour, vegetation fraction).
_CROPS = np.array([[0.62, 0.56, 0.36], [0.36, 0.46, 0.21], [0.46, 0.37, 0.27], [0.52, 0.53, 0.28],
                   [0.28, 0.38, 0.17], [0.70, 0.63, 0.45]], np.float32)
_CROP_VEG = np.array([0.3, 0.85, 0.05, 0.6, 0.9, 0.15], np.float32)
ASPHALT = np.array([0.29, 0.29, 0.30], np.float32)
SIDEWALK = np.array([0.60, 0.59, 0.57], np.float32)
TRACK = np.array([0.52, 0.45, 0.35], np.float32)
WATER_A = np.array([0.07, 0.14, 0.16], np.float32)
WATER_B = np.array([0.13, 0.22, 0.25], np.float32)
SHORE = np.array([0.55, 0.52, 0.43], np.float32)
_CROP, _PATCH, _BASE, _GRAIN, _WATER = 21, 22, 23, 24, 25


@dataclass
class Canvas:
    """A window being rendered: rgb (3, H, W), veg (H, W), wet (H, W), all float32."""

    rgb: np.ndarray
    veg: np.ndarray
    wet: np.ndarray
    x0: int
    y0: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.veg.shape


def _blend(rgb: np.ndarray, where: np.ndarray, colour) -> None:
    """Set pixels `where` ((H, W) bool) of rgb (3, H, W) to one colour (3,)."""
    for channel, value in zip(rgb, colour):
        channel[where] = value


def _grid(plan: ScenePlan, xs: np.ndarray, ys: np.ndarray):
    """Grid-frame coordinates and, per axis, block index, nearest line and distance to it."""
    # float32 is plenty: 1e5 px is resolved to 0.01 px, and it halves the memory traffic.
    c, s = np.float32(math.cos(plan.angle)), np.float32(math.sin(plan.angle))
    xs, ys = xs.astype(np.float32), ys.astype(np.float32)
    out = []
    for lines, coord in ((plan.road_u, xs[None, :] * c + ys[:, None] * s),
                         (plan.road_v, -xs[None, :] * s + ys[:, None] * c)):
        lines = np.asarray(lines, np.float32)
        idx = np.clip(np.searchsorted(lines, coord, "right") - 1, 0, len(lines) - 2)
        lo, hi = coord - lines[idx], lines[idx + 1] - coord
        near = np.where(lo < hi, idx, idx + 1)
        out.append((coord, idx, near, np.minimum(lo, hi)))
    return out


def render_ground(plan: ScenePlan, x0: int, y0: int, w: int, h: int) -> Canvas:
    """Ground of the window [x0, x0 + w) x [y0, y0 + h) in scene pixels."""
    xs, ys = pixel_centres(x0, w), pixel_centres(y0, h)
    (u, iu, nu, du), (v, jv, nv, dv) = _grid(plan, xs, ys)
    i_lo, j_lo = int(iu.min()) - 1, int(jv.min()) - 1
    ii = np.arange(i_lo, int(iu.max()) + 3)
    jj = np.arange(j_lo, int(jv.max()) + 3)
    table = block_kinds(plan, ii[:, None], jj[None, :])
    kind = table[iu - i_lo, jv - j_lo]
    m = plan.px_per_m
    patch = fractal_noise(xs, ys, (14.0 * m, 5.0 * m), mix_key(plan.key, _PATCH), gain=0.6)
    patch = np.clip((patch - 0.5) * _CONTRAST[kind] + 0.5, 0, 1)
    rgb = _GROUND_A.T[:, kind] * (1 - patch)[None] + _GROUND_B.T[:, kind] * patch[None]
    veg = _VEG[kind] * (1.0 - 0.5 * patch * (kind == RESIDENTIAL))
    is_field = kind == FIELD
    if is_field.any():
        _paint_fields(plan, rgb, veg, is_field, (iu - i_lo, jv - j_lo), ii, jj, u, v)
    base = fractal_noise(xs, ys, (300.0 * m, 60.0 * m, 15.0 * m, 4.0 * m), mix_key(plan.key, _BASE))
    rgb *= (0.8 + 0.4 * base)[None]
    canvas = Canvas(rgb.astype(np.float32), veg.astype(np.float32), np.zeros((h, w), np.float32),
                    x0, y0)
    road = _paint_roads(plan, canvas, table, (i_lo, j_lo), (iu, nu, du), (jv, nv, dv), u, v)
    # The depth field is about a distance in pixels: skip windows far from the river.
    centre = water_depth(plan, np.array([x0 + w / 2]), np.array([y0 + h / 2]))[0]
    if centre > -(math.hypot(w, h) + 10.0 * m):  # twice the half diagonal: curvature
        _paint_water(plan, canvas, xs, ys, road)
    return canvas


def _paint_fields(plan, rgb, veg, is_field, cell, ii, jj, u, v) -> None:
    """Crop rows: per block a crop colour, a row direction (along u or v) and a row spacing."""
    key = mix_key(plan.key, _CROP)
    crop_t = (hash_grid(key, ii[:, None], jj[None, :]) * len(_CROPS)).astype(np.int64)
    along_t = hash_grid(mix_key(key, 1), ii[:, None], jj[None, :]) < 0.5
    period_t = (1.5 + 3.0 * hash_grid(mix_key(key, 2), ii[:, None], jj[None, :])) * plan.px_per_m
    ci, cj = cell[0][is_field], cell[1][is_field]
    crop = crop_t[ci, cj]
    coord = np.where(along_t[ci, cj], u[is_field], v[is_field])
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * coord / period_t[ci, cj])
    rgb[:, is_field] = (_CROPS[crop] * (0.85 + 0.2 * stripes)[:, None]).T
    veg[is_field] = _CROP_VEG[crop]


def _paint_roads(plan, canvas, table, lo, u_axis, v_axis, u, v) -> np.ndarray:
    """Roads, sidewalks, centre lines and field tracks. Returns the (H, W) bool road mask."""
    i_lo, j_lo = lo
    iu, nu, du = u_axis
    jv, nv, dv = v_axis
    m = plan.px_per_m
    # The road on u-line k between blocks (k-1, j) and (k, j); likewise for v-lines. Decided
    # per block on the small table, then looked up per pixel.
    along_u = np.zeros(table.shape, bool)
    along_u[1:] = has_road(table[:-1], table[1:])
    along_v = np.zeros(table.shape, bool)
    along_v[:, 1:] = has_road(table[:, :-1], table[:, 1:])
    present_u = along_u[nu - i_lo, jv - j_lo]
    present_v = along_v[iu - i_lo, nv - j_lo]
    half_u = np.asarray(plan.half_u, np.float32)[nu]
    half_v = np.asarray(plan.half_v, np.float32)[nv]
    road_u, road_v = present_u & (du < half_u), present_v & (dv < half_v)
    road = road_u | road_v
    walk = ~road & ((present_u & (du < half_u + plan.sidewalk))
                    | (present_v & (dv < half_v + plan.sidewalk)))
    track = ~road & ~walk & (((~present_u) & (du < 1.5 * m)) | ((~present_v) & (dv < 1.5 * m)))
    rgb = canvas.rgb
    _blend(rgb, walk, SIDEWALK)
    _blend(rgb, track, TRACK)
    _blend(rgb, road, ASPHALT)
    dash_u = road_u & (half_u > 5 * m) & (du < 0.5) & ((v / (6 * m)) % 2 < 1)
    dash_v = road_v & (half_v > 5 * m) & (dv < 0.5) & ((u / (6 * m)) % 2 < 1)
    _blend(rgb, dash_u | dash_v, np.array([0.80, 0.80, 0.76], np.float32))
    canvas.veg[road | walk] = 0.0
    canvas.veg[track] *= 0.3
    return road


def _paint_water(plan, canvas, xs, ys, road) -> None:
    """The river (over everything, roads stop at it), a bank, lighter shallows."""
    depth = water_depth(plan, xs.astype(np.float32)[None, :], ys.astype(np.float32)[:, None])
    m = plan.px_per_m
    near = depth > -3.0 * m
    if not near.any():
        return
    shore = near & ~road
    wet = depth > 0
    ripple = fractal_noise(xs, ys, (40.0 * m, 13.0 * m, 4.0 * m), mix_key(plan.key, _WATER))
    ripple = np.clip((ripple - 0.5) * 1.5 + 0.5, 0, 1)
    colour = WATER_A[:, None, None] * (1 - ripple) + WATER_B[:, None, None] * ripple
    # Shallow water near the bank is lighter.
    shallow = np.clip(1.0 - depth / (6.0 * m), 0, 1).astype(np.float32)
    colour = colour + (SHORE[:, None, None] - colour) * 0.35 * shallow[None] ** 2
    _blend(canvas.rgb, shore & (depth <= 0), SHORE)
    np.copyto(canvas.rgb, colour.astype(np.float32), where=wet[None])
    canvas.veg[wet | shore] = 0.0
    canvas.wet[wet] = 1.0
