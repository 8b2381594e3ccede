"""Ground truth replayed as a predictor (`--predictor labels:PATH`): per-scene labels, cut per tile.

Two sources, loaded by `load_labels`:
- a COCO JSON whose images' `file_name`s are scene ids (paths relative to the input root);
  segmentation as polygons (also solaris' flat list of numbers), uncompressed or compressed RLE,
  in the image's pixel frame; optional `score` (COCO results style), else 1.0.
- a directory of one GeoJSON per scene, coordinates in the scene's CRS (a `crs` member is kept
  for information, never used to reproject); class from a `class_id` / `class_name` / `category`
  property, else one class; optional `score` property.

`detections_for_tile` shows a tile only the part of each object inside its window, as a model
would see it: COCO masks are held as box-local RLEs (object-sized, never image-sized) and cropped;
GeoJSON polygons are rasterised only over their own box within the window, with the window's
affine transform and all_touched=False (pixel centres inside the polygon). Class names are a tuple
indexed by class_id, [0] = "__background__", unused ids "N/A" (torchvision's COCO convention).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

import numpy as np
import rasterio.features
from affine import Affine
from pycocotools import mask as mask_utils

from pipeline import rle
from pipeline.detection import Detection
from pipeline.errors import MaskrayError, UsageError
from pipeline.tiling import Tile

log = logging.getLogger(__name__)
BACKGROUND, UNUSED = "__background__", "N/A"
RASTER_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".jp2", ".vrt")


@dataclass(frozen=True)
class LabelObject:
    """One ground-truth object: either a pixel mask (COCO) or a polygon (GeoJSON).

    box + rle: tight box in scene px (half-open) and the mask cropped to it (box-local COCO RLE).
    geometry: GeoJSON Polygon / MultiPolygon mapping in the scene CRS; bounds = its CRS bounds.
    """

    class_id: int
    score: float = 1.0
    box: tuple[int, int, int, int] | None = None
    rle: dict | None = None
    geometry: dict | None = None
    bounds: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class SceneLabels:
    """The labels of one scene. width/height come from a COCO image entry (None for GeoJSON)."""

    scene_id: str
    objects: tuple[LabelObject, ...]
    class_names: tuple[str, ...]
    width: int | None = None
    height: int | None = None
    crs: str | None = None

    @cached_property
    def _extents(self) -> np.ndarray:
        """(n, 4) float64: pixel boxes of mask objects or CRS bounds of polygon objects."""
        rows = [o.box if o.rle is not None else o.bounds for o in self.objects]
        return np.array(rows, dtype=np.float64).reshape(-1, 4)


def load_labels(path: str | Path, input_root: str | Path | None = None,
                scene_ids: Iterable[str] | None = None) -> dict[str, SceneLabels]:
    """Labels per scene id from a COCO JSON file or a directory of GeoJSON files.

    GeoJSON files match scenes by relative path without suffix (labels/a/s1.geojson <-> a/s1.tif),
    else by bare file stem when that is unique. Scene ids come from `scene_ids`, else from the
    raster files under a local `input_root`; failing both, keys are the label files' relative
    stems (`labels_for_scene` still finds them). Raises UsageError for a missing path and
    MaskrayError for a file that is not what it should be.
    """
    path = Path(path)
    if path.is_dir():
        if scene_ids is None and input_root is not None and Path(input_root).is_dir():
            root = Path(input_root)
            scene_ids = [p.relative_to(root).as_posix() for p in sorted(root.rglob("*"))
                         if p.suffix.lower() in RASTER_SUFFIXES and p.is_file()]
        return _load_geojson_dir(path, list(scene_ids) if scene_ids is not None else None)
    if path.is_file() and path.suffix.lower() != ".geojson":
        return _load_coco(path)
    if path.is_file():
        raise UsageError(f"GeoJSON labels are a directory of one file per scene, not {path}")
    raise UsageError(f"labels not found: {path}")


def labels_for_scene(labels: dict[str, SceneLabels], scene_id: str) -> SceneLabels | None:
    """The labels of `scene_id`: by exact id, else by id without suffix, else by bare stem."""
    stem = PurePosixPath(scene_id).with_suffix("").as_posix()
    return labels.get(scene_id) or labels.get(stem) or labels.get(PurePosixPath(stem).name)


def class_names_of(labels: dict[str, SceneLabels]) -> tuple[str, ...]:
    """The class names (index = class_id) shared by every scene of one `load_labels` result."""
    return next(iter(labels.values())).class_names if labels else (BACKGROUND,)


def detections_for_tile(scene_labels: SceneLabels, tile: Tile, transform: Affine | None,
                        scene_width: int, scene_height: int) -> list[Detection]:
    """What a model should find in `tile`: each object clipped to the window (inside the scene),
    as Detections in the TILE frame (box relative to (tile.x0, tile.y0)); empty clips dropped.

    transform: the scene's affine (pixel -> CRS), used for GeoJSON polygons; ignored for COCO
    labels, which are in pixels already.
    """
    win = (max(tile.x0, 0), max(tile.y0, 0), min(tile.x1, scene_width), min(tile.y1, scene_height))
    if win[0] >= win[2] or win[1] >= win[3] or not scene_labels.objects:
        return []
    boxes = _pixel_boxes(scene_labels, transform)
    near = (boxes[:, 0] < win[2]) & (boxes[:, 2] > win[0]) & (boxes[:, 1] < win[3]) \
        & (boxes[:, 3] > win[1])
    out = []
    for k in np.flatnonzero(near):
        obj = scene_labels.objects[k]
        clip = tuple(int(v) for v in (max(boxes[k, 0], win[0]), max(boxes[k, 1], win[1]),
                                      min(boxes[k, 2], win[2]), min(boxes[k, 3], win[3])))
        d = _clip_mask(obj, clip) if obj.rle is not None else _rasterise(obj, clip, transform)
        if d is not None:
            out.append(d.shifted(-tile.x0, -tile.y0))
    return out


def replay_scene(scene_labels: SceneLabels, tiles: Iterable[Tile], transform: Affine | None,
                 scene_width: int, scene_height: int) -> dict[tuple[int, int], list[Detection]]:
    """`detections_for_tile` for every tile, shifted to the SCENE frame, keyed by (row, col):
    the input `stitch.stitch_scene` expects."""
    return {(t.row, t.col): [d.shifted(t.x0, t.y0) for d in
                             detections_for_tile(scene_labels, t, transform, scene_width,
                                                 scene_height)]
            for t in tiles}


def _pixel_boxes(scene_labels: SceneLabels, transform: Affine | None) -> np.ndarray:
    """(n, 4) int64 pixel boxes (x0, y0, x1, y1) of every object; polygon boxes are padded by a
    pixel (rasterisation decides the exact pixels, the box only limits where it looks)."""
    ext = scene_labels._extents
    if scene_labels.objects[0].rle is not None:
        return ext.astype(np.int64)
    if transform is None:
        raise MaskrayError(f"scene {scene_labels.scene_id}: GeoJSON labels need the scene's "
                           "affine transform")
    inv = ~transform
    xs, ys = ext[:, [0, 2, 0, 2]], ext[:, [1, 1, 3, 3]]
    cols = inv.a * xs + inv.b * ys + inv.c
    rows = inv.d * xs + inv.e * ys + inv.f
    return np.stack([np.floor(cols.min(1)) - 1, np.floor(rows.min(1)) - 1,
                     np.ceil(cols.max(1)) + 1, np.ceil(rows.max(1)) + 1], axis=1).astype(np.int64)


def _clip_mask(obj: LabelObject, clip: tuple[int, int, int, int]) -> Detection | None:
    x0, y0, x1, y1 = obj.box
    if clip == obj.box:  # wholly inside the window: reuse the RLE, no decode
        return Detection(obj.class_id, obj.score, x0, y0, x1, y1, obj.rle)
    m = mask_utils.decode(obj.rle)[clip[1] - y0:clip[3] - y0, clip[0] - x0:clip[2] - x0]
    return _to_detection(m, clip[0], clip[1], obj.class_id, obj.score)


def _rasterise(obj: LabelObject, clip: tuple[int, int, int, int], transform: Affine
               ) -> Detection | None:
    h, w = clip[3] - clip[1], clip[2] - clip[0]
    m = rasterio.features.rasterize([(obj.geometry, 1)], out_shape=(h, w), fill=0, dtype="uint8",
                                    transform=transform @ Affine.translation(clip[0], clip[1]),
                                    all_touched=False)
    return _to_detection(m, clip[0], clip[1], obj.class_id, obj.score)


def _to_detection(m: np.ndarray, ox: int, oy: int, class_id: int, score: float
                  ) -> Detection | None:
    """A (h, w) 0/1 mask whose [0, 0] is scene px (ox, oy) -> Detection on its tight box."""
    box = rle.tight_bounds(m)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    return Detection(class_id, score, ox + x0, oy + y0, ox + x1, oy + y1,
                     rle.encode(m[y0:y1, x0:x1]))


# ---- COCO ------------------------------------------------------------------------------------

def _load_coco(path: Path) -> dict[str, SceneLabels]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MaskrayError(f"cannot read COCO labels {path}: {exc}") from exc
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise MaskrayError(f"{path}: not a COCO dataset (needs 'images' and 'annotations')")
    names = _coco_class_names(data.get("categories", []), data["annotations"])
    images = {img["id"]: img for img in data["images"]}
    objects: dict[int, list[LabelObject]] = {i: [] for i in images}
    for ann in data["annotations"]:
        img = images.get(ann.get("image_id"))
        if img is None:
            raise MaskrayError(f"{path}: annotation {ann.get('id')} names unknown image "
                               f"{ann.get('image_id')}")
        obj = _coco_object(ann, int(img["height"]), int(img["width"]))
        if obj is not None:
            objects[img["id"]].append(obj)
    return {_scene_id(img["file_name"]): SceneLabels(
        _scene_id(img["file_name"]), tuple(objects[i]), names, int(img["width"]),
        int(img["height"])) for i, img in images.items()}


def _scene_id(file_name: str) -> str:
    return PurePosixPath(file_name.replace("\\", "/")).as_posix().removeprefix("./")


def _coco_class_names(categories: list[dict], annotations: list[dict]) -> tuple[str, ...]:
    named = {int(c["id"]): str(c["name"]) for c in categories}
    used = {int(a["category_id"]) for a in annotations}
    if any(i <= 0 for i in named.keys() | used):
        raise MaskrayError("COCO category ids must be >= 1 (0 is background)")
    names = [BACKGROUND] + [UNUSED] * max(named.keys() | used, default=0)
    for i in used:
        names[i] = f"class_{i}"
    for i, name in named.items():
        names[i] = name
    return tuple(names)


def _coco_object(ann: dict, height: int, width: int) -> LabelObject | None:
    """A COCO annotation -> LabelObject with a box-local RLE (None when its mask is empty)."""
    full = coco_rle(ann.get("segmentation"), height, width)
    if full is None:
        return None  # a box-only annotation has no mask to replay
    x, y, w, h = (int(v) for v in mask_utils.toBbox(full))
    if w == 0 or h == 0:
        return None
    box = (x, y, x + w, y + h)
    return LabelObject(int(ann["category_id"]), float(ann.get("score", 1.0)), box=box,
                       rle=crop_rle(full, box))


def coco_rle(seg: Any, height: int, width: int) -> dict | None:
    """A COCO `segmentation` (polygons, uncompressed or compressed RLE) as one full-image
    compressed RLE {"size": [height, width], "counts": bytes}; None when it has no mask (empty,
    or no polygon with 3 points). Also takes solaris' one polygon as a flat list of numbers."""
    if not seg:
        return None
    if isinstance(seg, list):
        if not isinstance(seg[0], list):
            seg = [seg]
        polygons = [p for p in seg if len(p) >= 6]
        if not polygons:
            return None
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    if isinstance(seg.get("counts"), list):
        return mask_utils.frPyObjects(seg, *seg["size"])
    return {"size": list(seg["size"]), "counts": _as_bytes(seg["counts"])}


