"""Drawing instance masks on pictures, the way Matterport's `display_instances` and torchvision's
`draw_segmentation_masks` + `draw_bounding_boxes` show them: each mask filled with its class
colour at ~45 % opacity, its boundary outlined in the same colour, and optionally its box with a
"class 0.93" caption on a dark background.

Pure drawing (numpy + Pillow) apart from `render_overlay`, the demo's one-call picture of a whole
scene. Frames:
  scene pixels: x right, y down; boxes and windows (x0, y0, x1, y1) half-open.
  `View`: a scene window drawn onto a picture of (height, width) px; picture pixel (r, c) shows
      the scene point at its centre, (x0 + (c + 0.5) / sx, y0 + (r + 0.5) / sy), where
      sx = width / (x1 - x0) and sy = height / (y1 - y0) (1.0 at native resolution).
  `Shape`: one instance; its mask is box-local, (y1 - y0, x1 - x0) bool, pixel [i, j] = scene
      pixel (x0 + j, y0 + i): the output's `mask_rle` at `px_bbox`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.rle import decode

# Okabe-Ito (colour-blind safe, distinguishable on aerial imagery; black left out because
# shadows and water are dark), then white, by class id 1, 2, 3, ...
PALETTE = ((230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178),
           (213, 94, 0), (204, 121, 167), (255, 255, 255))
CAPTION_BACKGROUND = (0, 0, 0, 170)  # dark box behind caption text: legible on any image
TITLE_BACKGROUND = (40, 40, 40)


def class_colour(class_id: int) -> tuple[int, int, int]:
    """RGB of a class id (1-based; the palette repeats after 8 classes)."""
    return PALETTE[(int(class_id) - 1) % len(PALETTE)]


@dataclass(frozen=True)
class View:
    """A scene window (x0, y0, x1, y1) drawn onto a (height, width) picture (see module doc)."""

    x0: int
    y0: int
    x1: int
    y1: int
    width: int
    height: int

    @classmethod
    def fit(cls, window: Sequence[int], max_side: int) -> "View":
        """The window at native resolution, or scaled down so its longer side is `max_side`."""
        x0, y0, x1, y1 = (int(v) for v in window)
        scale = min(1.0, max_side / max(x1 - x0, y1 - y0))
        return cls(x0, y0, x1, y1, max(1, round((x1 - x0) * scale)),
                   max(1, round((y1 - y0) * scale)))

    @property
    def sx(self) -> float:
        return self.width / (self.x1 - self.x0)

    @property
    def sy(self) -> float:
        return self.height / (self.y1 - self.y0)

    @property
    def window(self) -> tuple[int, int, int, int]:
        return self.x0, self.y0, self.x1, self.y1


@dataclass(frozen=True)
class Shape:
    """One instance to draw: class, box (scene px, half-open), box-local COCO RLE, caption."""

    class_id: int
    x0: int
    y0: int
    x1: int
    y1: int
    rle: dict
    caption: str = ""
    score: float = 1.0

    @classmethod
    def from_row(cls, row: dict[str, Any], caption: str = "") -> "Shape":
        """From an instance row (`px_bbox`, `mask_rle`, `class_id`, optional `score`)."""
        box, rle = row["px_bbox"], row["mask_rle"]
        return cls(int(row["class_id"]), int(box["x0"]), int(box["y0"]), int(box["x1"]),
                   int(box["y1"]), {"size": [int(v) for v in rle["size"]],
                                    "counts": bytes(rle["counts"])},
                   caption, float(row.get("score", 1.0)))


def sample_mask(shape: Shape, view: View, margin: int = 1) -> tuple[int, int, np.ndarray]:
    """The shape's mask on the picture grid: (row0, col0, mask bool (h, w)) where mask[0, 0] is
    picture pixel (row0, col0); rows / cols may run past the picture (the caller crops).

    Each picture pixel takes the mask value at its centre (nearest sampling: exact at native
    resolution, a down-sample in an overview). `margin` empty pixels surround the box so an
    erosion finds the boundary everywhere, also where the picture edge cuts the mask. A mask
    that no pixel centre hits (an object smaller than a picture pixel in an overview) becomes
    the one pixel under its box centre: every instance in view stays visible.
    """
    rows = _centres(shape.y0, shape.y1, view.y0, view.sy, margin)
    cols = _centres(shape.x0, shape.x1, view.x0, view.sx, margin)
    src_r = np.floor(view.y0 + (rows + 0.5) / view.sy).astype(np.int64) - shape.y0
    src_c = np.floor(view.x0 + (cols + 0.5) / view.sx).astype(np.int64) - shape.x0
    ok_r = (src_r >= 0) & (src_r < shape.y1 - shape.y0)
    ok_c = (src_c >= 0) & (src_c < shape.x1 - shape.x0)
    full = decode(shape.rle)
    mask = full[np.ix_(np.clip(src_r, 0, full.shape[0] - 1), np.clip(src_c, 0, full.shape[1] - 1))]
    mask &= ok_r[:, None] & ok_c[None, :]
    if mask.any():
        return int(rows[0]), int(cols[0]), mask
    cy = math.floor(((shape.y0 + shape.y1) / 2 - view.y0) * view.sy)
    cx = math.floor(((shape.x0 + shape.x1) / 2 - view.x0) * view.sx)
    dot = np.zeros((2 * margin + 1, 2 * margin + 1), bool)
    dot[margin, margin] = True
    return cy - margin, cx - margin, dot


def _centres(lo: int, hi: int, origin: int, scale: float, margin: int) -> np.ndarray:
    """Picture indexes whose pixel centres fall in scene [lo, hi), widened by `margin`."""
    first = math.ceil((lo - origin) * scale - 0.5)
    stop = max(math.ceil((hi - origin) * scale - 0.5), first)
    return np.arange(first - margin, stop + margin)


def blend_shapes(rgb: np.ndarray, shapes: Iterable[Shape], view: View, alpha: float = 0.45,
                 outline: bool = True) -> np.ndarray:
    """(H, W, 3) uint8 picture of `view` -> the same with every shape filled and outlined.

    Later shapes are drawn over earlier ones (pass them in ascending score: the best on top);
    a fill is blended with the original pixels, not with an earlier fill, so overlaps never
    darken into mud. Outlines are per instance, so touching objects stay apart.
    """
    out = rgb.astype(np.float32)
    height, width = rgb.shape[:2]
    for shape in shapes:
        row0, col0, mask = sample_mask(shape, view)
        edge = mask & ~_eroded(mask) if outline else np.zeros_like(mask)
        crop = _crop(row0, col0, mask.shape, height, width)
        if crop is None:
            continue
        here, there = crop
        fill, line = mask[there], edge[there]
        colour = np.asarray(class_colour(shape.class_id), np.float32)
        region = out[here]
        region[fill] = (1 - alpha) * rgb[here][fill] + alpha * colour
        region[line] = colour
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _crop(row0: int, col0: int, shape: tuple[int, int], height: int, width: int):
    """(picture slices, mask slices) of the part of a mask placed at (row0, col0) that lies
    inside a (height, width) picture; None when nothing does."""
    r0, c0 = max(row0, 0), max(col0, 0)
    r1, c1 = min(row0 + shape[0], height), min(col0 + shape[1], width)
    if r0 >= r1 or c0 >= c1:
        return None
    return ((slice(r0, r1), slice(c0, c1)),
            (slice(r0 - row0, r1 - row0), slice(c0 - col0, c1 - col0)))


def _eroded(mask: np.ndarray) -> np.ndarray:
    """4-neighbour erosion of a bool mask (pixels outside count as empty)."""
    padded = np.pad(mask, 1)
    return (padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1]
            & padded[1:-1, :-2] & padded[1:-1, 2:])


def draw_labels(image: Image.Image, shapes: Sequence[Shape], view: View,
                font_size: int | None = None) -> Image.Image:
    """Each shape's box (1 px, class colour) and its caption in white on a dark box, above the
    box (inside it when the box touches the top edge). Captions are placed best score first
    and one that would overlap an earlier caption is left out: a crowded view stays readable
    (its boxes and masks are still drawn)."""
    font = caption_font(font_size or default_font_size(view))
    draw = ImageDraw.Draw(image)
    for s in shapes:
        draw.rectangle(_picture_box(s, view), outline=class_colour(s.class_id), width=1)
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    text_draw = ImageDraw.Draw(layer)
    placed: list[tuple[int, int, int, int]] = []
    for s in sorted(shapes, key=lambda s: -s.score):
        if not s.caption:
            continue
        box = _caption_box(s, view, font, image.size)
        if any(_overlaps(box, other) for other in placed):
            continue
        placed.append(box)
        text_draw.rectangle(box, fill=CAPTION_BACKGROUND)
        text_draw.text((box[0] + 2, box[1] + 1), s.caption, font=font, fill=(255, 255, 255, 255))
    return Image.alpha_composite(image.convert("RGBA"), layer).convert("RGB")


def _picture_box(s: Shape, view: View) -> tuple[int, int, int, int]:
    """The shape's box in picture pixels, inclusive corners as Pillow draws them."""
    x0 = math.floor((s.x0 - view.x0) * view.sx)
    y0 = math.floor((s.y0 - view.y0) * view.sy)
    x1 = max(math.ceil((s.x1 - view.x0) * view.sx) - 1, x0)
    y1 = max(math.ceil((s.y1 - view.y0) * view.sy) - 1, y0)
    return x0, y0, x1, y1


