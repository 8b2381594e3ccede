"""Counter-based randomness for the synthetic generator: hashes, lattice value noise, grain.

Everything here is a pure function of integer keys and *global* scene coordinates, never of a
window's position or of the order in which windows are rendered. That is what makes a scene
seamless across window borders and identical whether it is rendered in one piece or in 512 px
windows: a pixel's noise value depends only on (key, x, y).

Coordinates are scene pixels (x right, y down) unless stated; arrays are float64 in, float32 out.
"""

from __future__ import annotations

import numpy as np

_U64 = np.uint64
_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_PRIME_Y = 0xC2B2AE3D27D4EB4F


def mix_key(*parts: int) -> int:
    """Fold integers (seed, scene index, purpose, ...) into one 64-bit key (splitmix64 steps).

    Pure Python, so keys are identical on every platform and numpy version.
    """
    h = 0x243F6A8885A308D3
    for part in parts:
        h = (h ^ (int(part) & _MASK64)) & _MASK64
        h = (h + _GOLDEN) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h


def _finalise(h: np.ndarray) -> np.ndarray:
    # splitmix64 finaliser; uint64 products are meant to wrap (numpy warns only for 0-d inputs).
    with np.errstate(over="ignore"):
        h = (h ^ (h >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> _U64(27))) * _U64(0x94D049BB133111EB)
    return h ^ (h >> _U64(31))


def hash_grid(key: int, ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1) from integer lattice coordinates.

    ix, iy: int arrays (any shape; broadcast together), negative values allowed.
    Returns float64 of the broadcast shape.
    """
    ux = np.asarray(ix, dtype=np.int64).astype(np.uint64)
    uy = np.asarray(iy, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = _finalise(ux * _U64(_GOLDEN) ^ uy * _U64(_PRIME_Y) ^ _U64(key))
    return (h >> _U64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _smooth(t: np.ndarray) -> np.ndarray:
    return t * t * (3.0 - 2.0 * t)


def value_noise(xs: np.ndarray, ys: np.ndarray, cell: float, key: int) -> np.ndarray:
    """Smooth value noise on an axis-aligned grid of points.

    xs: (W,) float64 x of pixel centres; ys: (H,) float64 y. cell: lattice spacing in pixels.
    Returns (H, W) float32 in [0, 1]. Interpolation is separable (first along x for every lattice
    row, then along y), so the cost is two full-size multiply-adds whatever the cell size.
    """
    gx, gy = np.asarray(xs) / cell, np.asarray(ys) / cell
    ix, iy = np.floor(gx).astype(np.int64), np.floor(gy).astype(np.int64)
    sx, sy = _smooth(gx - ix), _smooth(gy - iy)
    x_lo, y_lo = int(ix.min()), int(iy.min())
    lx = np.arange(x_lo, int(ix.max()) + 2)
    ly = np.arange(y_lo, int(iy.max()) + 2)
    lattice = hash_grid(key, lx[None, :], ly[:, None])
    cx = ix - x_lo
    along_x = lattice[:, cx] * (1.0 - sx) + lattice[:, cx + 1] * sx
    cy = iy - y_lo
    out = along_x[cy] * (1.0 - sy)[:, None] + along_x[cy + 1] * sy[:, None]
    return out.astype(np.float32)


def value_noise_points(x: np.ndarray, y: np.ndarray, cell: float, key: int) -> np.ndarray:
    """The same field as `value_noise`, sampled at scattered points.

    x, y: (N,) float64 pixel coordinates. Returns (N,) float64 in [0, 1].
    """
    gx, gy = np.asarray(x, np.float64) / cell, np.asarray(y, np.float64) / cell
    ix, iy = np.floor(gx).astype(np.int64), np.floor(gy).astype(np.int64)
    sx, sy = _smooth(gx - ix), _smooth(gy - iy)
    top = hash_grid(key, ix, iy) * (1.0 - sx) + hash_grid(key, ix + 1, iy) * sx
    bottom = hash_grid(key, ix, iy + 1) * (1.0 - sx) + hash_grid(key, ix + 1, iy + 1) * sx
    return top * (1.0 - sy) + bottom * sy


def fractal_noise(xs: np.ndarray, ys: np.ndarray, cells: tuple[float, ...], key: int,
                  gain: float = 0.5) -> np.ndarray:
    """Sum of value-noise octaves (coarsest first, each weighted `gain` times the previous).

    Returns (H, W) float32 normalised to [0, 1] (mean about 0.5).
    """
    total = np.zeros((len(ys), len(xs)), np.float32)
    weight, norm = 1.0, 0.0
    for octave, cell in enumerate(cells):
        total += np.float32(weight) * value_noise(xs, ys, cell, mix_key(key, octave))
        norm += weight
        weight *= gain
    return total / np.float32(norm)


def pixel_noise(xs: np.ndarray, ys: np.ndarray, key: int) -> np.ndarray:
    """Independent uniform [0, 1) value per pixel (sensor grain, leaf texture).

    xs: (W,), ys: (H,) pixel-centre coordinates; the integer part names the pixel.
    Returns (H, W) float32.
    """
    ix = np.floor(np.asarray(xs)).astype(np.int64)
    iy = np.floor(np.asarray(ys)).astype(np.int64)
    return hash_grid(key, ix[None, :], iy[:, None]).astype(np.float32)


def pixel_centres(start: int, count: int) -> np.ndarray:
    """(count,) float64 global coordinates of the centres of pixels start .. start+count-1."""
    return np.arange(start, start + count, dtype=np.float64) + 0.5
