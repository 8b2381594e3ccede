"""Object proposals: vehicles, houses, trees and ships with their sizes (metres) and looks, and the
row / cluster patterns that make them touch. Each helper proposes to a `Placer`, which accepts or
rejects; the helpers only decide where to try next.

Block coordinates (s, t) are pixels along / across a block's rows (see layout.Frame).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from pipeline.synth import shapes
from pipeline.synth.layout import Placer, Style

# (look, weight, length m, width m, height m)
VEHICLES = (("car", 0.70, (3.8, 5.0), (1.7, 1.95), 1.5), ("van", 0.10, (4.8, 6.0), (1.9, 2.1), 2.2),
            ("truck", 0.08, (7.0, 16.5), (2.4, 2.55), 3.5), ("bus", 0.05, (10.5, 13.0), (2.5, 2.55),
                                                             3.2),
            ("moto", 0.07, (1.9, 2.3), (0.7, 0.9), 1.2))
CAR_COLOURS = (((0.86, 0.86, 0.85), 3.0), ((0.07, 0.07, 0.08), 2.5), ((0.60, 0.61, 0.63), 2.5),
               ((0.36, 0.37, 0.39), 2.0), ((0.60, 0.10, 0.09), 1.0), ((0.12, 0.20, 0.45), 1.0),
               ((0.15, 0.28, 0.18), 0.4), ((0.85, 0.68, 0.15), 0.3), ((0.62, 0.55, 0.42), 0.4))
ROOF_COLOURS = (((0.60, 0.31, 0.22), 3.0), ((0.45, 0.32, 0.26), 2.0), ((0.28, 0.29, 0.31), 3.0),
                ((0.63, 0.62, 0.60), 2.0), ((0.38, 0.42, 0.47), 1.0), ((0.52, 0.21, 0.18), 1.0))
FLAT_COLOURS = (((0.72, 0.72, 0.70), 3.0), ((0.55, 0.55, 0.53), 2.0), ((0.82, 0.82, 0.80), 2.0),
                ((0.40, 0.40, 0.41), 1.0), ((0.58, 0.50, 0.42), 1.0))
METAL_COLOURS = (((0.84, 0.85, 0.86), 3.0), ((0.63, 0.65, 0.67), 2.0), ((0.42, 0.53, 0.64), 1.0),
                 ((0.52, 0.60, 0.52), 0.7), ((0.72, 0.68, 0.62), 1.0), ((0.62, 0.30, 0.25), 0.5))
TREE_COLOURS = (((0.15, 0.25, 0.10), 3.0), ((0.20, 0.30, 0.13), 3.0), ((0.11, 0.19, 0.09), 2.0),
                ((0.25, 0.33, 0.16), 1.5), ((0.42, 0.36, 0.14), 0.3), ((0.35, 0.20, 0.12), 0.15))
# Vans, trucks and buses: white fleets, school-bus yellow, red.
FLEET_COLOURS = (((0.88, 0.88, 0.87), 2.0), ((0.85, 0.70, 0.12), 1.0), ((0.60, 0.12, 0.10), 0.6))
HULL_COLOURS = (((0.90, 0.90, 0.89), 4.0), ((0.55, 0.57, 0.60), 1.5), ((0.12, 0.16, 0.25), 1.0),
                ((0.50, 0.16, 0.13), 1.0), ((0.10, 0.10, 0.10), 0.7), ((0.20, 0.40, 0.30), 0.4))


@lru_cache(maxsize=64)
def _palette(table) -> tuple[np.ndarray, np.ndarray]:
    weights = np.cumsum([w for _, w in table])
    return weights / weights[-1], np.array([c for c, _ in table])


def pick(rng: np.random.Generator, table) -> tuple[float, float, float]:
    """A colour from a weighted palette ((rgb, weight), ...), jittered by a few per cent."""
    cumulative, colours = _palette(table)
    colour = colours[min(int(np.searchsorted(cumulative, rng.random())), len(colours) - 1)]
    jitter = rng.uniform(0.92, 1.08, 3)
    return tuple(min(float(c * j), 1.0) for c, j in zip(colour, jitter))


def style_for(poly: np.ndarray, look: str, colour, height: float, angle: float, length: float,
              width: float, variant: float = 0.0) -> Style:
    cx, cy = poly.mean(axis=0)
    return Style(look, colour, height, float(cx), float(cy), angle, length, width, variant)


def propose_vehicle(p: Placer, rng, s: float, t: float, turn: float, look: str,
                    length: float, width: float, height: float) -> bool:
    """A vehicle (lengths in px) centred at block point (s, t), facing +s turned by `turn`."""
    m = p.plan.px_per_m
    if not p.reaches(*p.frame.point(s, t), length):
        return False
    poly = p.frame.place(shapes.rounded_rectangle(length, width, 0.35 * m), s, t, turn)
    colour = pick(rng, CAR_COLOURS if look in ("car", "moto") or rng.random() < 0.5 else
                  FLEET_COLOURS)
    style = style_for(poly, look, colour, height, p.frame.angle + turn, length, width,
                      float(rng.random()))
    return p.add("vehicle", poly, style)


def draw_vehicle(rng, px_per_m: float, looks=None):
    """(look, length px, width px, height m) of a random vehicle (optionally only `looks`)."""
    table = [v for v in VEHICLES if looks is None or v[0] in looks]
    weights = np.array([v[1] for v in table])
    look, _, ln, wd, h = table[rng.choice(len(table), p=weights / weights.sum())]
    return look, rng.uniform(*ln) * px_per_m, rng.uniform(*wd) * px_per_m, h


def vehicle_row(p: Placer, rng, s0: float, s1: float, t: float, touch: float,
                perpendicular: bool = False, looks=None, fill: float = 0.85) -> None:
    """Vehicles along s in [s0, s1] centred on row t. Parallel rows park bumper to bumper (with
    probability `touch` a vehicle touches the previous one); perpendicular rows stand side by
    side, as in car parks and bus depots."""
    m = p.plan.px_per_m
    s = s0 + rng.uniform(0.0, 3.0) * m
    fill = min(1.0, fill * p.plan.density)
    while True:
        look, length, width, height = draw_vehicle(rng, m, looks)
        along = width if perpendicular else length
        if s + along > s1:
            return
        turn = (math.pi / 2 if perpendicular else 0.0) + (math.pi if rng.random() < 0.5 else 0.0)
        if rng.random() < fill:
            propose_vehicle(p, rng, s + along / 2, t, turn, look, length, width, height)
        gap = 0.0 if rng.random() < touch else rng.uniform(0.3, 2.5) * m
        if rng.random() < 0.06:
            gap += rng.uniform(4.0, 20.0) * m
        s += along + gap


def propose_tree(p: Placer, rng, s: float, t: float, radius: float) -> bool:
    """A crown of `radius` px: circle, ellipse or irregular blob."""
    m = p.plan.px_per_m
    reach = 1.2 * radius  # blobs wobble out to about this
    if s < reach or t < reach or s > p.frame.length - reach or t > p.frame.depth - reach:
        return False  # would leave the block: skip before building anything
    if not p.reaches(*p.frame.point(s, t), reach):
        return False
    kind = rng.random()
    if kind < 0.35:
        shape = shapes.ellipse(radius, radius)
    elif kind < 0.55:
        shape = shapes.ellipse(radius, radius * rng.uniform(0.75, 0.95))
    else:
        shape = shapes.blob(radius, rng, roughness=0.16)
    poly = p.frame.place(shape, s, t, rng.uniform(0, 2 * math.pi))
    height = rng.uniform(2.5, 4.5) * radius / m
    style = style_for(poly, "tree", pick(rng, TREE_COLOURS), height, 0.0, 2 * radius, 2 * radius,
                      float(rng.random()))
    return p.add("tree", poly, style)


def tree_cluster(p: Placer, rng, s: float, t: float, spread: float, count: int,
                 radius_m: tuple[float, float]) -> None:
    """Up to `count` trees around (s, t): most grow next to a recent tree of the cluster, at the
    sum of their radii (touching crowns) and away from the cluster's centre; some are scattered
    with `spread` px. Proposals that would overlap a crown of the cluster are skipped before
    they cost a polygon."""
    m = p.plan.px_per_m
    if not p.reaches(*p.frame.point(s, t), 3 * spread + 2 * count * radius_m[1] * m):
        return
    placed = np.zeros((0, 3))
    for _ in range(count * 2):
        if len(placed) >= count:
            return
        r = rng.uniform(*radius_m) * m
        if len(placed) and rng.random() < 0.7:
            s1, t1, r1 = placed[-int(rng.integers(1, min(len(placed), 4) + 1))]
            a = math.atan2(t1 - t, s1 - s) + rng.normal(0.0, 1.0)
            cs, ct = s1 + (r1 + r) * math.cos(a), t1 + (r1 + r) * math.sin(a)
        else:
            cs, ct = s + rng.normal(0, spread), t + rng.normal(0, spread)
        if len(placed) and (np.hypot(placed[:, 0] - cs, placed[:, 1] - ct)
                            < 0.97 * (placed[:, 2] + r)).any():
            continue
        if p.blocked(*p.frame.point(cs, ct)):
            continue
        if propose_tree(p, rng, cs, ct, r):
            placed = np.vstack([placed, [cs, ct, r]])


def tree_line(p: Placer, rng, s0: float, s1: float, t: float, radius_m=(1.5, 4.0)) -> None:
    """A hedgerow: crowns along s, each touching the previous one, with occasional gaps."""
    m = p.plan.px_per_m
    s, prev = s0, 0.0
    while s < s1:
        r = rng.uniform(*radius_m) * m
        s += prev + r
        if s + r > s1:
            return
        if rng.random() < 0.85 and propose_tree(p, rng, s, t + rng.normal(0, 0.3 * m), r):
            prev = r
        else:
            s += rng.uniform(2.0, 10.0) * m
            prev = 0.0


def propose_building(p: Placer, rng, poly: np.ndarray, look: str, height: float, angle: float,
                     length: float, width: float, colour=None) -> bool:
    if colour is None:
        table = {"gable": ROOF_COLOURS, "hip": ROOF_COLOURS, "warehouse": METAL_COLOURS,
                 "tank": METAL_COLOURS}.get(look, FLAT_COLOURS)
        colour = pick(rng, table)
    style = style_for(poly, look, colour, height, angle, length, width, float(rng.random()))
    return p.add("building", poly, style)


def footprint(rng, length: float, width: float) -> tuple[np.ndarray, str]:
    """A building outline (local frame) and a roof look that suits it."""
    r = rng.random()
    if r < 0.6:
        return shapes.rectangle(length, width), ("gable" if rng.random() < 0.5 else "hip")
    if r < 0.85:
        arm = width * rng.uniform(1.4, 2.2)
        return shapes.l_shape(length, width, arm, width * rng.uniform(0.5, 0.9),
                              mirror=rng.random() < 0.5), "flat"
    if r < 0.93:
        arm = width * rng.uniform(1.6, 2.4)
        return shapes.u_shape(length, width, arm, min(width, length / 3.5)), "flat"
    return shapes.ellipse(length / 2, width / 2), "tank"
