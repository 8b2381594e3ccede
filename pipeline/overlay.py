"""Overlay pictures: a scene (down-sampled to fit) with its instance masks filled in per-class
colours and outlined, the way Matterport's and torchvision's visualisations show them.

Reads only an overview of the scene (rasterio decimated read) and each instance's box-local
mask, so a large scene never sits in memory at full resolution.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import rasterio
from PIL import Image

from pipeline.rle import decode

# Distinguishable on aerial imagery (Okabe-Ito, colour-blind safe), by class id.
PALETTE = ((230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178),
           (213, 94, 0), (204, 121, 167), (255, 255, 255))


def render_overlay(scene_uri: str, rows: Iterable[dict[str, Any]], out_png: str,
                   max_side: int = 1600, alpha: float = 0.45) -> tuple[int, int]:
    """Write `out_png`: the scene scaled so its longer side is at most `max_side`, with every row
    (instance rows as read from the output) drawn. Returns the picture's (width, height)."""
    with rasterio.open(scene_uri) as src:
        scale = min(1.0, max_side / max(src.width, src.height))
        w, h = max(1, round(src.width * scale)), max(1, round(src.height * scale))
        bands = [1, 2, 3] if src.count >= 3 else [1]
        pixels = src.read(bands, out_shape=(len(bands), h, w)).astype(np.float32)
    base = _to_rgb8(pixels)
    colour = np.zeros_like(base)
    cover = np.zeros((h, w), dtype=bool)
    outline = np.zeros((h, w), dtype=bool)
    for row in rows:
        box = row["px_bbox"]
        x0, y0 = int(box["x0"] * scale), int(box["y0"] * scale)
        bw = max(1, round((box["x1"] - box["x0"]) * scale))
        bh = max(1, round((box["y1"] - box["y0"]) * scale))
        mask = decode({"size": list(row["mask_rle"]["size"]), "counts": row["mask_rle"]["counts"]})
        small = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((bw, bh), Image.NEAREST)) > 0
        ys, xs = slice(y0, min(y0 + bh, h)), slice(x0, min(x0 + bw, w))
        small = small[: ys.stop - y0, : xs.stop - x0]
        colour[ys, xs][small] = PALETTE[(int(row["class_id"]) - 1) % len(PALETTE)]
        cover[ys, xs] |= small
        outline[ys, xs] |= small & ~_eroded(small)  # per instance: touching objects stay apart
    blended = base.astype(np.float32)
    blended[cover] = (1 - alpha) * blended[cover] + alpha * colour[cover]
    blended[outline] = colour[outline]
    Image.fromarray(blended.astype(np.uint8)).save(out_png)
    return w, h


def _eroded(mask: np.ndarray) -> np.ndarray:
    """4-neighbour erosion of a bool mask (pixels outside count as empty)."""
    padded = np.pad(mask, 1)
    return (padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1]
            & padded[1:-1, :-2] & padded[1:-1, 2:])


def _to_rgb8(pixels: np.ndarray) -> np.ndarray:
    """(C, h, w) raw values -> (h, w, 3) uint8, stretched between the 2nd and 98th percentiles."""
    lo, hi = np.percentile(pixels, [2, 98])
    scaled = np.clip((pixels - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
    if scaled.shape[0] == 1:
        scaled = np.repeat(scaled, 3, axis=0)
    return np.transpose(scaled, (1, 2, 0))
