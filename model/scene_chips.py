"""Training chips cut on the fly out of GeoTIFF scenes, labelled by one GeoJSON per scene.

`SceneChips` offers `CocoChips`' interface (`images`, `gt`, `category_of`, `set_epoch`, items),
so the trainer can use either. `SceneChips[i]` -> (image, target):
    image:  float32 (C, T, T) raw band values of `bands` (1-based), T = chip_size, read through
            `pipeline.raster_io.read_window` as inference reads tiles: pixels past the scene edge
            and nodata pixels are 0
    target: boxes (N, 4) float32 xyxy, labels (N,) int64 in 1..K (the model's classes, matched by
            NAME to the GeoJSON classes), masks (N, T, T) uint8; all in the CHIP frame (pixel
            (0, 0) = scene pixel (x0, y0) of the chip's window), boxes half-open and tight
Chips: a `chip_size` grid with stride chip_size - overlap over each scene
(`pipeline.tiling.grid_windows`: edge windows shifted inward, a scene smaller than a chip gives one
window padded past its edge). Objects cut by a chip edge keep their visible part.

Labels: directory `labels`; None -> `<scenes>/labels` if it is a directory (the archive root was
passed), else `<scenes>/../labels` (the synth layout DIR/scenes + DIR/labels). GeoJSON files match
scenes as in `pipeline.labels.load_labels` (relative path without suffix, else unique stem).

Construction reads scene headers only, never pixels. Each object is rasterised once per chip it
touches (`detections_for_tile`: pixel centres inside the polygon, the same rule as inference
replay and evaluation) and kept as a chip-local RLE on its tight box: that decides exactly which
chips are empty, and makes `gt` and the items the same masks by construction. Memory: RLEs of
the objects (object-sized), one chip-sized window read per item.
"""

from __future__ import annotations

import dataclasses
import logging
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from model.chips import ChipSet
from pipeline import rle
from pipeline.detection import Detection
from pipeline.errors import MaskrayError
from pipeline.labels import (UNUSED, SceneLabels, _load_geojson_dir, _pixel_boxes,
                             detections_for_tile)
from pipeline.raster_io import open_raster, open_scene, read_window, require_bands
from pipeline.tiling import Tile, grid_windows

log = logging.getLogger(__name__)
SCENE_SUFFIXES = (".tif", ".tiff")


