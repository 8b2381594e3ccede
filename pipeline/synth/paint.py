"""Rendering one window: ground, ground details, shadows, objects, then the sensor.

`render_window` is a pure function of the plan, the window and the objects near it; every noise
is hashed from global pixel coordinates, so a scene rendered window by window is identical to the
same scene rendered in one piece, in any window order.

Output: (bands, H, W) array of the requested dtype; bands 1-3 are RGB, band 4 near-infrared,
further bands SWIR-like.
"""

from __future__ import annotations

import math

import numpy as np
from rasterio import features as rfeatures
from rasterio.transform import Affine

from pipeline.synth import masks
from pipeline.synth.config import UINT16_SCALE
from pipeline.synth.layout import Feature, Instance
from pipeline.synth.looks import LOOKS
from pipeline.synth.noise import mix_key, pixel_centres, pixel_noise, value_noise
from pipeline.synth.plan import ScenePlan
from pipeline.synth.shadows import Shadow
from pipeline.synth.texture import ASPHALT, Canvas, render_ground

SHADOW_TINT = np.array([0.42, 0.46, 0.55], np.float32)
_FEATURE_COLOURS = {"parking": ASPHALT * 1.1, "yard": np.array([0.56, 0.55, 0.53], np.float32),
                    "pool": np.array([0.30, 0.55, 0.62], np.float32),
                    "pier": np.array([0.48, 0.41, 0.31], np.float32)}
_OBJ, _SENSOR, _WAKE = 31, 32, 33
# Halo rendered around each window for the optics blur, so window borders blur like any pixel.
HALO = 1


def _burn(polys: list[np.ndarray], canvas: Canvas) -> np.ndarray:
    """Union of scene-pixel polygons rasterised over the canvas (pixel centres inside)."""
    h, w = canvas.shape
    geoms = [({"type": "Polygon", "coordinates": [poly.tolist() + [poly[0].tolist()]]}, 1)
             for poly in polys]
    return rfeatures.rasterize(geoms, out_shape=(h, w), transform=Affine.translation(
        canvas.x0, canvas.y0), fill=0, dtype="uint8").astype(bool)


def _sub(canvas: Canvas, box: tuple[int, int, int, int]) -> Canvas:
    """A view of the canvas over box (x0, y0, x1, y1), which must lie inside it."""
    r0, r1, c0, c1 = box[1] - canvas.y0, box[3] - canvas.y0, box[0] - canvas.x0, box[2] - canvas.x0
    return Canvas(canvas.rgb[:, r0:r1, c0:c1], canvas.veg[r0:r1, c0:c1],
                  canvas.wet[r0:r1, c0:c1], box[0], box[1])


def _extent(canvas: Canvas) -> tuple[int, int, int, int]:
    h, w = canvas.shape
    return canvas.x0, canvas.y0, canvas.x0 + w, canvas.y0 + h


def _local(canvas: Canvas, angle: float, cx: float, cy: float):
    """(H, W) coordinates of the canvas' pixel centres along / across `angle` from (cx, cy)."""
    h, w = canvas.shape
    xs, ys = pixel_centres(canvas.x0, w) - cx, pixel_centres(canvas.y0, h) - cy
    c, s = math.cos(angle), math.sin(angle)
    return xs[None, :] * c + ys[:, None] * s, -xs[None, :] * s + ys[:, None] * c


def paint_features(canvas: Canvas, plan: ScenePlan, items: list[Feature]) -> None:
    """Parking lots (with bay lines), yards, pools, piers and ship wakes."""
    for item in items:
        box = masks.clip_box(masks.polygon_box(item.polygon), _extent(canvas))
        if box is None:
            continue
        sub = _sub(canvas, box)
        where = _burn([item.polygon], sub)
        if not where.any():
            continue
        if item.look == "wake":
            along, _ = _local(sub, item.angle, *item.polygon[:2].mean(axis=0))
            fade = np.clip(1.0 + along / (1.5 * item.param), 0, 1) * 0.25
            h, w = sub.shape
            foam = fade * (0.6 + 0.4 * value_noise(pixel_centres(sub.x0, w),
                                                   pixel_centres(sub.y0, h), 3.0,
                                                   mix_key(plan.key, _WAKE)))
            np.copyto(sub.rgb, sub.rgb + (0.8 - sub.rgb) * foam[None], where=where[None])
            continue
        np.copyto(sub.rgb, np.broadcast_to(_FEATURE_COLOURS[item.look][:, None, None],
                                           sub.rgb.shape), where=where[None])
        if item.look == "parking":
            along, _ = _local(sub, item.angle, *item.polygon[0])
            sub.rgb[:, where & (along % item.param < 0.9)] = 0.78
        sub.veg[where] = 0.0


