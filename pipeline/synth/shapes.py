"""Pure polygon generators for synthetic objects.

A shape is an (N, 2) float64 array of vertices, an open ring (the first vertex is not repeated),
in a *local* frame: centred on the origin, long axis along +x, units of pixels. `place` rotates and
moves it into scene pixels (x right, y down). `quantize` snaps vertices to odd multiples of
2**-21 px, so that

* no vertex, and no axis-aligned edge, lies on a pixel centre (k + 0.5);
* with a dyadic pixel size (0.5 m, 0.25 m, 1 m...) and a whole-metre origin, the CRS coordinates
  written to GeoJSON are exact binary fractions (far inside float64 precision at UTM magnitudes),
  so rasterising them over the whole scene gives bit-for-bit the pixels rasterised over an
  object's own window (the masks in the COCO file);
* with other pixel sizes the two rasterisations round differently, which only matters where an
  edge passes *exactly* through a pixel centre; on this fine grid that needs a coincidence of
  about one in a million per edge and scanline (a coarse 1/8 px grid made it common).
"""

from __future__ import annotations

import math

import numpy as np

QUANTUM = 2.0 ** -20


def quantize(poly: np.ndarray) -> np.ndarray:
    """Snap (N, 2) vertices to the grid (k + 1/2) * 2**-20 (see module docstring)."""
    return np.floor(np.asarray(poly, np.float64) / QUANTUM) * QUANTUM + QUANTUM / 2


def place(shape: np.ndarray, cx: float, cy: float, angle: float) -> np.ndarray:
    """Rotate a local (N, 2) shape by `angle` (radians, x towards y, i.e. clockwise on screen)
    and move its origin to scene pixel (cx, cy). Returns (N, 2) float64."""
    c, s = math.cos(angle), math.sin(angle)
    x, y = shape[:, 0], shape[:, 1]
    return np.column_stack([cx + c * x - s * y, cy + s * x + c * y])


def rectangle(length: float, width: float) -> np.ndarray:
    """(4, 2) rectangle `length` along x, `width` along y, centred on the origin."""
    a, b = length / 2.0, width / 2.0
    return np.array([[-a, -b], [a, -b], [a, b], [-a, b]], np.float64)


def rounded_rectangle(length: float, width: float, corner: float) -> np.ndarray:
    """(8, 2) rectangle with its corners cut by `corner` px (a vehicle seen from above).
    The end and side edges keep their straight middle part, so vehicles parked bumper to
    bumper share an edge segment and touch."""
    a, b = length / 2.0, width / 2.0
    k = min(corner, 0.45 * width, 0.45 * length)
    return np.array([[-a + k, -b], [a - k, -b], [a, -b + k], [a, b - k], [a - k, b],
                     [-a + k, b], [-a, b - k], [-a, -b + k]], np.float64)


def l_shape(length: float, width: float, arm_length: float, arm_width: float,
            mirror: bool = False) -> np.ndarray:
    """(6, 2) L: a bar `length` x `width` plus an arm `arm_width` wide reaching `arm_length`
    across (arm_length > width) at the bar's left end; mirrored in x when `mirror`. Centred on
    its bounding box."""
    poly = np.array([[0, 0], [length, 0], [length, width], [arm_width, width],
                     [arm_width, arm_length], [0, arm_length]], np.float64)
    poly -= [length / 2.0, arm_length / 2.0]
    if mirror:
        poly = poly[::-1] * [-1.0, 1.0]
    return poly


def u_shape(length: float, width: float, arm_length: float, arm_width: float) -> np.ndarray:
    """(8, 2) U (courtyard building open on one side): a bar plus arms at both ends."""
    poly = np.array([[0, 0], [length, 0], [length, arm_length], [length - arm_width, arm_length],
                     [length - arm_width, width], [arm_width, width], [arm_width, arm_length],
                     [0, arm_length]], np.float64)
    return poly - [length / 2.0, arm_length / 2.0]


def ellipse(rx: float, ry: float, step: float = 3.0) -> np.ndarray:
    """(N, 2) ellipse with semi-axes rx (along x) and ry; about one vertex per `step` px of
    outline, at least 8 and at most 64."""
    n = int(min(max(2 * math.pi * max(rx, ry) / step, 8), 64))
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    return np.column_stack([rx * np.cos(t), ry * np.sin(t)])


_HARMONICS = np.array([2.0, 3.0, 5.0])


def blob(radius: float, rng: np.random.Generator, roughness: float = 0.18,
         step: float = 3.0) -> np.ndarray:
    """(N, 2) irregular star-shaped polygon (tree crown, bush, odd building): a circle whose
    radius wobbles by a few low harmonics plus a little per-vertex jitter.

    roughness: relative amplitude of the wobble, below 0.5 so the polygon stays simple."""
    n = int(min(max(2 * math.pi * radius / step, 7), 48))
    t = np.arange(n) * (2 * math.pi / n)
    amp = roughness / _HARMONICS * rng.uniform(-1, 1, 3)
    phase = rng.uniform(0, 6.3, 3)
    r = 1.0 + (amp[:, None] * np.cos(_HARMONICS[:, None] * t + phase[:, None])).sum(axis=0)
    r *= 1.0 + roughness * 0.5 * rng.uniform(-1, 1, n)
    return np.column_stack([radius * r * np.cos(t), radius * r * np.sin(t)])


def hull(length: float, beam: float, bow: float = 0.22, stern: float = 0.06) -> np.ndarray:
    """(7, 2) ship hull: a pointed bow at +x (the last `bow` fraction of the length tapers) and a
    slightly chamfered stern. Centred on the origin."""
    a, b = length / 2.0, beam / 2.0
    xb = a - bow * length
    xs = -a + stern * length
    return np.array([[a, 0.0], [xb, b], [xs, b], [-a, b * 0.7], [-a, -b * 0.7], [xs, -b],
                     [xb, -b]], np.float64)


def sweep(poly: np.ndarray, dx: float, dy: float) -> list[np.ndarray]:
    """Pieces whose union is the area swept by `poly` moving by (dx, dy): the polygon, its moved
    copy and one quadrilateral per edge. A shadow is the sweep of the footprint away from the
    sun; burning all pieces with one value rasterises the union without a geometry union."""
    moved = poly + [dx, dy]
    nxt = np.roll(poly, -1, axis=0)
    quads = [np.array([p, q, q + [dx, dy], p + [dx, dy]]) for p, q in zip(poly, nxt)]
    return [poly, moved, *quads]


def polygon_area(poly: np.ndarray) -> float:
    """Signed shoelace area of an open ring (positive when counter-clockwise with y up)."""
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
