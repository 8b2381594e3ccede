"""`maskray render`: one picture of a scene, a window of it, or a down-sampled overview, with the
output's instance masks drawn on it (pipeline/overlay.py), and optionally the ground truth in a
panel on its left.

Reads only what it draws: the scene through one windowed, decimated rasterio read (`out_shape`:
a 40 000 px scene becomes a `max_side` picture without ever being in memory at full size; COG
overviews make it cheap), and only the instance rows whose px_bbox meets the window (a pyarrow
filter on scene_id and the px_bbox fields, which Parquet statistics prune). Frames: scene pixels,
x right, y down, windows (x0, y0, x1, y1) half-open; see `overlay.View` for the picture grid.

Where the scenes are: `input_root` as given, else the input recorded in the output's latest run
record (`runs/<run_id>.json`, config.input); scene ids are paths relative to it.
"""

from __future__ import annotations

import logging
import os
import posixpath
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from pipeline.errors import MaskrayError, UsageError
from pipeline.overlay import Shape, View, blend_shapes, draw_labels, side_by_side, titled, to_rgb8

DEFAULT_MAX_SIDE = 2048
# Captions by default only where they can be read: at >= 1/2 native resolution, and over at
# most this many instances (a dense view is all captions otherwise; --labels forces them).
AUTO_LABEL_LIMIT = 60
INSTANCE_COLUMNS = ["scene_id", "instance_id", "class_id", "class_name", "score", "px_bbox",
                    "mask_rle"]