def paint_shadows(canvas: Canvas, items: list[Shadow]) -> None:
    """Darken the ground under shadows (painted before the objects, so they fall on the ground
    only)."""
    shade = np.zeros(canvas.shape, bool)
    for item in items:
        part = masks.clip_box(item.box, _extent(canvas))
        if part is None:
            continue
        full = masks.decode(item.rle)
        bx0, by0 = item.box[:2]
        shade[part[1] - canvas.y0:part[3] - canvas.y0, part[0] - canvas.x0:part[2] - canvas.x0] |= \
            full[part[1] - by0:part[3] - by0, part[0] - bx0:part[2] - bx0]
    canvas.rgb[:, shade] *= SHADOW_TINT[:, None]


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of a (H, W) bool mask with a 4-neighbour outside it."""
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def paint_instances(canvas: Canvas, plan: ScenePlan, items: list[Instance]) -> None:
    sun = (math.sin(plan.sun_azimuth), -math.cos(plan.sun_azimuth))
    for inst in items:
        part = masks.clip_box(inst.box, _extent(canvas))
        if part is None:
            continue
        full = masks.decode(inst.rle)
        bx0, by0 = inst.box[:2]
        sl = (slice(part[1] - by0, part[3] - by0), slice(part[0] - bx0, part[2] - bx0))
        mask, edge = full[sl], _outline(full)[sl]
        sub = _sub(canvas, part)
        st = inst.style
        along, across = _local(sub, st.angle, st.cx, st.cy)
        a, b = along / max(st.length / 2, 0.5), across / max(st.width / 2, 0.5)
        grain = pixel_noise(pixel_centres(part[0], part[2] - part[0]),
                            pixel_centres(part[1], part[3] - part[1]), mix_key(plan.key, _OBJ))
        colour = LOOKS[st.look](st, a, b, edge, grain, sun)
        np.copyto(sub.rgb, np.clip(colour, 0, 1).astype(np.float32), where=mask[None])
        sub.veg[mask] = 0.8 if st.look == "tree" else 0.0
        sub.wet[mask] = 0.0


def _sensor(canvas: Canvas, plan: ScenePlan, bands: int) -> np.ndarray:
    """Scene tint and haze, a light optics blur, extra bands, then grain. Returns
    (bands, H - 2 HALO, W - 2 HALO) float32 in [0, 1]."""
    rgb = canvas.rgb * np.asarray(plan.tint, np.float32)[:, None, None] + np.float32(plan.haze)
    lum = rgb.mean(axis=0)
    veg, wet = canvas.veg, canvas.wet
    extra = [np.clip(lum * (1.05 + 1.6 * veg) * (1 - 0.75 * wet), 0, 1),  # near-infrared
             np.clip(lum * (1.3 - 0.5 * veg) * (1 - 0.9 * wet), 0, 1)]  # SWIR-like
    stack = [rgb[0], rgb[1], rgb[2]] + [extra[k % 2] * (1.0 - 0.05 * (k // 2))
                                        for k in range(bands - 3)]
    img = np.stack(stack).astype(np.float32)
    # 3x3 blur: half the light stays in the pixel (real optics are never pixel-sharp).
    core = img[:, 1:-1, 1:-1]
    ring = (img[:, :-2, 1:-1] + img[:, 2:, 1:-1] + img[:, 1:-1, :-2] + img[:, 1:-1, 2:]) / 4
    out = core * 0.6 + ring * 0.4
    h, w = out.shape[1:]
    grain = pixel_noise(pixel_centres(canvas.x0 + HALO, w), pixel_centres(canvas.y0 + HALO, h),
                        mix_key(plan.key, _SENSOR))
    return np.clip(out * (0.97 + 0.06 * grain)[None], 0, 1)


def render_window(plan: ScenePlan, window: tuple[int, int, int, int], instances: list[Instance],
                  details: list[Feature], shadows: list[Shadow], bands: int, dtype: str
                  ) -> np.ndarray:
    """Pixels of window (x0, y0, x1, y1) (scene pixels, half-open) as (bands, H, W) `dtype`.

    instances, details, shadows: those that may reach the window (more is harmless: each is
    clipped to it)."""
    x0, y0, x1, y1 = window
    canvas = render_ground(plan, x0 - HALO, y0 - HALO, x1 - x0 + 2 * HALO, y1 - y0 + 2 * HALO)
    paint_features(canvas, plan, details)
    paint_shadows(canvas, shadows)
    paint_instances(canvas, plan, instances)
    img = _sensor(canvas, plan, bands)
    if dtype == "uint8":
        return np.rint(img * 255).astype(np.uint8)
    return np.rint(img * UINT16_SCALE).astype(np.uint16)