def _as_bytes(counts: str | bytes) -> bytes:
    return counts.encode("ascii") if isinstance(counts, str) else counts


def _runs(counts: bytes) -> np.ndarray:
    """COCO compressed counts -> run lengths (0s, 1s, 0s, ... column-major). pycocotools decodes
    this string only into a full-image array; this reads it as maskApi.c's rleFrString does,
    so an image-sized RLE can be cropped without an image-sized array."""
    runs: list[int] = []
    p = 0
    while p < len(counts):
        x = k = 0
        more = True
        while more:
            c = counts[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        runs.append(x + runs[-2] if len(runs) > 2 else x)
    return np.asarray(runs, dtype=np.int64)


def crop_rle(full: dict, box: tuple[int, int, int, int]) -> dict:
    """Crop a compressed RLE of an (H, W) image to box (x0, y0, x1, y1) -> box-local RLE.

    Memory: O(runs + box area), never O(H * W).
    """
    height = int(full["size"][0])
    x0, y0, x1, y1 = box
    h, w = y1 - y0, x1 - x0
    ends = np.cumsum(_runs(_as_bytes(full["counts"])))
    starts, stops = ends[0:-1:2], ends[1::2]  # runs of ones, linear column-major [start, stop)
    ncols = (stops - 1) // height - starts // height + 1
    seg = np.repeat(np.arange(len(starts)), ncols)
    col = starts[seg] // height + (np.arange(len(seg)) - np.repeat(np.cumsum(ncols) - ncols, ncols))
    top = np.maximum(starts[seg] - col * height, y0)
    bottom = np.minimum(stops[seg] - col * height, y1)
    keep = (col >= x0) & (col < x1) & (top < bottom)
    flat = np.zeros(h * w + 1, dtype=np.int32)  # difference array over the box, column-major
    base = (col[keep] - x0) * h
    np.add.at(flat, base + top[keep] - y0, 1)
    np.add.at(flat, base + bottom[keep] - y0, -1)
    m = (np.cumsum(flat[:-1]) > 0).astype(np.uint8).reshape(w, h).T
    return mask_utils.encode(np.asfortranarray(m))


# ---- GeoJSON ---------------------------------------------------------------------------------

def _load_geojson_dir(path: Path, scene_ids: list[str] | None) -> dict[str, SceneLabels]:
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in (".geojson", ".json"))
    collections = {}
    for f in files:
        try:
            collections[f.relative_to(path).with_suffix("").as_posix()] = json.loads(f.read_text())
        except (OSError, ValueError) as exc:
            raise MaskrayError(f"cannot read GeoJSON labels {f}: {exc}") from exc
    classes, names = _geojson_classes(f for fc in collections.values()
                                      for f in fc.get("features", []))
    by_id = _match_scenes(list(collections), scene_ids)
    out = {}
    for stem, fc in collections.items():
        if stem not in by_id:
            log.warning("labels %s match no scene; skipped", stem)
            continue
        objects = tuple(o for o in (_geojson_object(f, classes) for f in fc.get("features", []))
                        if o is not None)
        crs = (fc.get("crs") or {}).get("properties", {}).get("name")
        out[by_id[stem]] = SceneLabels(by_id[stem], objects, names, crs=crs)
    return out


