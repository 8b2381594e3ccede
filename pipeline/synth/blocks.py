"""Land-use generators: what a residential, industrial, park, forest or field block holds, plus
ships on whatever water crosses a block. Sizes are drawn in metres and converted with the plan's
pixel size. Frame coordinates (s, t) are pixels along / across the block (layout.Frame).
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.synth import objects as ob
from pipeline.synth import shapes
from pipeline.synth.layout import Placer
from pipeline.synth.plan import FIELD, FOREST, INDUSTRIAL, PARK, RESIDENTIAL, block_kinds, \
    river_direction, water_depth


def fill_block(p: Placer, rng: np.random.Generator, i: int, j: int) -> None:
    kind = int(block_kinds(p.plan, np.array(i), np.array(j)))
    if p.frame.size_v > p.frame.size_u:
        p.frame = p.frame.swapped()  # rows run along the block's long side
    {RESIDENTIAL: residential, INDUSTRIAL: industrial, PARK: park, FOREST: forest,
     FIELD: field}[kind](p, rng)
    ships(p, rng)


def _count(rng, area_px: float, px_per_m: float, m2_each: float, density: float) -> int:
    return int(rng.poisson(area_px / (px_per_m * px_per_m) / m2_each * density))


def residential(p: Placer, rng) -> None:
    """Street parking along both long sides, a row of houses behind each (terraced or detached),
    back gardens with trees, pools and sheds, and sometimes apartment blocks in the middle."""
    f, m = p.frame, p.plan.px_per_m
    lane = 2.4 * m
    for t in (lane / 2, f.depth - lane / 2):
        ob.vehicle_row(p, rng, 0.0, f.length, t, touch=0.5, looks=("car", "van", "moto"))
    setback, depth = rng.uniform(2.0, 6.0) * m, rng.uniform(8.0, 12.0) * m
    front = lane + setback
    for t0 in (front, f.depth - front - depth):
        if t0 >= front and t0 + depth <= f.depth - front:
            house_row(p, rng, t0, depth, terraced=rng.random() < 0.45)
    lo, hi = front + depth + 3 * m, f.depth - front - depth - 3 * m
    if hi - lo > 30 * m and rng.random() < 0.4:
        apartments(p, rng, lo, hi)
    gardens(p, rng, lo - 2 * m, hi + 2 * m)


def house_row(p: Placer, rng, t0: float, depth: float, terraced: bool) -> None:
    f, m = p.frame, p.plan.px_per_m
    s = rng.uniform(0.0, 6.0) * m
    fill = min(1.0, 0.9 * p.plan.density)
    while s < f.length - 4 * m:
        if terraced:
            colour = ob.pick(rng, ob.ROOF_COLOURS)
            height = rng.uniform(7.0, 10.0)
            for _ in range(rng.integers(3, 11)):
                w = rng.uniform(5.0, 8.0) * m
                if s + w > f.length:
                    break
                # Owners re-roof one house at a time: mostly the row's colour, sometimes not.
                own = colour if rng.random() < 0.7 else ob.pick(rng, ob.ROOF_COLOURS)
                tint = tuple(float(c) for c in np.clip(np.array(own) * rng.uniform(0.88, 1.12),
                                                       0, 1))
                ob.propose_building(p, rng, f.quad(s, s + w, t0, t0 + depth), "gable", height,
                                    f.angle, w, depth, tint)
                s += w  # the next house shares this wall: a touching pair
            s += rng.uniform(3.0, 10.0) * m
        else:
            w = rng.uniform(8.0, 16.0) * m
            d = min(depth * rng.uniform(0.8, 1.2), f.depth)
            shape, look = ob.footprint(rng, w, d)
            if rng.random() < fill:
                poly = f.place(shape, s + w / 2, t0 + depth / 2, rng.normal(0, 0.03))
                ob.propose_building(p, rng, poly, look, rng.uniform(5.0, 9.0), f.angle, w, d)
            s += w + rng.uniform(3.0, 10.0) * m


def apartments(p: Placer, rng, lo: float, hi: float) -> None:
    f, m = p.frame, p.plan.px_per_m
    for _ in range(rng.integers(1, 4)):
        w, d = rng.uniform(25.0, 70.0) * m, rng.uniform(12.0, min(22.0, (hi - lo) / m)) * m
        s, t = rng.uniform(w / 2, max(f.length - w / 2, w / 2)), rng.uniform(lo + d / 2, hi - d / 2)
        shape = shapes.rectangle(w, d) if rng.random() < 0.7 else shapes.l_shape(
            w, d, d * 2.2, d, mirror=rng.random() < 0.5)
        ob.propose_building(p, rng, f.place(shape, s, t), "flat", rng.uniform(12.0, 30.0),
                            f.angle, w, d)
        ob.vehicle_row(p, rng, s - w / 2, s + w / 2, t + d / 2 + 3.5 * m, touch=0.3,
                       perpendicular=True, looks=("car", "van"))


def gardens(p: Placer, rng, lo: float, hi: float) -> None:
    f, m = p.frame, p.plan.px_per_m
    if hi <= lo:
        return
    area = f.length * (hi - lo)
    for _ in range(_count(rng, area, m, 900.0, p.plan.density)):
        ob.tree_cluster(p, rng, rng.uniform(0, f.length), rng.uniform(lo, hi), 4 * m,
                        int(rng.integers(1, 6)), (1.2, 4.5))
    for _ in range(_count(rng, area, m, 1500.0, p.plan.density)):
        w, d = rng.uniform(2.0, 4.5) * m, rng.uniform(2.0, 3.5) * m
        poly = f.place(shapes.rectangle(w, d), rng.uniform(0, f.length), rng.uniform(lo, hi))
        ob.propose_building(p, rng, poly, "flat", rng.uniform(2.2, 3.2), f.angle, w, d)
    for _ in range(_count(rng, area, m, 8000.0, 1.0)):
        w, d = rng.uniform(4.0, 9.0) * m, rng.uniform(3.0, 4.5) * m
        poly = f.place(shapes.rounded_rectangle(w, d, 0.8 * m), rng.uniform(0, f.length),
                       rng.uniform(lo, hi))
        p.add_feature("pool", poly, f.angle)


def industrial(p: Placer, rng) -> None:
    """A car park along one side, sometimes a truck / bus depot along the other, one to three
    large sheds (up to 450 m: larger than a 512 px tile at 0.5 m), storage tanks, trees."""
    f, m = p.frame, p.plan.px_per_m
    lot = 16.0 * m
    t_lo, t_hi = 2.0 * m, f.depth - 2.0 * m
    if f.depth > 45 * m:
        ln = f.length * rng.uniform(0.4, 1.0)
        s0 = rng.uniform(0, f.length - ln)
        p.add_feature("parking", f.quad(s0, s0 + ln, 0.0, lot), f.angle, 2.6 * m)
        for t in (2.6 * m, lot - 2.6 * m):
            ob.vehicle_row(p, rng, s0, s0 + ln, t, touch=0.15, perpendicular=True,
                           looks=("car", "van"))
        t_lo = lot + 3.0 * m
    if f.depth > 70 * m and rng.random() < 0.45:
        looks = ("bus",) if rng.random() < 0.4 else ("truck",)
        ln = f.length * rng.uniform(0.3, 0.8)
        s0 = rng.uniform(0, f.length - ln)
        p.add_feature("yard", f.quad(s0, s0 + ln, f.depth - 20 * m, f.depth), f.angle)
        ob.vehicle_row(p, rng, s0, s0 + ln, f.depth - 9 * m, touch=0.6, perpendicular=True,
                       looks=looks, fill=0.95)
        t_hi = f.depth - 22.0 * m
    if t_hi - t_lo > 10 * m:
        sheds(p, rng, t_lo, t_hi)
    ob.tree_line(p, rng, 0.0, f.length, f.depth - 2.5 * m, (1.5, 3.5))


def sheds(p: Placer, rng, t_lo: float, t_hi: float) -> None:
    f, m = p.frame, p.plan.px_per_m
    room = t_hi - t_lo
    wanted, placed = int(rng.integers(1, 4)), 0
    for attempt in range(4 * wanted):
        if placed >= wanted:
            break
        shrink = 0.8 ** attempt  # smaller after each failure: a river or a neighbour in the way
        # Big blocks get a big shed first: 300-450 m, larger than a 512 px tile at 0.5 m.
        share = rng.uniform(0.75, 0.95) if attempt == 0 and f.length > 330 * m else \
            rng.uniform(0.35, 0.95)
        w = min(f.length * share, 450 * m) * shrink
        d = min(room * rng.uniform(0.3, 0.9), 250 * m) * shrink
        r = rng.random()
        if r < 0.6:
            shape = shapes.rectangle(w, d)
        elif r < 0.85:
            shape = shapes.l_shape(w, d * 0.55, d, w * rng.uniform(0.25, 0.45), rng.random() < 0.5)
        else:
            shape = shapes.u_shape(w, d * 0.4, d, w * 0.2)
        s, t = rng.uniform(w / 2, max(f.length - w / 2, w / 2)), rng.uniform(
            t_lo + d / 2, max(t_hi - d / 2, t_lo + d / 2))
        placed += ob.propose_building(p, rng, f.place(shape, s, t), "warehouse",
                                      rng.uniform(7.0, 14.0), f.angle, w, d)
    if rng.random() < 0.3:
        r = rng.uniform(4.0, 12.0) * m
        s0, t0 = rng.uniform(0, f.length), rng.uniform(t_lo, t_hi)
        for k in range(int(rng.integers(2, 7))):
            s, t = s0 + (k % 3) * (2 * r + 1.5 * m), t0 + (k // 3) * (2 * r + 1.5 * m)
            ob.propose_building(p, rng, f.place(shapes.ellipse(r, r), s, t), "tank",
                                rng.uniform(8.0, 15.0), f.angle, 2 * r, 2 * r)


def park(p: Placer, rng) -> None:
    f, m = p.frame, p.plan.px_per_m
    area = f.length * f.depth
    for _ in range(_count(rng, area, m, 1800.0, p.plan.density) + 1):
        ob.tree_cluster(p, rng, rng.uniform(0, f.length), rng.uniform(0, f.depth),
                        rng.uniform(4.0, 15.0) * m, int(rng.integers(3, 20)), (1.5, 6.0))
    if rng.random() < 0.4:
        r = rng.uniform(3.0, 9.0) * m
        poly = f.place(shapes.ellipse(r, r * rng.uniform(0.6, 1.0)), rng.uniform(r, f.length - r),
                       rng.uniform(r, f.depth - r))
        ob.propose_building(p, rng, poly, "tank", rng.uniform(3.0, 6.0), f.angle, 2 * r, 2 * r)
    ob.tree_line(p, rng, 0.0, f.length, 2.5 * m)


def forest(p: Placer, rng) -> None:
    f, m = p.frame, p.plan.px_per_m
    for _ in range(_count(rng, f.length * f.depth, m, 2500.0, p.plan.density) + 1):
        ob.tree_cluster(p, rng, rng.uniform(0, f.length), rng.uniform(0, f.depth),
                        rng.uniform(6.0, 20.0) * m, int(rng.integers(5, 25)), (2.0, 6.5))


def field(p: Placer, rng) -> None:
    """Crops (drawn as ground), hedgerows on one or two sides, sometimes a farmstead."""
    f, m = p.frame, p.plan.px_per_m
    ob.tree_line(p, rng, 0.0, f.length, 3.0 * m)
    if rng.random() < 0.5:
        ob.tree_line(p, rng, 0.0, f.length, f.depth - 3.0 * m)
    if rng.random() < 0.35 and f.depth > 50 * m:
        s, t = rng.uniform(20 * m, max(f.length - 40 * m, 21 * m)), 12 * m
        w, d = rng.uniform(15.0, 40.0) * m, rng.uniform(10.0, 20.0) * m
        ob.propose_building(p, rng, f.quad(s, s + w, t, t + d), "gable", 8.0, f.angle, w, d)
        shape, look = ob.footprint(rng, rng.uniform(9.0, 14.0) * m, rng.uniform(8.0, 11.0) * m)
        ob.propose_building(p, rng, f.place(shape, s + w + 12 * m, t + 8 * m), look, 7.0,
                            f.angle, 12 * m, 9 * m)
        look, ln, wd, h = ob.draw_vehicle(rng, m, ("truck", "car"))
        ob.propose_vehicle(p, rng, s + w / 2, t + d + 5 * m, rng.uniform(0, 6.3), look, ln, wd, h)
        ob.tree_cluster(p, rng, s + w + 25 * m, t + 20 * m, 5 * m, 6, (2.0, 5.0))


def ships(p: Placer, rng) -> None:
    """Ships and boats on the water inside the block: moving or anchored along the flow, and
    sometimes a marina pier with boats moored side by side (touching)."""
    f, m = p.frame, p.plan.px_per_m
    ss, tt = np.meshgrid(np.linspace(0, f.length, 12), np.linspace(0, f.depth, 12))
    xy = np.array([f.point(s, t) for s, t in zip(ss.ravel(), tt.ravel())])
    wet = water_depth(p.plan, xy[:, 0], xy[:, 1]) > 0
    if not wet.any():
        return
    area = wet.mean() * f.length * f.depth
    wanted = _count(rng, area, m, 4000.0, p.plan.density)
    wet_xy = xy[wet]
    jitter = max(f.length, f.depth) / 11 / 2  # half the sample spacing
    placed = 0
    for _ in range(wanted * 6):
        if placed >= wanted:
            break
        x, y = wet_xy[rng.integers(len(wet_xy))] + rng.uniform(-jitter, jitter, 2)
        placed += _ship(p, rng, float(x), float(y))
    if wet.mean() > 0.1 and rng.random() < 0.4:
        marina(p, rng, wet_xy)


def _ship(p: Placer, rng, x: float, y: float) -> bool:
    m = p.plan.px_per_m
    depth = p.water_depth(x, y)
    r = rng.random()
    length = rng.uniform(5.0, 14.0) if r < 0.6 else rng.uniform(15.0, 45.0) if r < 0.9 else \
        rng.uniform(50.0, 150.0)
    length *= m
    beam = length * rng.uniform(0.2, 0.32)
    if depth < beam / 2 + 2 * m:
        return False
    angle = river_direction(p.plan, x, y) + rng.normal(0, 0.12) + (math.pi if rng.random() < 0.5
                                                                   else 0.0)
    poly = shapes.place(shapes.hull(length, beam), x, y, angle)
    look = "boat" if length < 15 * m else "ship"
    style = ob.style_for(poly, look, ob.pick(rng, ob.HULL_COLOURS), rng.uniform(1.5, 8.0), angle,
                         length, beam, float(rng.random()))
    if not p.add("ship", poly, style, water=True):
        return False
    if rng.random() < 0.4:
        c, s = math.cos(angle), math.sin(angle)
        tail = np.array([[-length / 2, -beam / 2], [-length / 2, beam / 2],
                         [-length * 2.0, beam * 1.2], [-length * 2.0, -beam * 1.2]])
        wake = np.column_stack([x + c * tail[:, 0] - s * tail[:, 1],
                                y + s * tail[:, 0] + c * tail[:, 1]])
        if p.frame.contains(wake) and (water_depth(p.plan, wake[:, 0], wake[:, 1]) > 0).all():
            p.add_feature("wake", wake, angle, length)
    return True


def marina(p: Placer, rng, wet_points: np.ndarray) -> None:
    """A pier along the flow with boats moored side by side on one or both sides."""
    m = p.plan.px_per_m
    x, y = wet_points[rng.integers(len(wet_points))]
    flow = river_direction(p.plan, x, y)
    c, s = math.cos(flow), math.sin(flow)
    pier_len, pier_w = rng.uniform(30.0, 120.0) * m, 2.0 * m
    pier = shapes.place(shapes.rectangle(pier_len, pier_w), x, y, flow)
    deep = water_depth(p.plan, pier[:, 0], pier[:, 1]) > 2 * m
    if not p.frame.contains(pier) or not deep.all():
        return
    p.add_feature("pier", pier, flow)
    for side in (-1.0, 1.0):
        boat_len = rng.uniform(7.0, 14.0) * m
        off = side * (pier_w / 2 + boat_len / 2)
        along = -pier_len / 2
        while along < pier_len / 2:
            beam = boat_len * rng.uniform(0.28, 0.36)
            along += beam / 2
            bx, by = x + c * along - s * off, y + s * along + c * off
            turn = flow + side * math.pi / 2
            poly = shapes.place(shapes.hull(boat_len, beam), bx, by, turn)
            style = ob.style_for(poly, "boat", ob.pick(rng, ob.HULL_COLOURS[:3]), 2.0, turn,
                                 boat_len, beam, float(rng.random()))
            if rng.random() < 0.85:
                p.add("ship", poly, style, water=True)
            along += beam / 2 + (0.0 if rng.random() < 0.6 else rng.uniform(0.3, 1.5) * m)
