"""What an object looks like from above: roof facets lit by the sun, windscreens, decks, crowns.

Each look is a pure function `(style, a, b, edge, grain, sun) -> (3, H, W) float32 RGB` over the
pixels of an object's crop, where
* a, b: (H, W) local coordinates, a along the object's long axis and b across it, scaled so the
  footprint spans about [-1, 1] on both (a = 1 at the front / one gable end);
* edge: (H, W) bool, pixels on the mask's outline (computed on the whole mask, so it does not
  depend on the window);
* grain: (H, W) uniform [0, 1) noise hashed from global pixel coordinates;
* sun: (sx, sy), unit vector towards the sun in scene pixels (x right, y down).
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.synth.layout import Style

GLASS = np.array([0.10, 0.11, 0.13], np.float32)
WHITE = np.array([0.90, 0.90, 0.88], np.float32)


def _lit(angle: float, sun) -> float:
    """How much a facet whose outward normal points at `angle` faces the sun, in [-1, 1]."""
    return math.cos(angle) * sun[0] + math.sin(angle) * sun[1]


def _rgb(colour, *shape) -> np.ndarray:
    return np.broadcast_to(np.asarray(colour, np.float32)[:, None, None], (3, *shape)).copy()


def gable(st: Style, a, b, edge, grain, sun) -> np.ndarray:
    """Two roof planes meeting at a ridge along the long axis; tiles as faint stripes."""
    side = np.where(b >= 0, _lit(st.angle + math.pi / 2, sun), _lit(st.angle - math.pi / 2, sun))
    shade = 1.0 + 0.28 * side
    tiles = 1.0 + 0.05 * np.sin(a * st.length * 1.6)
    ridge = np.abs(b) * st.width / 2 < 0.8
    out = _rgb(st.colour, *a.shape) * (shade * tiles * (0.94 + 0.12 * grain))[None]
    out[:, ridge] *= 1.12
    out[:, edge] *= 0.8
    return out


def hip(st: Style, a, b, edge, grain, sun) -> np.ndarray:
    """Four roof planes: the two ends slope along the long axis, the two sides across it."""
    ratio = st.length / max(st.width, 1e-6)
    end = np.abs(a) * ratio - (ratio - 1.0) > np.abs(b)
    along = np.where(a >= 0, _lit(st.angle, sun), _lit(st.angle + math.pi, sun))
    across = np.where(b >= 0, _lit(st.angle + math.pi / 2, sun), _lit(st.angle - math.pi / 2, sun))
    shade = 1.0 + 0.26 * np.where(end, along, across)
    out = _rgb(st.colour, *a.shape) * (shade * (0.94 + 0.12 * grain))[None]
    out[:, edge] *= 0.8
    return out


def flat(st: Style, a, b, edge, grain, sun) -> np.ndarray:
    """A flat roof: a parapet outline, stains and a few rooftop units."""
    out = _rgb(st.colour, *a.shape) * (0.95 + 0.08 * grain)[None]
    rng = np.random.default_rng(int(st.variant * 1e9))
    for _ in range(rng.integers(0, 5)):
        ua, ub = rng.uniform(-0.6, 0.6, 2)
        # Units of 3 to 7 px whatever the roof size (a and b are normalised to the roof).
        sa, sb = rng.uniform(1.5, 3.5) / (st.length / 2), rng.uniform(1.5, 3.5) / (st.width / 2)
        unit = (np.abs(a - ua) < sa) & (np.abs(b - ub) < sb)
        out[:, unit] = out[:, unit] * 0.6 + 0.35
    out[:, edge] = out[:, edge] * 0.75 + 0.12
    return out


def warehouse(st: Style, a, b, edge, grain, sun) -> np.ndarray:
    """Corrugated metal roof with rows of skylights."""
    ribs = 1.0 + 0.05 * np.sin(b * st.width / 2 * 2.2)
    out = _rgb(st.colour, *a.shape) * (ribs * (0.96 + 0.06 * grain))[None]
    spacing = max(st.length / 2 * 0.12, 6.0)
    sky = (np.abs((a * st.length / 2) % spacing - spacing / 2) < 1.2) & (np.abs(b) < 0.8)
    if st.variant < 0.6:
        out[:, sky] = out[:, sky] * 0.5 + np.array([0.25, 0.3, 0.35], np.float32)[:, None]
    out[:, edge] *= 0.75
    return out


def tank(st: Style, a, b, edge, grain, sun) -> np.ndarray:
    """A round roof (storage tank, kiosk): a shallow cone lit from one side, with a rim."""
    r = np.sqrt(a * a + b * b)
    c, s = math.cos(st.angle), math.sin(st.angle)
    dx, dy = a * c - b * s, a * s + b * c
    shade = 1.0 + 0.25 * (dx * sun[0] + dy * sun[1])
    out = _rgb(st.colour, *a.shape) * (shade * (0.96 + 0.06 * grain))[None]
    out[:, (r > 0.85) | edge] *= 0.78
    return out


def vehicle(st: Style, a, b, edge, grain, sun) -> np.ndarray:
    """Body colour, dark windscreen and rear window, lighter roof; trucks have a cab."""
    out = _rgb(st.colour, *a.shape) * (0.95 + 0.08 * grain)[None]
    inner = np.abs(b) < 0.78
    if st.look == "car":
        out[:, inner & (a > 0.12) & (a < 0.45)] = GLASS[:, None]
        out[:, inner & (a < -0.55) & (a > -0.78)] = GLASS[:, None]
        out[:, inner & (a >= -0.55) & (a <= 0.12)] *= 1.1
    elif st.look == "van":
        out[:, inner & (a > 0.6) & (a < 0.8)] = GLASS[:, None]
    elif st.look == "truck":
        trailer = WHITE if st.variant < 0.6 else np.array([0.55, 0.56, 0.58], np.float32)
        out[:, a < 0.62] = trailer[:, None]
        out[:, (a >= 0.62) & (a < 0.68)] = GLASS[:, None] * 0.5
    elif st.look == "bus":
        units = (np.abs(b) < 0.5) & (np.abs((a * 6) % 2 - 1) < 0.35)
        out[:, units] = out[:, units] * 0.75 + 0.15
    out[:, edge] *= 0.7
    return out


def vessel(st: Style, a, b, edge, grain, sun) -> np.ndarray:
    """Hull colour on the outline, a deck inside it, a white superstructure towards the stern;
    big ships sometimes carry rows of hatches or containers."""
    out = _rgb(st.colour, *a.shape) * (0.95 + 0.08 * grain)[None]
    deck_colour = np.array([0.62, 0.55, 0.45] if st.variant < 0.4 else [0.35, 0.38, 0.36],
                           np.float32)
    deck = ~edge & (np.abs(b) < 0.8)
    out[:, deck] = out[:, deck] * 0.35 + deck_colour[:, None] * 0.65
    cabin = (a > -0.75) & (a < -0.35) & (np.abs(b) < 0.65)
    out[:, cabin] = WHITE[:, None] * (0.9 + 0.1 * grain[cabin])
    if st.look == "ship" and st.variant > 0.5:
        hatch = (a > -0.3) & (a < 0.6) & (np.abs(b) < 0.7) & ((a * 12) % 1 < 0.8)
        palette = np.array([[0.55, 0.18, 0.14], [0.18, 0.30, 0.50], [0.60, 0.58, 0.50]],
                           np.float32)
        out[:, hatch] = palette[int(st.variant * 97) % 3][:, None]
    return out


def tree(st: Style, a, b, edge, grain, sun) -> np.ndarray:
    """A crown: a dome brighter on the sunny side, darker at the rim, leafy grain."""
    r2 = a * a + b * b
    shade = 1.0 + 0.35 * (a * sun[0] + b * sun[1]) - 0.3 * r2
    leaves = 0.72 + 0.5 * grain
    out = _rgb(st.colour, *a.shape) * np.clip(shade * leaves, 0.3, 1.8)[None]
    out[:, edge] *= 0.75
    return out


LOOKS = {"gable": gable, "hip": hip, "flat": flat, "warehouse": warehouse, "tank": tank,
         "car": vehicle, "van": vehicle, "truck": vehicle, "bus": vehicle, "moto": vehicle,
         "boat": vessel, "ship": vessel, "tree": tree}
