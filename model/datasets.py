"""Which training set a config names: `train.data` is a COCO or VIA JSON of images
(`CocoChips`) or a directory of GeoTIFF scenes with one GeoJSON of footprints per scene, cut into
chips on the fly (`SceneChips`). Both yield the same (image, target) items (see model/chips.py).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

import torch

from pipeline import storage
from pipeline.config import Config


def is_scene_archive(path: str | Path) -> bool:
    """A directory of scenes (+ GeoJSON labels) rather than a JSON of chips."""
    return Path(path).is_dir()


def open_training_set(cfg: Config, path: str, *, subset: Sequence[int] | None = None,
                      augment: bool = False, seed: int = 0) -> torch.utils.data.Dataset:
    """The dataset at `path` (train.data or train.val_data) for `cfg`'s model classes and bands.

    subset: positions to keep (the train / validation split of one set). augment: the
    augmentations of `cfg.train` with `seed`; off for validation and statistics.
    """
    from model.chips import CocoChips
    from model.scene_chips import SceneChips

    tc = cfg.train
    jitter, photometric = (tc.scale_jitter, tc.photometric) if augment else (0.0, 0.0)
    if is_scene_archive(path):
        return SceneChips(path, tc.labels or None, cfg.model.classes, cfg.model.bands,
                          chip_size=tc.chip_size or cfg.tiling.tile_size, overlap=0,
                          empty_rate=tc.empty_chip_rate, augment=augment, seed=seed,
                          scale_jitter=jitter, photometric=photometric, subset=subset,
                          empty_seed=tc.seed)
    root = (tc.data_root or None) if path == tc.data else None
    return CocoChips(path, cfg.model.classes, cfg.model.bands, root, augment=augment, seed=seed,
                     scale_jitter=jitter, photometric=photometric, subset=subset)


def count_items(cfg: Config, path: str) -> int:
    """How many images (chips) `open_training_set(cfg, path)` holds, before any subset."""
    from model.chips import count_images

    if is_scene_archive(path):
        return len(open_training_set(cfg, path))
    return count_images(path)


def localised(cfg: Config) -> Config:
    """`cfg` with object-storage training paths (train.data, val_data, data_root, labels)
    replaced by node-local copies (`storage.local_copy`: fetched once per machine and version).
    A JSON's whole folder is copied, since its images are named relative to it; a scene
    directory without train.labels brings its sibling `labels/` as the local layout expects."""
    tc, changes = cfg.train, {}
    for key in ("data", "val_data"):
        uri = getattr(tc, key)
        if not (uri and storage.is_remote(uri)):
            continue
        if uri.lower().endswith(".json"):
            folder, _, name = uri.rstrip("/").rpartition("/")
            changes[key] = os.path.join(storage.local_copy(folder), name)
            continue
        changes[key] = storage.local_copy(uri)
        if key == "data" and not tc.labels:
            fs, path = storage.filesystem(uri)
            sibling = path.rstrip("/").rsplit("/", 1)[0] + "/labels"
            if not fs.exists(path.rstrip("/") + "/labels") and fs.exists(sibling):
                changes["labels"] = storage.local_copy(uri.rstrip("/").rsplit("/", 1)[0] + "/labels")
    for key in ("data_root", "labels"):
        uri = getattr(tc, key)
        if uri and storage.is_remote(uri) and key not in changes:
            changes[key] = storage.local_copy(uri)
    return dataclasses.replace(cfg, train=dataclasses.replace(tc, **changes)) if changes else cfg