STRETCHES = ("auto", "percentile", "none")
READ_CACHE_MB = 64  # GDAL block cache while reading a view (see read_view)
_GLOB_CHARS = frozenset("*?[")
_LIST_OR_IMAGE = (".txt", ".tif", ".tiff", ".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class RenderResult:
    """What `render_scene` drew. size: the PNG's (width, height); view: the scene window and the
    picture grid of one panel; instances: the rows drawn (INSTANCE_COLUMNS); gt_objects: ground
    truth objects drawn, None without --gt."""

    path: str
    size: tuple[int, int]
    view: View
    instances: pa.Table
    gt_objects: int | None = None


def render_scene(output: str, scene_id: str, out_png: str, **options: Any) -> RenderResult:
    """Write `out_png` (see `render_image` for the options) and return what it shows."""
    picture, result = render_image(output, scene_id, **options)
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    picture.save(out_png, optimize=True)
    return replace(result, path=str(out_png))


def render_image(output: str, scene_id: str, *, input_root: str | None = None,
                 model_id: str | None = None, window: Sequence[int] | None = None,
                 max_side: int = DEFAULT_MAX_SIDE, labels: bool | None = None,
                 min_score: float = 0.0, gt: str | None = None,
                 bands: Sequence[int] | None = None, stretch: str = "auto",
                 alpha: float = 0.45) -> tuple[Image.Image, RenderResult]:
    """The picture of `scene_id` (RGB PIL image) and what it shows (`path` empty).

    window: (x0, y0, x1, y1) inside the scene; None = the whole scene (an overview when it is
        larger than `max_side`). The picture is the window at native size, or scaled down so its
        longer side is `max_side`.
    labels: boxes and "class score" captions; None = only where they can be read: at >= 1/2
        native resolution and for at most AUTO_LABEL_LIMIT instances.
    min_score: instances below it are not drawn.
    gt: COCO JSON or GeoJSON directory: the scene's ground truth in a left panel, predictions
        right, each under a title bar.
    bands: 1-based bands shown as RGB (3) or grey (1); default the model's bands when it was
        trained on 3, else 1, 2, 3 (or 1 for a single-band scene).
    stretch: "auto" (uint8 as stored, other types 2-98 % per band), "percentile" or "none".
    Raises UsageError (exit 2) for an unknown scene or model, a bad window or bands;
    MaskrayError (exit 1) when the scene can't be read.
    """
    from pipeline.raster_io import SceneError, open_raster

    if stretch not in STRETCHES:
        raise UsageError(f"stretch must be one of {', '.join(STRETCHES)}, got {stretch!r}")
    if max_side < 16:
        raise UsageError(f"--max-side must be at least 16 px, got {max_side}")
    model_id = resolve_model(output, model_id)
    record = latest_run_record(output, model_id)
    check_scene(output, scene_id, model_id)
    root = input_root_of(input_root or _recorded_input(record, output))
    uri = scene_uri(root, scene_id)
    try:
        with open_raster(uri) as src:
            view = View.fit(check_window(window, src.width, src.height, scene_id), max_side)
            rgb = read_view(src, view, _bands(bands, record, src.count), stretch)
            transform, size = src.transform, (src.width, src.height)
    except SceneError as exc:
        hint = " (if the scenes moved, give --input ROOT)" if exc.error_type == "not_found" else ""
        raise MaskrayError(f"cannot read scene {scene_id} at {uri}: {exc}{hint}") from exc
    rows = window_instances(output, scene_id, view.window, model_id, min_score)
    shapes = prediction_shapes(rows)
    show_labels = labels if labels is not None else (
        view.sx >= 0.5 and len(shapes) <= AUTO_LABEL_LIMIT)
    picture = draw_panel(rgb, shapes, view, alpha, show_labels)
    gt_count = None
    if gt is not None:
        truth = gt_shapes(gt, root, scene_id, view, transform, size, _class_ids(record, rows))
        gt_count = len(truth)
        left = titled(draw_panel(rgb, truth, view, alpha, show_labels),
                      f"ground truth ({gt_count})")
        right = titled(picture, f"predictions ({len(shapes)}"
                       + (f", score >= {min_score:g})" if min_score > 0 else ")"))
        picture = side_by_side([left, right])
    return picture, RenderResult("", picture.size, view, rows, gt_count)


def draw_panel(rgb: np.ndarray, shapes: Sequence[Shape], view: View, alpha: float,
               labels: bool) -> Image.Image:
    """One panel: (H, W, 3) uint8 picture of `view` with `shapes` filled, outlined, and (with
    `labels`) boxed and captioned."""
    image = Image.fromarray(blend_shapes(rgb, shapes, view, alpha))
    return draw_labels(image, shapes, view) if labels else image


# ---- the output: models, scenes, instances, run records ---------------------------------------

def resolve_model(output: str, model_id: str | None) -> str:
    """The model whose rows to show: `model_id` (checked), else the output's only model."""
    from pipeline.dataset import read_scenes

    models = sorted(set(read_scenes(output, columns=["model_id"]).column("model_id").to_pylist()))
    if not models:
        raise UsageError(f"no scenes in {output}: not a maskray output, or nothing committed")
    if model_id is not None and model_id not in models:
        raise UsageError(f"model {model_id!r} is not in {output} (models: {', '.join(models)})")
    if model_id is None and len(models) > 1:
        raise UsageError(f"{output} holds {len(models)} models ({', '.join(models)}): "
                         "pick one with --model-id")
    return model_id or models[0]


def check_scene(output: str, scene_id: str, model_id: str) -> dict[str, Any]:
    """The latest scenes row of `scene_id` for `model_id`; UsageError naming a few valid ids
    when there is none."""
    from pipeline.dataset import read_scenes

    rows = read_scenes(output, model_id, filter=pc.field("scene_id") == scene_id).to_pylist()
    if not rows:
        known = read_scenes(output, model_id, columns=["scene_id"]).column("scene_id")
        some = sorted(set(known.to_pylist()))
        hint = ", ".join(some[:5]) + (f" ... ({len(some)} scenes)" if len(some) > 5 else "")
        raise UsageError(f"scene {scene_id!r} is not in {output} (model {model_id}); "
                         f"scene ids are paths relative to the input root, e.g. {hint}")
    return max(rows, key=lambda r: r["run_id"])


def window_instances(output: str, scene_id: str, window: Sequence[int], model_id: str | None,
                     min_score: float = 0.0) -> pa.Table:
    """INSTANCE_COLUMNS of the rows of `scene_id` whose px_bbox meets `window` (x0, y0, x1, y1),
    with score >= `min_score`, sorted by ascending score (the order they are drawn in). Only
    these rows are read: the filter is pushed down to the Parquet scan."""
    from pipeline.dataset import read_instances

    x0, y0, x1, y1 = (int(v) for v in window)
    box = lambda k: pc.field("px_bbox", k)  # noqa: E731 - a nested field reference
    meets = ((pc.field("scene_id") == scene_id) & (box("x0") < x1) & (box("x1") > x0)
             & (box("y0") < y1) & (box("y1") > y0))
    if min_score > 0:
        meets &= pc.field("score") >= min_score
    table = read_instances(output, model_id, columns=INSTANCE_COLUMNS, filter=meets)
    return table.sort_by([("score", "ascending"), ("instance_id", "ascending")])


def latest_run_record(output: str, model_id: str | None = None) -> dict[str, Any] | None:
    """The newest run record (`runs/<run_id>.json`) of `model_id` (any model when None)."""
    records = run_records(output, model_id)
    return records[-1] if records else None


def run_records(output: str, model_id: str | None = None) -> list[dict[str, Any]]:
    """Every run record of `model_id` (all when None), oldest run first."""
    from pipeline.commit import read_run_records
    from pipeline.storage import filesystem

    fs, path = filesystem(output)
    records = read_run_records(fs, path.rstrip("/"))
    return [r for r in records if model_id is None or r.get("model_id") == model_id]


def _recorded_input(record: dict[str, Any] | None, output: str) -> str:
    recorded = ((record or {}).get("config") or {}).get("input")
    if not recorded:
        raise UsageError(f"no run record in {output} names its input: give --input ROOT")
    return str(recorded)


def _class_ids(record: dict[str, Any] | None, rows: pa.Table) -> dict[str, int]:
    """{class name: model class id}: the run record's class list (id = position + 1) and the
    rows drawn, so ground truth and predictions of one class share a colour."""
    names = ((record or {}).get("config") or {}).get("model", {}).get("classes") or []
    ids = {str(name): k for k, name in enumerate(names, start=1)}
    for name, class_id in zip(rows.column("class_name").to_pylist(),
                              rows.column("class_id").to_pylist()):
        ids.setdefault(name, int(class_id))
    return ids


def prediction_shapes(rows: pa.Table) -> list[Shape]:
    """Instance rows -> Shapes captioned "class 0.93", in the rows' order."""
    return [Shape.from_row(r, f"{r['class_name']} {r['score']:.2f}") for r in rows.to_pylist()]


# ---- the scene: where it is, what part, which bands ------------------------------------------

def input_root_of(input_uri: str) -> str:
    """The directory scene ids are relative to, for an input given as `maskray infer --input`
    takes it: a directory or prefix itself, a glob's leading non-wildcard part, the folder of a
    .txt list or of a single image."""
    path = input_uri[len("file://"):] if input_uri.startswith("file://") else input_uri
    remote = "://" in path
    if _GLOB_CHARS & set(path) and (remote or not os.path.isdir(path)):
        parts = path.split("/")
        cut = next(i for i, part in enumerate(parts) if _GLOB_CHARS & set(part))
        return "/".join(parts[:cut]) or "."
    if (not remote and os.path.isdir(path)) or not path.lower().endswith(_LIST_OR_IMAGE):
        return path
    return (posixpath.dirname(path) if remote else os.path.dirname(path)) or "."


def scene_uri(root: str, scene_id: str) -> str:
    """Where scene `scene_id` is under input `root` (a local path or an s3:// style URI)."""
    return f"{root.rstrip('/')}/{scene_id}" if "://" in root else os.path.join(root, scene_id)


def parse_window(text: str) -> tuple[int, int, int, int]:
    """"x0,y0,x1,y1" (scene px, half-open) -> ints; UsageError unless x0 < x1 and y0 < y1."""
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or values[0] >= values[2] or values[1] >= values[3]:
        raise UsageError(f"--window must be x0,y0,x1,y1 in scene pixels with x0 < x1 and "
                         f"y0 < y1, got {text!r}")
    return values  # type: ignore[return-value]


def check_window(window: Sequence[int] | None, width: int, height: int, scene_id: str
                 ) -> tuple[int, int, int, int]:
    """`window` if it lies inside the (width, height) scene (the whole scene when None)."""
    if window is None:
        return 0, 0, width, height
    x0, y0, x1, y1 = (int(v) for v in window)
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise UsageError(f"window {x0},{y0},{x1},{y1} is not inside scene {scene_id} "
                         f"({width} x {height} px: 0 <= x0 < x1 <= {width}, "
                         f"0 <= y0 < y1 <= {height})")
    return x0, y0, x1, y1


def _bands(bands: Sequence[int] | None, record: dict[str, Any] | None, count: int) -> list[int]:
    if bands is None:
        trained = ((record or {}).get("config") or {}).get("model", {}).get("bands") or []
        bands = trained if len(trained) == 3 else ([1, 2, 3] if count >= 3 else [1])
    bands = [int(b) for b in bands]
    if len(bands) not in (1, 3) or not all(1 <= b <= count for b in bands):
        raise UsageError(f"--bands must name 1 or 3 of the scene's bands 1..{count}, got "
                         f"{','.join(map(str, bands))}")
    return bands


def read_view(src, view: View, bands: Sequence[int], stretch: str = "auto") -> np.ndarray:
    """(view.height, view.width, 3) uint8 of `view.window` from an open dataset: one windowed
    read, decimated by GDAL to the picture size (band average when down-sampling, so an overview
    does not alias), nodata / masked pixels black. Memory: the picture plus a 64 MB block cache,
    whatever the scene size (a 12 000 px scene read into 1024 px: +14 MB peak RSS)."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    x0, y0, x1, y1 = view.window
    # Each block is decoded once in this one pass: a small block cache keeps memory flat in scene
    # size (GDAL's default, 5 % of RAM, would fill with a big scene's blocks for nothing).
    with rasterio.Env(GDAL_CACHEMAX=READ_CACHE_MB):
        data = src.read(list(bands), window=Window(x0, y0, x1 - x0, y1 - y0), masked=True,
                        out_shape=(len(bands), view.height, view.width),
                        resampling=Resampling.average if view.sx < 1 else Resampling.nearest)
    valid = ~np.ma.getmaskarray(data).all(axis=0)
    pixels = np.ma.getdata(data)
    stretched = stretch == "percentile" or (stretch == "auto" and src.dtypes[0] != "uint8")
    return to_rgb8(pixels, valid, stretch=stretched)


# ---- ground truth ------------------------------------------------------------------------------

def gt_shapes(gt: str, input_root: str, scene_id: str, view: View, transform,
              size: tuple[int, int], class_ids: dict[str, int]) -> list[Shape]:
    """The scene's ground-truth objects that meet the view, as Shapes in scene pixels, coloured
    by the model's class id of the same name. COCO masks are cropped, GeoJSON polygons are
    rasterised in the scene grid (`transform`, pixel -> CRS), both only over the view widened by
    a picture pixel (so the view's edge does not outline them). [] when the scene has none."""
    from pipeline.labels import detections_for_tile, labels_for_scene, load_labels
    from pipeline.tiling import Tile

    with _quiet_unmatched_labels():  # every other scene's file is "unmatched" here, by design
        labels = load_labels(gt, input_root if "://" not in input_root else None,
                             scene_ids=[scene_id])
    scene_labels = labels_for_scene(labels, scene_id)
    if scene_labels is None:
        return []
    pad_x, pad_y = int(np.ceil(1 / view.sx)), int(np.ceil(1 / view.sy))
    x0, y0, x1, y1 = view.x0 - pad_x, view.y0 - pad_y, view.x1 + pad_x, view.y1 + pad_y
    tile = Tile(0, 0, x0, y0, x1, y1, x0, y0, x1, y1)
    names = scene_labels.class_names
    shapes = []
    for det in detections_for_tile(scene_labels, tile, transform, *size):
        det = det.shifted(x0, y0)  # tile frame -> scene frame
        name = names[det.class_id] if det.class_id < len(names) else str(det.class_id)
        shapes.append(Shape(class_ids.get(name, det.class_id), det.x0, det.y0, det.x1, det.y1,
                            det.rle, name, det.score))
    return shapes


class _DropUnmatched(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "match no scene" not in str(record.msg)


@contextmanager
def _quiet_unmatched_labels() -> Iterator[None]:
    """Drop pipeline.labels' "labels X match no scene" warnings while one scene's labels load."""
    logger = logging.getLogger("pipeline.labels")
    unmatched = _DropUnmatched()
    logger.addFilter(unmatched)
    try:
        yield
    finally:
        logger.removeFilter(unmatched)