class SceneChips(ChipSet):
    """Square chips of GeoTIFF scenes with instance targets from per-scene GeoJSON labels."""

    def __init__(self, scenes: str | Path, labels: str | Path | None, classes: Sequence[str],
                 bands: Sequence[int], chip_size: int, overlap: int = 0,
                 empty_rate: float = 0.1, augment: bool = False, seed: int = 0,
                 scale_jitter: float = 0.0, photometric: float = 0.0,
                 subset: Sequence[int] | None = None, empty_seed: int = 0) -> None:
        """scenes: directory searched recursively for *.tif / *.tiff. labels: see the module
        docstring. A scene without a GeoJSON is skipped (warning); no scene left -> MaskrayError.

        empty_rate: share of the chips with no object that are kept (a seeded choice of exactly
            round(rate * empties) chips). The choice uses `empty_seed`, NOT `seed`: the trainer
            passes seed + rank for augmentation, and every rank, the train / val split and the
            validation set must see the same chip list.
        subset: positions in the chip list (after the empty-chip choice) to keep; image ids stay
            those of the full list, so a train and a val subset never share an id.
        seed, augment, scale_jitter, photometric: as `CocoChips`.
        """
        if isinstance(chip_size, bool) or not isinstance(chip_size, int) or chip_size <= 0:
            raise MaskrayError(f"chip_size must be a positive integer, got {chip_size!r}")
        if not 0 <= overlap < chip_size:
            raise MaskrayError(f"overlap must be in [0, chip_size={chip_size}), got {overlap}")
        if not 0.0 <= empty_rate <= 1.0:
            raise MaskrayError(f"empty_rate must be in [0, 1], got {empty_rate}")
        root = Path(scenes)
        if not root.is_dir():
            raise MaskrayError(f"scenes directory not found: {root}")
        labels_dir = labels_dir_for(root, labels)
        paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in SCENE_SUFFIXES
                       and p.is_file() and labels_dir.resolve() not in p.resolve().parents)
        ids = [p.relative_to(root).as_posix() for p in paths]
        scene_labels = _load_geojson_dir(labels_dir, ids)
        self.chip_size, self.overlap, self.bands = chip_size, overlap, tuple(bands)
        self.classes = tuple(classes)
        self.augment = augment
        self.seed, self.epoch = seed, 0
        self.scale_jitter, self.photometric = scale_jitter, photometric
        self.category_of = {k: k for k in range(1, len(self.classes) + 1)}  # model id -> COCO id
        model_id = {name: i + 1 for i, name in enumerate(self.classes)}
        names = next(iter(scene_labels.values())).class_names if scene_labels else ()
        label_of = {cid: model_id[n] for cid, n in enumerate(names) if n in model_id}
        if names[1:] and not label_of:  # GeoJSON class id -> model class id
            have = ", ".join(sorted(set(names[1:]) - {UNUSED}))
            raise MaskrayError(f"{labels_dir}: no label class ({have}) is a model class "
                               f"({', '.join(self.classes)})")
        self._paths: dict[str, Path] = {}
        chips: list[tuple[dict[str, Any], list[tuple[int, Detection]]]] = []
        for scene_id, path in zip(ids, paths):
            found = scene_labels.get(scene_id)
            if found is None:
                log.warning("scene %s has no GeoJSON labels in %s; skipped", scene_id, labels_dir)
                continue
            self._paths[scene_id] = path
            chips.extend(self._scene_chips(scene_id, path, found, label_of))
        if not chips:
            raise MaskrayError(f"no labelled GeoTIFF scene under {root} (labels: {labels_dir})")
        empties = [i for i, (_, objs) in enumerate(chips) if not objs]
        drawn = np.random.default_rng(empty_seed).choice(
            len(empties), round(empty_rate * len(empties)), replace=False)
        dropped = set(empties) - {empties[k] for k in drawn.tolist()}
        chips = [c for i, c in enumerate(chips) if i not in dropped]
        for k, (image, _) in enumerate(chips):
            image["id"] = k + 1
        if subset is not None:
            chips = [chips[i] for i in subset]
        self.images = [image for image, _ in chips]
        self._objects = [objs for _, objs in chips]

    def _scene_chips(self, scene_id: str, path: Path, found: SceneLabels, label_of: dict[int, int]
                     ) -> list[tuple[dict[str, Any], list[tuple[int, Detection]]]]:
        """The chips of one scene, row-major, each with its objects [(model label, Detection in
        the chip frame with a box-local RLE)], from the header and the label geometry only."""
        try:
            info = open_scene(path)
            require_bands(info, self.bands)
        except MaskrayError as exc:  # a training scene that can't be read is a data bug: stop
            raise MaskrayError(f"training scene {path}: {exc}") from exc
        width, height, size = info.width, info.height, self.chip_size
        tiles = grid_windows(width, height, size, self.overlap)
        objects = tuple(o for o in found.objects if o.class_id in label_of)
        near = _objects_near_tiles(found, objects, tiles, info.transform)
        out = []
        for tile, indices in zip(tiles, near):
            part = dataclasses.replace(found, objects=tuple(objects[i] for i in indices))
            dets = detections_for_tile(part, tile, info.transform, width, height) if indices \
                else []
            image = {"id": 0, "file_name": f"{scene_id}#{tile.x0},{tile.y0}", "width": size,
                     "height": size, "scene": scene_id, "window": (tile.x0, tile.y0, size, size)}
            out.append((image, [(label_of[d.class_id], d) for d in dets]))
        return out

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        img = self.images[index]
        x0, y0, w, h = img["window"]
        with open_raster(self._paths[img["scene"]]) as src:
            image, _ = read_window(src, (x0, y0, x0 + w, y0 + h), self.bands)
        labels = [label for label, _ in self._objects[index]]
        masks = np.zeros((len(labels), h, w), np.uint8)
        for m, (_, d) in zip(masks, self._objects[index]):
            m[d.y0:d.y1, d.x0:d.x1] = rle.decode(d.rle)
        return self._item(index, image, masks, labels)

    @cached_property
    def gt(self) -> dict[str, Any]:
        """COCO ground truth of these chips (what items give without augmentation), for COCOeval:
        compressed RLEs of the chip size, bbox xywh in the chip frame, categories 1..K."""
        annotations = []
        for img, objs in zip(self.images, self._objects):
            for label, d in objs:
                full = rle.to_full_image(d.rle, d.x0, d.y0, img["height"], img["width"])
                annotations.append({
                    "id": len(annotations) + 1, "image_id": img["id"], "category_id": label,
                    "segmentation": {"size": [img["height"], img["width"]],
                                     "counts": rle.counts_to_str(full["counts"])},
                    "area": float(rle.area(d.rle)), "iscrowd": 0,
                    "bbox": [float(d.x0), float(d.y0), float(d.width), float(d.height)]})
        return {"images": self.images, "annotations": annotations,
                "categories": [{"id": k, "name": n} for k, n in enumerate(self.classes, 1)]}


def labels_dir_for(scenes: Path, labels: str | Path | None) -> Path:
    """The GeoJSON directory: `labels` if given, else <scenes>/labels, else <scenes>/../labels."""
    candidates = [Path(labels)] if labels is not None else [scenes / "labels",
                                                             scenes.parent / "labels"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise MaskrayError(f"no GeoJSON labels directory: looked for "
                       f"{' and '.join(map(str, candidates))}")


def _objects_near_tiles(found: SceneLabels, objects: tuple, tiles: list[Tile], transform
                        ) -> list[list[int]]:
    """For each tile, the positions in `objects` whose (padded) pixel box meets its window.
    Binned through the grid's sorted window starts: O(objects x tiles each touches), not
    O(objects x tiles), which matters for 40 000 px scenes with 10^5 objects."""
    near: list[list[int]] = [[] for _ in tiles]
    if not objects:
        return near
    boxes = _pixel_boxes(dataclasses.replace(found, objects=objects), transform)
    size = tiles[0].x1 - tiles[0].x0
    xs, ys = sorted({t.x0 for t in tiles}), sorted({t.y0 for t in tiles})
    # window [s, s + size) meets box [b0, b1) iff b0 - size < s < b1
    c0, c1 = np.searchsorted(xs, boxes[:, 0] - size, "right"), np.searchsorted(xs, boxes[:, 2])
    r0, r1 = np.searchsorted(ys, boxes[:, 1] - size, "right"), np.searchsorted(ys, boxes[:, 3])
    for k in range(len(objects)):
        for r in range(r0[k], r1[k]):
            for c in range(c0[k], c1[k]):
                near[r * len(xs) + c].append(k)  # grid_windows is row-major
    return near
