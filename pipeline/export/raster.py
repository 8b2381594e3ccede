"""Class rasters: one single-band class-id GeoTIFF per scene, on the scene's own pixel grid
(width, height, affine transform, CRS), written window by window.

Overlaps in class rasters: instances are painted in ascending (score, instance_id) order, so a
pixel covered by several instances gets the class of the highest score (ties: the highest
instance_id). 0 is background.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds

from pipeline.dataset import decode_mask
from pipeline.errors import UsageError
from pipeline.export.source import (Scene, Source, Written, check_directory, join,
                                    scene_file_names, write_index, writing)

_RASTER_COLUMNS = ["instance_id", "class_id", "score", "px_bbox", "mask_rle"]
RASTER_WINDOW = 1024  # class-raster window side, px: 1024^2 x 2 bytes = 2 MiB per window
RASTER_BLOCK = 512  # GeoTIFF tile side; windows that are multiples of it write whole tiles
# A colour per class id (cycled); background (0) is black. GIS tools show the palette as is.
_PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def export_class_rasters(src: Source, out: str, window: int = RASTER_WINDOW) -> Written:
    """One class-id GeoTIFF per selected scene (see `write_class_raster`).

    out: a directory (files named by `scene_file_names`, plus `index.json`), or a .tif / .tiff
    file when exactly one scene is selected.
    """
    dtype = class_raster_dtype(src.class_names)
    written = Written(notes=list(src.notes), scenes=len(src.scenes))
    if out.lower().endswith((".tif", ".tiff")):
        if len(src.scenes) != 1:
            raise UsageError(f"--out {out} is one file, but {len(src.scenes)} scenes are "
                             "selected: give a directory, or one --scene")
        written.instances = write_class_raster(src, src.scenes[0], out, window, dtype)
        written.files.append(out)
        return written
    check_directory(out)
    names = scene_file_names(src.scene_ids, ".tif")
    index = []
    for scene in src.scenes:
        path = join(out, names[scene.scene_id])
        count = write_class_raster(src, scene, path, window, dtype)
        index.append({"scene_id": scene.scene_id, "file": names[scene.scene_id],
                      "instances": count})
        written.files.append(path)
        written.instances += count
    write_index(out, {"model_id": src.model_id, "format": "class-raster", "scenes": index})
    return written


def class_raster_dtype(class_names: Mapping[int, str]) -> str:
    """uint8 when every class id fits, else uint16 (class ids are int16)."""
    return "uint8" if max(class_names, default=0) <= 255 else "uint16"


def write_class_raster(src: Source, scene: Scene, out: str, window: int = RASTER_WINDOW,
                       dtype: str | None = None) -> int:
    """Rasterise a scene's instances into a single-band class-id GeoTIFF at `out`.

    The raster has the scene's grid: scene.width x scene.height px, its transform (identity
    when it has none) and CRS (none for a pixel-unit scene). Pixel value: the class id of the
    instance covering it, 0 = background; overlaps: highest (score, instance_id) wins. Tiled
    (RASTER_BLOCK px), deflate. Written window by window: for each strip of `window` rows only
    the instances whose px_bbox meets it are read (a pyarrow filter on px_bbox), then each
    `window` x `window` square is painted from the box-local masks meeting it and written.
    Memory: one window + the strip's rows (RLE) + one instance's box mask, never the scene.
    Returns the number of instances painted.
    """
    import rasterio
    from rasterio.windows import Window

    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    dtype = dtype or class_raster_dtype(src.class_names)
    profile = {"driver": "GTiff", "width": scene.width, "height": scene.height, "count": 1,
               "dtype": dtype, "crs": scene.crs_wkt, "tiled": True,
               "blockxsize": RASTER_BLOCK, "blockysize": RASTER_BLOCK, "compress": "deflate",
               "BIGTIFF": "IF_SAFER"}
    if scene.transform is not None:  # else no geotransform at all (rasterio: identity)
        profile["transform"] = scene.transform
    painted: set[int] = set()
    with writing(out) as local, rasterio.open(local, "w", **profile) as dst:
        dst.update_tags(maskray_scene_id=scene.scene_id, maskray_model_id=src.model_id,
                        maskray_class_names=json.dumps(src.class_names, sort_keys=True))
        dst.set_band_description(1, "class_id (0 = background)")
        if dtype == "uint8":
            dst.write_colormap(1, _colormap(src.class_names))
        for y0 in range(0, scene.height, window):
            y1 = min(y0 + window, scene.height)
            strip = _strip_rows(src, scene.scene_id, y0, y1)
            painted.update(strip.instance_ids)
            for x0 in range(0, scene.width, window):
                x1 = min(x0 + window, scene.width)
                block = paint_window(strip.rows_meeting(x0, x1), (x0, y0, x1, y1), dtype)
                dst.write(block, 1, window=Window(x0, y0, x1 - x0, y1 - y0))
    return len(painted)


@dataclass
class _Strip:
    """The instance rows meeting one strip of rows, sorted by (score, instance_id) ascending."""

    rows: list[dict[str, Any]]
    x0: np.ndarray
    x1: np.ndarray

    @property
    def instance_ids(self) -> list[int]:
        return [r["instance_id"] for r in self.rows]

    def rows_meeting(self, x0: int, x1: int) -> list[dict[str, Any]]:
        """Rows whose px_bbox meets columns [x0, x1), in painting order."""
        return [self.rows[i] for i in np.flatnonzero((self.x0 < x1) & (self.x1 > x0))]


def _strip_rows(src: Source, scene_id: str, y0: int, y1: int) -> _Strip:
    meets = (ds.field("px_bbox", "y0") < y1) & (ds.field("px_bbox", "y1") > y0)
    table = src.table(_RASTER_COLUMNS, [scene_id], meets)
    table = table.sort_by([("score", "ascending"), ("instance_id", "ascending")])
    box = table.column("px_bbox")
    return _Strip(rows=table.to_pylist(),
                  x0=pc.struct_field(box, "x0").to_numpy(zero_copy_only=False),
                  x1=pc.struct_field(box, "x1").to_numpy(zero_copy_only=False))


def paint_window(rows: Iterable[Mapping[str, Any]], window: tuple[int, int, int, int],
                 dtype: str = "uint16") -> np.ndarray:
    """Class ids of scene pixels [x0, x1) x [y0, y1) as a (y1 - y0, x1 - x0) array.

    rows: instance rows (px_bbox, mask_rle, class_id) in painting order: later rows overwrite
    earlier ones where masks overlap. Each box-local mask is decoded and only its intersection
    with the window is painted.
    """
    x0, y0, x1, y1 = window
    out = np.zeros((y1 - y0, x1 - x0), dtype=dtype)
    for row in rows:
        b = row["px_bbox"]
        ix0, iy0 = max(b["x0"], x0), max(b["y0"], y0)
        ix1, iy1 = min(b["x1"], x1), min(b["y1"], y1)
        if ix1 <= ix0 or iy1 <= iy0:
            continue
        mask = decode_mask(row)[iy0 - b["y0"]:iy1 - b["y0"], ix0 - b["x0"]:ix1 - b["x0"]]
        out[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0][mask] = row["class_id"]
    return out


def _colormap(class_names: Mapping[int, str]) -> dict[int, tuple[int, int, int, int]]:
    colours = {0: (0, 0, 0, 255)}
    for cid in class_names:
        if 0 < cid <= 255:
            colours[cid] = (*_PALETTE[(cid - 1) % len(_PALETTE)], 255)
    return colours