def _caption_box(s: Shape, view: View, font, size: tuple[int, int]) -> tuple[int, int, int, int]:
    left, top, right, bottom = font.getbbox(s.caption)
    w, h = right + 4, bottom + 3  # 2 px padding; bottom includes the font's ascent offset
    bx0, by0, _, _ = _picture_box(s, view)
    y = by0 - h if by0 - h >= 0 else max(by0 + 1, 0)
    x = min(max(bx0, 0), max(size[0] - w, 0))
    y = min(y, max(size[1] - h, 0))
    return x, y, x + w - 1, y + h - 1


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def default_font_size(view: View) -> int:
    """Caption size in px: 12 on small pictures, up to 16 on big ones (legible, not shouting)."""
    return int(np.clip(round(min(view.width, view.height) / 48), 12, 16))


@lru_cache(maxsize=8)
def caption_font(size: int):
    """Pillow's bundled scalable font (Pillow >= 10.1) at `size` px; its bitmap font before."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: no size argument
        return ImageFont.load_default()


def titled(image: Image.Image, title: str, font_size: int = 14) -> Image.Image:
    """`image` under a dark title bar holding `title` in white (one line)."""
    font = caption_font(font_size)
    bar = font_size + 10
    while len(title) > 1 and font.getlength(title) > image.width - 12:
        title = title[:-2] + "…"  # cut to fit a narrow panel rather than spill over
    out = Image.new("RGB", (image.width, image.height + bar), TITLE_BACKGROUND)
    ImageDraw.Draw(out).text((6, 4), title, font=font, fill=(255, 255, 255))
    out.paste(image, (0, bar))
    return out


def side_by_side(images: Sequence[Image.Image], gap: int = 6) -> Image.Image:
    """Pictures left to right, top-aligned, `gap` px of the title colour between them."""
    width = sum(i.width for i in images) + gap * (len(images) - 1)
    out = Image.new("RGB", (width, max(i.height for i in images)), TITLE_BACKGROUND)
    x = 0
    for image in images:
        out.paste(image, (x, 0))
        x += image.width + gap
    return out


def to_rgb8(pixels: np.ndarray, valid: np.ndarray | None = None, stretch: bool = True
            ) -> np.ndarray:
    """(C, h, w) raw samples (C = 1 or 3) -> (h, w, 3) uint8; invalid pixels black.

    stretch: each band linearly from its 2nd to its 98th percentile over valid pixels to 0..255
    (uint16 reflectance, float data); False: samples clipped to 0..255 as they are (uint8
    imagery is shown exactly as stored).
    """
    pixels = pixels.astype(np.float32)
    valid = np.ones(pixels.shape[1:], bool) if valid is None else valid
    if stretch:
        for band in pixels:
            values = band[valid]
            lo, hi = np.percentile(values, [2, 98]) if values.size else (0.0, 1.0)
            band[:] = (band - lo) / max(hi - lo, 1e-6) * 255
    scaled = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    scaled[:, ~valid] = 0
    if scaled.shape[0] == 1:
        scaled = np.repeat(scaled, 3, axis=0)
    return np.ascontiguousarray(np.transpose(scaled, (1, 2, 0)))


def render_overlay(scene_uri: str, rows: Iterable[dict[str, Any]], out_png: str,
                   max_side: int = 1600, alpha: float = 0.45) -> tuple[int, int]:
    """Write `out_png`: the whole scene scaled so its longer side is at most `max_side` (a
    decimated read: never the full scene in memory), with every instance row (`class_id`,
    `px_bbox`, `mask_rle`) filled and outlined. Returns the picture's (width, height).
    `maskray render` (pipeline/render.py) adds windows, captions and ground truth."""
    import rasterio
    from rasterio.enums import Resampling

    # a small GDAL block cache: each block is decoded once, so caching it only costs memory
    with rasterio.Env(GDAL_CACHEMAX=64), rasterio.open(scene_uri) as src:
        view = View.fit((0, 0, src.width, src.height), max_side)
        bands = [1, 2, 3] if src.count >= 3 else [1]
        pixels = src.read(bands, out_shape=(len(bands), view.height, view.width),
                          resampling=Resampling.average if view.sx < 1 else Resampling.nearest)
        stretch = src.dtypes[0] != "uint8"
    shapes = [Shape.from_row(row) for row in rows]
    picture = blend_shapes(to_rgb8(pixels, stretch=stretch), shapes, view, alpha)
    Image.fromarray(picture).save(out_png)
    return view.width, view.height