def _match_scenes(stems: list[str], scene_ids: list[str] | None) -> dict[str, str]:
    """label stem -> scene id (see `load_labels`)."""
    if scene_ids is None:
        return {s: s for s in stems}
    full = {PurePosixPath(s).with_suffix("").as_posix(): s for s in scene_ids}
    bare: dict[str, list[str]] = {}
    for s in scene_ids:
        bare.setdefault(PurePosixPath(s).stem, []).append(s)
    out = {}
    for stem in stems:
        candidates = bare.get(PurePosixPath(stem).name, [])
        if stem in full:
            out[stem] = full[stem]
        elif len(candidates) == 1:
            out[stem] = candidates[0]
    return out


def _class_of(props: dict) -> tuple[int | None, str | None]:
    """(class id, class name) a feature names: `class_id` (or a numeric `category`) gives the id,
    `class_name` (or a text `category`) the name."""
    cid, name, category = props.get("class_id"), props.get("class_name"), props.get("category")
    if isinstance(category, (int, float)) and not isinstance(category, bool):
        cid = category if cid is None else cid
    elif category not in (None, ""):
        name = name or str(category)
    try:
        return (None if cid in (None, "") else int(cid)), (str(name) if name else None)
    except (TypeError, ValueError):
        raise MaskrayError(f"GeoJSON class_id must be an integer, got {cid!r}") from None


