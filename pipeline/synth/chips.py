"""A training set of small images ("chips") with COCO labels.

Chip k is a window of a virtual scene k (same plan, layout and rendering as archive scenes, so
the same look): only the blocks that reach the chip are laid out, and masks are clipped to the
chip, so objects cut by its border are labelled with their visible part. A share of the chips
(`empty_fraction`) is rendered with no objects at all, as negatives.

Output: images/chip_NNNNN.png (3-band uint8) or .tif (uint16 or more bands; georeferenced),
annotations.json (COCO, file_name relative to the output directory) and synth.json.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.crs import CRS

from pipeline.synth.config import ChipsConfig, band_names
from pipeline.synth.labels import CocoWriter
from pipeline.synth.layout import layout_block
from pipeline.synth.paint import render_window
from pipeline.synth.plan import blocks_in_rect, plan_scene
from pipeline.synth.writer import REACH, SynthSummary, write_record

VIRTUAL_SIDE = 4096
_CHIPS = 41


def generate_chips(out_dir: str | os.PathLike, cfg: ChipsConfig) -> SynthSummary:
    """Write cfg.count chips of cfg.chip_size px under out_dir (see module docstring)."""
    cfg.validate()
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    coco = CocoWriter(out / "annotations.json", cfg.classes, "maskray synthetic chips")
    counts: Counter = Counter()
    try:
        for k in range(cfg.count):
            counts.update(write_chip(out, cfg, k, coco))
    except BaseException:
        coco.abort()
        raise
    coco.close()
    per_class = {name: counts.get(name, 0) for name in cfg.classes}
    write_record(out, "chips", asdict(cfg), per_class)
    return SynthSummary(str(out), cfg.count, per_class,
                        cfg.count * cfg.chip_size ** 2 / 1e6, time.perf_counter() - start)


def chip_window(cfg: ChipsConfig, k: int) -> tuple[tuple[int, int, int, int], bool]:
    """Where chip k lies in its virtual scene (x0, y0, x1, y1), and whether it is empty."""
    rng = np.random.default_rng([cfg.seed, k, _CHIPS])
    side = max(VIRTUAL_SIDE, 2 * cfg.chip_size)
    x0, y0 = (int(v) for v in rng.integers(0, side - cfg.chip_size, 2))
    return (x0, y0, x0 + cfg.chip_size, y0 + cfg.chip_size), bool(rng.random() < cfg.empty_fraction)


def write_chip(out: Path, cfg: ChipsConfig, k: int, coco: CocoWriter) -> Counter:
    side = max(VIRTUAL_SIDE, 2 * cfg.chip_size)
    plan = plan_scene(cfg, k, side, side)
    region, empty = chip_window(cfg, k)
    instances, details, shadows = [], [], []
    if not empty:
        for i, j in blocks_in_rect(plan, region[0] - REACH, region[1] - REACH, region[2] + REACH,
                                   region[3] + REACH):
            layout = layout_block(plan, i, j, cfg.classes, region)
            instances += layout.instances
            details += layout.features
            shadows += layout.shadows
    pixels = render_window(plan, region, instances, details, shadows, cfg.bands, cfg.dtype)
    png = cfg.dtype == "uint8" and cfg.bands == 3
    name = f"images/chip_{k:05d}.{'png' if png else 'tif'}"
    if png:
        Image.fromarray(np.moveaxis(pixels, 0, -1)).save(out / name, optimize=False)
    else:
        _write_tif(out / name, pixels, plan, region, cfg)
    image_id = coco.add_image(name, cfg.chip_size, cfg.chip_size)
    counts: Counter = Counter()
    for inst in instances:
        if inst.area:
            coco.add(image_id, inst, region[:2], (cfg.chip_size, cfg.chip_size))
            counts[inst.class_name] += 1
    return counts


def _write_tif(path: Path, pixels: np.ndarray, plan, region, cfg: ChipsConfig) -> None:
    transform = plan.transform @ rasterio.Affine.translation(region[0], region[1])
    with rasterio.open(path, "w", driver="GTiff", width=pixels.shape[2], height=pixels.shape[1],
                       count=pixels.shape[0], dtype=pixels.dtype, crs=CRS.from_epsg(plan.epsg),
                       transform=transform, compress="deflate", predictor=2) as dst:
        dst.write(pixels)
        for b, name in enumerate(band_names(cfg.bands), start=1):
            dst.set_band_description(b, name)
