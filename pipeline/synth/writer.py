"""Writing an archive: each scene streamed to a tiled GeoTIFF window by window, its labels to
GeoJSON and the archive's COCO file as blocks are laid out.

Memory per scene is bounded by one row of windows and the blocks that reach it: blocks are
laid out when the row of windows being rendered first comes within reach of them (their bounding
box plus the longest shadow) and dropped once it has passed, so a 20 000 px scene never holds more
than a band of its objects, and never its pixels.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.windows import Window

from pipeline.synth.config import SynthConfig, band_names
from pipeline.synth.labels import CocoWriter, GeoJsonWriter
from pipeline.synth.layout import layout_block
from pipeline.synth.paint import render_window
from pipeline.synth.plan import SHADOW_CAP_PX, ScenePlan, block_bbox, blocks_in_rect, plan_scene

log = logging.getLogger("maskray.synth")
VERSION = 1
# GDAL's block cache defaults to 5 % of RAM; dirty tiles would pile up there. Keep it small, but
# in bytes: rasterio passes GDAL_CACHEMAX=64 on as 64 *bytes*, which makes every rasterize call
# crawl through its shapes scanline chunk by scanline chunk (30x slower, measured).
GDAL_CACHE_BYTES = 16 * 1024 * 1024
REACH = SHADOW_CAP_PX + 2


@dataclass(frozen=True)
class SynthSummary:
    """What a run produced. instances: count per class name; megapixels: pixels written / 1e6."""

    out_dir: str
    images: int
    instances: dict
    megapixels: float
    seconds: float

    def line(self, what: str = "scenes") -> str:
        per_class = ", ".join(f"{name} {n}" for name, n in self.instances.items())
        total = sum(self.instances.values())
        return (f"synth: {self.images} {what}, {total} instances ({per_class}), "
                f"{self.megapixels:.1f} Mpx in {self.seconds:.1f} s -> {self.out_dir}")


def generate_archive(out_dir: str | os.PathLike, cfg: SynthConfig) -> SynthSummary:
    """Write cfg.scenes scenes under out_dir: scenes/scene_NNNN.tif, labels/scene_NNNN.geojson,
    annotations.json (COCO, file_name relative to out_dir) and synth.json (the options)."""
    cfg.validate()
    out = Path(out_dir)
    (out / "scenes").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    coco = CocoWriter(out / "annotations.json", cfg.classes, "maskray synthetic scenes")
    counts: Counter = Counter()
    try:
        for index in range(cfg.scenes):
            plan = plan_scene(cfg, index, cfg.width, cfg.height)
            counts.update(write_scene(out, cfg, plan, coco))
    except BaseException:
        coco.abort()
        raise
    coco.close()
    per_class = {name: counts.get(name, 0) for name in cfg.classes}
    write_record(out, "archive", asdict(cfg), per_class)
    return SynthSummary(str(out), cfg.scenes, per_class,
                        cfg.scenes * cfg.width * cfg.height / 1e6, time.perf_counter() - start)


def write_record(out: Path, kind: str, options: dict, per_class: dict) -> None:
    record = {"generator": "maskray synth", "version": VERSION, "kind": kind, "options": options,
              "categories": {name: k + 1 for k, name in enumerate(options["classes"])},
              "instances": per_class}
    (out / "synth.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def _profile(cfg: SynthConfig, plan: ScenePlan) -> dict:
    profile = dict(driver="GTiff", width=plan.width, height=plan.height, count=cfg.bands,
                   dtype=cfg.dtype, crs=CRS.from_epsg(plan.epsg), transform=plan.transform,
                   tiled=True, blockxsize=cfg.window, blockysize=cfg.window, interleave="pixel",
                   BIGTIFF="IF_SAFER")
    if cfg.compress == "deflate":
        profile.update(compress="deflate", predictor=2, zlevel=1)
    return profile


class _Band:
    """The blocks within reach of the current row of windows (laid out as the rows come near them,
    dropped once passed), with the boxes of their objects, ground details and shadows."""

    def __init__(self, plan: ScenePlan, cfg: SynthConfig, labels: "_SceneLabels"):
        self.plan, self.cfg, self.labels = plan, cfg, labels
        edge = (-REACH, -REACH, plan.width + REACH, plan.height + REACH)
        self.todo = deque((block_bbox(plan, i, j), (i, j)) for i, j in blocks_in_rect(plan, *edge))
        self.active: dict[tuple[int, int], tuple[float, list[tuple[list, np.ndarray]]]] = {}
        self.parts: list[tuple[list, np.ndarray]] = []

    def advance(self, row0: int, row1: int) -> None:
        """Lay out the blocks that reach rows [row0, row1) and drop those that ended above."""
        region = (0, 0, self.plan.width, self.plan.height)
        while self.todo and self.todo[0][0][1] < row1 + REACH:
            bbox, (i, j) = self.todo.popleft()
            layout = layout_block(self.plan, i, j, self.cfg.classes, region)
            self.labels.add(layout.instances)
            self.active[(i, j)] = (bbox[3], [(items, _boxes(items)) for items in (
                layout.instances, layout.features, layout.shadows)])
        self.active = {k: v for k, v in self.active.items() if v[0] + REACH > row0}
        self.parts = []
        for k in range(3):
            chunks = [parts[k] for _, parts in self.active.values()]
            self.parts.append(([x for items, _ in chunks for x in items],
                               np.vstack([b for _, b in chunks] or [np.zeros((0, 4))])))

    def near(self, x0, y0, x1, y1):
        """(instances, features, shadows) whose boxes meet the window."""
        return tuple([items[k] for k in np.flatnonzero(
            (b[:, 0] < x1) & (b[:, 2] > x0) & (b[:, 1] < y1) & (b[:, 3] > y0))]
            for items, b in self.parts)


def _boxes(items) -> np.ndarray:
    """(N, 4) x0, y0, x1, y1 of instances and shadows (their pixel box) or features (polygon)."""
    rows = [x.box if hasattr(x, "box") else (*x.polygon.min(axis=0), *x.polygon.max(axis=0))
            for x in items]
    return np.array(rows, np.float64).reshape(-1, 4)


class _SceneLabels:
    """COCO annotations and the scene's GeoJSON, written as blocks are laid out."""

    def __init__(self, out: Path, cfg: SynthConfig, plan: ScenePlan, coco: CocoWriter):
        name = f"scene_{plan.index:04d}"
        self.cfg, self.plan, self.coco = cfg, plan, coco
        self.image_id = coco.add_image(f"scenes/{name}.tif", plan.width, plan.height,
                                       crs=f"EPSG:{plan.epsg}", transform=list(plan.transform)[:6])
        self.geojson = GeoJsonWriter(out / "labels" / f"{name}.geojson", plan.epsg)
        self.counts: Counter = Counter()

    def add(self, instances) -> None:
        size = (self.plan.width, self.plan.height)
        for inst in instances:
            ann = self.coco.add(self.image_id, inst, (0, 0), size)
            self.geojson.add(inst, self.plan.transform, self.cfg.class_id(inst.class_name), ann)
            self.counts[inst.class_name] += 1