def _geojson_classes(features: Iterable[dict]
                     ) -> tuple[dict[tuple[int | None, str | None], int], tuple[str, ...]]:
    """(id, name) as `_class_of` reads it -> class_id, and the class names (index = class_id).
    Integer ids are kept; names alone are numbered in sorted order after the largest id; a
    feature naming no class is an "object"."""
    pairs = {_class_of(f.get("properties") or {}) for f in features}
    named_ids: dict[int, str | None] = {}
    with_id = sorted((p for p in pairs if p[0] is not None), key=lambda p: (p[0], p[1] or ""))
    for cid, name in with_id:
        if not named_ids.get(cid):  # an id keeps the first name given to it, in sorted order
            named_ids[cid] = name
    if any(cid <= 0 for cid in named_ids):
        raise MaskrayError("GeoJSON class_id must be >= 1 (0 is background)")
    by_name = {name: cid for cid, name in named_ids.items() if name}
    first = max(named_ids, default=0) + 1
    loose = sorted({name or "object" for cid, name in pairs if cid is None} - by_name.keys())
    by_name.update({name: first + k for k, name in enumerate(loose)})
    mapping = {(cid, name): cid if cid is not None else by_name[name or "object"]
               for cid, name in pairs}
    names = [BACKGROUND] + [UNUSED] * max(mapping.values(), default=0)
    for cid, name in named_ids.items():
        names[cid] = name or f"class_{cid}"
    for name, cid in by_name.items():
        names[cid] = name
    return mapping, tuple(names)


def _geojson_object(feature: dict, classes: dict) -> LabelObject | None:
    geom = feature.get("geometry")
    if not geom or geom.get("type") not in ("Polygon", "MultiPolygon"):
        return None
    polygons = [geom["coordinates"]] if geom["type"] == "Polygon" else geom["coordinates"]
    coords = np.asarray([xy[:2] for poly in polygons for ring in poly for xy in ring], float)
    if coords.size == 0:
        return None
    props = feature.get("properties") or {}
    bounds = (*coords.min(axis=0), *coords.max(axis=0))
    return LabelObject(classes[_class_of(props)], float(props.get("score", 1.0)),
                       geometry=geom, bounds=tuple(float(b) for b in bounds))

