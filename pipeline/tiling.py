"""Tile grid over a scene: overlapping windows that cover every pixel, and cores that partition it.

Pure grid arithmetic (no I/O). Coordinate frame: scene pixels, x right (columns), y down (rows);
every window and core is half-open, [x0, x1) x [y0, y1). Config keys: `tiling.tile_size`,
`tiling.overlap` (pixels).

The grid is the product of two 1-D grids, one per axis. Along an axis of length L, with tile
size T, overlap O and stride S = T - O:

    L <= T:  one window [0, T); it extends past the scene when L < T and the reader pads it.
    L >  T:  n = ceil((L - T) / S) + 1 windows, start_i = i * S for i < n - 1, and the last
             window shifted inward to start_{n-1} = L - T so that it ends exactly at the scene
             edge (never dropped, never past the edge).

Cores partition [0, L): core_i = [b_i, b_{i+1}) with b_0 = 0, b_n = L and, between two
neighbouring windows, b_i = ceil((start_i + start_{i-1} + T) / 2), the midpoint of the band
[start_i, start_{i-1} + T) that they share (rounded up, see `_core_bounds`). Shifting the last
window inward only widens its band with the previous window, so the rule still holds there.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Tile:
    """One window of the grid and its core, in scene pixels (half-open).

    row, col: position in the grid (row-major order in `grid_windows`).
    x0, y0, x1, y1: the window a predictor sees; x1 - x0 == y1 - y0 == tile_size. It extends past
        the scene only along an axis shorter than a tile (the reader pads).
    core_x0, core_y0, core_x1, core_y1: the part of the scene this tile owns; the cores of a grid
        partition the scene (every scene pixel lies in exactly one core).
    """

    row: int
    col: int
    x0: int
    y0: int
    x1: int
    y1: int
    core_x0: int
    core_y0: int
    core_x1: int
    core_y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def owns_box(self, x0: int, y0: int, x1: int, y1: int) -> bool:
        """True when the centre of box [x0, x1) x [y0, y1) (scene px) lies in this tile's core.

        The centre may fall on a half pixel, so it is compared doubled, in integers: exact, and a
        centre lies in exactly one core of the grid.
        """
        cx2, cy2 = x0 + x1, y0 + y1
        return (2 * self.core_x0 <= cx2 < 2 * self.core_x1
                and 2 * self.core_y0 <= cy2 < 2 * self.core_y1)


def _check_grid_args(width: int, height: int, tile_size: int, overlap: int) -> None:
    for name, value in (("tiling.tile_size", tile_size), ("tiling.overlap", overlap),
                        ("scene width", width), ("scene height", height)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if tile_size <= 0:
        raise ValueError(f"tiling.tile_size must be > 0, got {tile_size}")
    if not 0 <= overlap < tile_size:
        raise ValueError(f"tiling.overlap must be in [0, tiling.tile_size={tile_size}), "
                         f"got {overlap}")
    if width <= 0 or height <= 0:
        raise ValueError(f"scene size must be positive, got {width} x {height}")


def _window_starts(length: int, tile_size: int, overlap: int) -> list[int]:
    """Window starts along one axis (see the module docstring for the formula)."""
    if length <= tile_size:
        return [0]
    stride = tile_size - overlap
    n = -(-(length - tile_size) // stride) + 1  # ceil division in integers
    return [i * stride for i in range(n - 1)] + [length - tile_size]


def _core_bounds(starts: list[int], length: int, tile_size: int) -> list[int]:
    """b_0 .. b_n: core_i = [b_i, b_{i+1}).

    Rounding the band midpoint UP matters for the owner rule in stitching: a box inside window i-1
    (so x1 <= start_{i-1} + T) whose doubled centre x0 + x1 >= 2 * b_i >= start_i + start_{i-1} + T
    has x0 >= start_i, i.e. it lies wholly inside window i too. Rounding down would let such a box
    start one pixel before window i.
    """
    inner = [(starts[i] + starts[i - 1] + tile_size + 1) // 2 for i in range(1, len(starts))]
    return [0] + inner + [length]


def _axis(length: int, tile_size: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(window start, window end, core start, core end) for each tile along one axis."""
    starts = _window_starts(length, tile_size, overlap)
    bounds = _core_bounds(starts, length, tile_size)
    return [(s, s + tile_size, bounds[i], bounds[i + 1]) for i, s in enumerate(starts)]


def grid_windows(width: int, height: int, tile_size: int, overlap: int) -> list[Tile]:
    """The tile grid of a `width` x `height` scene, row-major (row 0 left to right, then row 1...).

    Windows are `tile_size` square, overlap their neighbours by at least `overlap` px, cover every
    scene pixel and lie inside the scene along every axis at least `tile_size` long. Cores
    partition the scene. Deterministic: a pure function of its four integer arguments.

    Raises ValueError naming `tiling.tile_size` / `tiling.overlap` unless
    tile_size > 0 and 0 <= overlap < tile_size.
    """
    _check_grid_args(width, height, tile_size, overlap)
    cols = _axis(width, tile_size, overlap)
    rows = _axis(height, tile_size, overlap)
    return [Tile(r, c, x0, y0, x1, y1, cx0, cy0, cx1, cy1)
            for r, (y0, y1, cy0, cy1) in enumerate(rows)
            for c, (x0, x1, cx0, cx1) in enumerate(cols)]


def owner_tile(tiles: Sequence[Tile], x0: int, y0: int, x1: int, y1: int) -> Tile | None:
    """The tile of `tiles` (a grid from `grid_windows`, or a subset of one) whose core holds the
    centre of box [x0, x1) x [y0, y1) in scene px; None when no core of `tiles` holds it.

    Builds its lookup on every call (O(tiles)); `Tile.owns_box` is the per-detection test.
    """
    col_starts = sorted({t.core_x0 for t in tiles})
    row_starts = sorted({t.core_y0 for t in tiles})
    by_core = {(t.core_x0, t.core_y0): t for t in tiles}
    i = bisect.bisect_right(col_starts, (x0 + x1) / 2) - 1
    j = bisect.bisect_right(row_starts, (y0 + y1) / 2) - 1
    if i < 0 or j < 0:
        return None
    tile = by_core.get((col_starts[i], row_starts[j]))
    return tile if tile is not None and tile.owns_box(x0, y0, x1, y1) else None
