"""A block's buildable rectangle and its coordinates (s, t), in which generators place objects."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.synth.plan import ScenePlan
from pipeline.synth.shapes import place


@dataclass(frozen=True)
class Frame:
    """A block's buildable rectangle [u0, u0 + size_u] x [v0, v0 + size_v] in the grid frame
    (pixels). Generators work in block coordinates (s, t): s in [0, length] along the block's
    rows, t in [0, depth] across them; s runs along u, or along v when `swap` (so rows can follow
    either side of a block)."""

    plan: ScenePlan
    u0: float
    v0: float
    size_u: float
    size_v: float
    swap: bool = False

    @property
    def length(self) -> float:
        return self.size_v if self.swap else self.size_u

    @property
    def depth(self) -> float:
        return self.size_u if self.swap else self.size_v

    @property
    def angle(self) -> float:
        """Direction of +s in scene pixels (radians)."""
        return self.plan.angle + (math.pi / 2 if self.swap else 0.0)

    def swapped(self) -> "Frame":
        return Frame(self.plan, self.u0, self.v0, self.size_u, self.size_v, not self.swap)

    def grid(self, s, t):
        """Block coordinates -> grid-frame (u, v), pixels."""
        return (self.u0 + t, self.v0 + s) if self.swap else (self.u0 + s, self.v0 + t)

    def point(self, s: float, t: float) -> tuple[float, float]:
        x, y = self.plan.to_pixels(*self.grid(s, t))
        return float(x), float(y)

    def quad(self, s0: float, s1: float, t0: float, t1: float) -> np.ndarray:
        """(4, 2) scene-pixel rectangle [s0, s1] x [t0, t1]: corners are computed from the
        same numbers for neighbours, so rectangles that share an s or t share an exact edge."""
        u, v = self.grid(np.array([s0, s1, s1, s0]), np.array([t0, t0, t1, t1]))
        x, y = self.plan.to_pixels(u, v)
        return np.column_stack([x, y])

    def place(self, shape: np.ndarray, s: float, t: float, turn: float = 0.0) -> np.ndarray:
        """A local shape centred at (s, t), its x axis turned by `turn` from the +s axis."""
        return place(shape, *self.point(s, t), self.angle + turn)

    def contains(self, poly_px: np.ndarray) -> bool:
        u, v = self.plan.to_grid(poly_px[:, 0], poly_px[:, 1])
        return bool((u >= self.u0).all() and (u <= self.u0 + self.size_u).all()
                    and (v >= self.v0).all() and (v <= self.v0 + self.size_v).all())


def block_frame(plan: ScenePlan, i: int, j: int) -> Frame:
    """The block inside its roads and sidewalks."""
    ua = plan.road_u[i] + plan.half_u[i] + plan.sidewalk
    ub = plan.road_u[i + 1] - plan.half_u[i + 1] - plan.sidewalk
    va = plan.road_v[j] + plan.half_v[j] + plan.sidewalk
    vb = plan.road_v[j + 1] - plan.half_v[j + 1] - plan.sidewalk
    return Frame(plan, ua, va, max(ub - ua, 0.0), max(vb - va, 0.0))
