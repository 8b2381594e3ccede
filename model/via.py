"""VGG Image Annotator (VIA) JSON -> a COCO dataset dict, in memory (what `CocoChips` trains on).

Formats read (`is_via` tells them from COCO):
- VIA 2 annotation export: {"<filename><size>": {"filename", "size", "regions": [region, ...],
  "file_attributes"}, ...}
- VIA 2 project file: {"_via_settings", "_via_img_metadata": {...the export above...},
  "_via_attributes"}
- VIA 1 export (Matterport's balloon demo): as VIA 2 but "regions": {"0": region, "1": ...}
A region is {"shape_attributes": {"name": shape, ...}, "region_attributes": {attr: value}}.
VIA 3 (`{"project", "file", "metadata"}`) is not read.

Coordinate frame: VIA shape coordinates are image pixels, x right and y down, (0, 0) the top-left
corner of the top-left pixel, the same frame as COCO polygons; they are copied unchanged. Shapes:
polygon / polyline (all_points_x, all_points_y; a polyline is closed), rect (x, y, width, height),
circle (cx, cy, r), ellipse (cx, cy, rx, ry, theta radians, rotating x towards y, i.e. clockwise
on screen). Circles and ellipses become polygons whose vertices lie on the curve, at most 0.25 px
apart from it. Shapes without area (point, fewer than 3 vertices, zero size) are skipped: they
are counted in the result's "info" {"skipped_regions": {shape: count}} and logged as a warning.

VIA stores no image size: width and height are read from the header of `image_root / filename`.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

from pycocotools import mask as mask_utils

from pipeline.errors import MaskrayError

log = logging.getLogger(__name__)
MAX_ERROR_PX = 0.25  # largest gap between a circle / ellipse and its polygon


def is_via(data: Any) -> bool:
    """True for a VIA 1 / VIA 2 annotation export or a VIA 2 project file (parsed JSON)."""
    if isinstance(data, dict) and isinstance(data.get("_via_img_metadata"), dict):
        return True
    return (isinstance(data, dict) and bool(data)
            and all(isinstance(v, dict) and "filename" in v and "regions" in v
                    for v in data.values()))


def via_files(data: dict) -> list[dict]:
    """The per-image entries of a VIA JSON, sorted by filename (the order of COCO image ids)."""
    entries = data["_via_img_metadata"] if "_via_img_metadata" in data else data
    return [entries[k] for k in sorted(entries, key=lambda k: (str(entries[k]["filename"]), k))]


def via_to_coco(data: dict, image_root: str | Path, class_attribute: str | None = None,
                default_class: str | None = None) -> dict[str, Any]:
    """A VIA JSON (see the module docstring) as a COCO dataset dict.

    Returns {"images": [{"id", "file_name", "width", "height"}], "annotations": [{"id",
    "image_id", "category_id", "segmentation": [[x0, y0, x1, y1, ...]], "area", "bbox" (xywh),
    "iscrowd": 0}], "categories": [{"id", "name"}], "info": {"skipped_regions": {shape: n}}};
    ids 1..N: images by filename, categories by name, annotations in image then region order.
    An image with no region is kept (a negative). Class of a region: see `region_class`.
    Raises MaskrayError for an unreadable image, a region without a class or a malformed shape.
    """
    root = Path(image_root)
    images: list[dict[str, Any]] = []
    found: list[tuple[int, str, list[float]]] = []  # (image_id, class, polygon)
    skipped: Counter[str] = Counter()
    for image_id, entry in enumerate(via_files(data), start=1):
        name = str(entry["filename"])
        width, height = _image_size(root / name)
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        regions = entry.get("regions") or []
        if isinstance(regions, dict):  # VIA 1: {"0": region, "1": region, ...}
            regions = [regions[k] for k in sorted(regions, key=_region_key)]
        for index, region in enumerate(regions):
            shape = region.get("shape_attributes") or {}
            try:
                polygon = shape_polygon(shape)
            except (KeyError, TypeError, ValueError) as exc:
                raise MaskrayError(f"VIA {name}: region {index} has a malformed "
                                   f"{shape.get('name')!r} shape ({exc!r})") from exc
            if polygon is None:
                skipped[str(shape.get("name"))] += 1
                continue
            cls = region_class(region.get("region_attributes") or {}, class_attribute,
                               default_class)
            if cls is None:
                raise MaskrayError(
                    f"VIA {name}: region {index} has no class (region_attributes "
                    f"{region.get('region_attributes')!r}); give each region one class "
                    f"attribute, e.g. {{'name': 'building'}}")
            found.append((image_id, cls, polygon))
    if skipped:
        log.warning("VIA: skipped %d region(s) without area: %s", sum(skipped.values()),
                    ", ".join(f"{n} {s}" for s, n in sorted(skipped.items())))
    category_id = {name: i for i, name in enumerate(sorted({c for _, c, _ in found}), start=1)}
    size = {img["id"]: (img["height"], img["width"]) for img in images}
    annotations = []
    for ann_id, (image_id, cls, polygon) in enumerate(found, start=1):
        rle = mask_utils.merge(mask_utils.frPyObjects([polygon], *size[image_id]))
        annotations.append({"id": ann_id, "image_id": image_id, "category_id": category_id[cls],
                            "segmentation": [polygon], "area": float(mask_utils.area(rle)),
                            "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": 0})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": i, "name": n} for n, i in category_id.items()],
            "info": {"description": "converted from VIA", "skipped_regions": dict(skipped)}}


def shape_polygon(shape: dict[str, Any]) -> list[float] | None:
    """A VIA shape_attributes dict -> a flat polygon [x0, y0, x1, y1, ...] in image pixels (the
    frame of the module docstring); None for a shape without area. ValueError: unknown shape."""
    kind = shape.get("name")
    if kind in ("polygon", "polyline"):
        xs, ys = shape["all_points_x"], shape["all_points_y"]
        if len(xs) != len(ys):
            raise ValueError(f"{len(xs)} x but {len(ys)} y coordinates")
        if len(xs) < 3:
            return None
        return [float(v) for xy in zip(xs, ys) for v in xy]
    if kind == "rect":
        x, y, w, h = (float(shape[k]) for k in ("x", "y", "width", "height"))
        return None if w <= 0 or h <= 0 else [x, y, x + w, y, x + w, y + h, x, y + h]
    if kind == "circle":
        r = float(shape["r"])
        return ellipse_polygon(float(shape["cx"]), float(shape["cy"]), r, r)
    if kind == "ellipse":
        return ellipse_polygon(float(shape["cx"]), float(shape["cy"]), float(shape["rx"]),
                               float(shape["ry"]), float(shape.get("theta") or 0.0))
    if kind == "point":
        return None
    raise ValueError(f"unknown VIA shape {kind!r}")


def ellipse_polygon(cx: float, cy: float, rx: float, ry: float,
                    theta: float = 0.0) -> list[float] | None:
    """Vertices on the ellipse (centre cx, cy; semi-axes rx along x rotated by theta radians
    towards +y, ry), flat [x0, y0, ...] in image pixels; enough vertices that no chord strays
    more than MAX_ERROR_PX from the curve (12 to 720). None when a semi-axis is not positive."""
    if rx <= 0 or ry <= 0:
        return None
    r = max(rx, ry)
    n = 12 if r <= MAX_ERROR_PX else math.ceil(math.pi / math.acos(1 - MAX_ERROR_PX / r))
    n = min(max(n, 12), 720)
    cos_t, sin_t = math.cos(theta), math.sin(theta)
    points = []
    for k in range(n):
        a = 2 * math.pi * k / n
        u, v = rx * math.cos(a), ry * math.sin(a)
        points += [cx + u * cos_t - v * sin_t, cy + u * sin_t + v * cos_t]
    return points


def region_class(attrs: dict[str, Any], class_attribute: str | None = None,
                 default_class: str | None = None) -> str | None:
    """The class name of a region from its region_attributes: attrs[class_attribute] when given,
    else the value of the only attribute that names one; default_class when none does (None when
    that is None too). A value names a class if it is a non-empty string (text, radio, dropdown)
    or a checkbox dict {"option": true} with exactly one option true."""
    if class_attribute is not None:
        name = _class_name(attrs.get(class_attribute))
        return name if name is not None else default_class
    names = [n for n in map(_class_name, attrs.values()) if n is not None]
    return names[0] if len(names) == 1 else default_class


def _class_name(value: Any) -> str | None:
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, dict):
        chosen = [k for k, on in value.items() if on]
        return chosen[0] if len(chosen) == 1 else None
    return None


def _region_key(key: str) -> tuple[int, Any]:
    return (0, int(key)) if str(key).isdigit() else (1, str(key))


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels from the image header (rasterio: any format GDAL reads)."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    if not path.is_file():
        raise MaskrayError(f"VIA image not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                return src.width, src.height
    except rasterio.errors.RasterioIOError as exc:
        raise MaskrayError(f"cannot read VIA image {path}: {exc}") from exc