def write_scene(out: Path, cfg: SynthConfig, plan: ScenePlan, coco: CocoWriter) -> Counter:
    """Render and label one scene, row of windows by row; returns instance counts per class."""
    name = f"scene_{plan.index:04d}"
    started = time.perf_counter()
    labels = _SceneLabels(out, cfg, plan, coco)
    band, win = _Band(plan, cfg, labels), cfg.window
    tif, tmp = out / "scenes" / f"{name}.tif", out / "scenes" / f"{name}.tif.partial"
    rows = range(0, plan.height, win)
    try:
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), \
                rasterio.open(tmp, "w", **_profile(cfg, plan)) as dst:
            for k, band_name in enumerate(band_names(cfg.bands), start=1):
                dst.set_band_description(k, band_name)
            dst.update_tags(generator="maskray synth", seed=str(cfg.seed), scene=str(plan.index))
            for r, row0 in enumerate(rows):
                row1 = min(row0 + win, plan.height)
                band.advance(row0, row1)
                for col0 in range(0, plan.width, win):
                    col1 = min(col0 + win, plan.width)
                    # +-1 px: the optics blur reads one pixel of halo around the window.
                    near = band.near(col0 - 1, row0 - 1, col1 + 1, row1 + 1)
                    pixels = render_window(plan, (col0, row0, col1, row1), *near, cfg.bands,
                                           cfg.dtype)
                    dst.write(pixels, window=Window(col0, row0, col1 - col0, row1 - row0))
                _progress(name, r, len(rows), started)
    except BaseException:
        labels.geojson.abort()
        tmp.unlink(missing_ok=True)
        raise
    labels.geojson.close()
    os.replace(tmp, tif)
    log.info("%s: %dx%d px, %d instances, %.1f s", name, plan.width, plan.height,
             sum(labels.counts.values()), time.perf_counter() - started)
    return labels.counts


def _progress(name: str, row: int, rows: int, started: float) -> None:
    step = max(rows // 10, 1)
    if rows >= 16 and (row + 1) % step == 0 and row + 1 < rows:
        log.info("%s: %d%% (%.0f s)", name, 100 * (row + 1) // rows, time.perf_counter() - started)
