"""Tile predictors: ray-free callables that turn a batch of tiles into detections.

Ray Data hands each call a batch as a dict of numpy arrays (one entry per column, first axis =
rows). The columns a predictor reads:
    image:  (N, C, T, T) raw band values of the tile (padded past the scene edge), uint8 /
            uint16 / int16 / float32 as `pipeline.tiles.tile_dtype` chose,
    x0, y0: int (N,) tile window origin in scene pixels,
    width, height: int (N,) scene size in pixels,
    skip:   bool (N,) tile holds no valid pixel (all nodata) or its scene failed to read,
and it returns the batch without `image`, plus `detections`: an object array (N,) of lists of
`Detection` in the SCENE frame, clipped to the scene. Both predictors below can be called
directly on one batch in a test, and handed to `map_batches` as they are.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from pycocotools import mask as mask_utils
from pipeline.detection import Detection
from pipeline.masks import encode_box_masks

log = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]


def resolve_device(device: str) -> torch.device:
    """"auto" -> cuda when a GPU is visible to this process, else cpu."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


class TilePredictor:
    """Mask R-CNN from a model bundle, loaded once per instance (once per Ray actor).

    Forward passes run in chunks of `batch_size` tiles under `torch.inference_mode`, with bf16
    autocast on CUDA, and on CPU when `cpu_precision` resolves to "bf16" (`infer.cpu_precision`,
    model/precision.py). The model is built with `paste_masks=False`: it returns (N, 1, 28, 28)
    mask probabilities, which `encode_box_masks` turns into box-local RLEs without ever making
    the N x T x T float masks torchvision would paste. channels_last: the model's weights in
    NHWC (`infer.channels_last`), so its convolutions run NHWC.
    """

    def __init__(self, bundle_uri: str, device: str = "auto", batch_size: int = 4,
                 amp: bool = True, threads: int | None = None, channels_last: bool = False,
                 storage: dict[str, Any] | None = None, cpu_precision: str = "fp32") -> None:
        from model.bundle import load_bundle  # torchvision import stays off the driver's path
        from model.precision import autocast_dtype
        from pipeline.storage import configure

        configure(storage)  # a bundle in object storage: this process's endpoint and timeouts

        if threads:  # decided by pipeline.dataflow.actor_threads unless infer.threads is set
            torch.set_num_threads(threads)
        self.device = resolve_device(device)
        bundle = load_bundle(bundle_uri)
        self.model = bundle.build_model(device=str(self.device), paste_masks=False).eval()
        if channels_last:  # NHWC weights: every convolution then runs (and outputs) NHWC
            self.model = self.model.to(memory_format=torch.channels_last)
        self.mask_threshold = bundle.model.mask_threshold
        self.batch_size = batch_size
        self.autocast = autocast_dtype(self.device.type, cuda_dtype=torch.bfloat16 if amp else None,
                                       cpu_precision=cpu_precision)
        log.info("TilePredictor: model %s on %s (%s)", bundle.model_id, self.device,
                 str(self.autocast or torch.float32).split(".")[-1])

    def __call__(self, batch: Batch) -> Batch:
        n = len(batch["x0"])
        detections = np.empty(n, dtype=object)
        for i in range(n):
            detections[i] = []
        failed: dict[int, str] = {}
        todo = np.flatnonzero(~batch["skip"].astype(bool))
        start = 0
        while start < len(todo):  # the chunk size may shrink after an out-of-memory error
            rows = todo[start:start + self.batch_size]
            start += len(rows)
            for row, dets in self._predict_splitting(batch, rows):
                if dets is None:
                    failed[int(row)] = (f"the model ran out of memory on a single "
                                        f"{batch['image'].shape[-1]} px tile at x={batch['x0'][row]}"
                                        f" y={batch['y0'][row]} on {self.device.type}: use a "
                                        "smaller tiling.tile_size or a device with more memory")
                else:
                    detections[row] = place_in_scene(dets, batch, row)
        return _without_image(batch, detections, failed)

    def _predict_splitting(self, batch: Batch, rows: np.ndarray
                           ) -> list[tuple[int, list[Detection] | None]]:
        """Predict the tiles `rows` of `batch`; on an out-of-memory error split them in halves
        and try again, down to single tiles. A single tile that still does not fit gets None (it
        becomes an error row of its scene, never a silent drop). After a split, later chunks use
        the size that fitted, so one tight batch does not cost an OOM per batch."""
        try:
            return list(zip(rows, self._predict(batch["image"][rows])))
        except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are handled
            if not is_out_of_memory(exc):
                raise
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # give back what the failed forward had cached
        if len(rows) == 1:
            log.warning("out of memory on a single tile at x=%s y=%s of %s", batch["x0"][rows[0]],
                        batch["y0"][rows[0]], batch["scene_id"][rows[0]])
            return [(rows[0], None)]
        half = len(rows) // 2
        if half < self.batch_size:
            log.warning("out of memory on %d tiles: predicting %d at a time from now on",
                        len(rows), half)
            self.batch_size = half
        return (self._predict_splitting(batch, rows[:half])
                + self._predict_splitting(batch, rows[half:]))

    def _predict(self, images: np.ndarray) -> list[list[Detection]]:
        """images: (B, C, T, T) raw band values, any dtype -> per image, detections in the tile
        frame. Integer tiles cross to the device as they are and become float32 there."""
        tensor = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).float()
        with torch.inference_mode(), torch.autocast(self.device.type,
                                                     dtype=self.autocast or torch.float32,
                                                     enabled=self.autocast is not None):
            outputs = self.model(list(tensor))
        size = (images.shape[2], images.shape[3])
        return [encode_box_masks(o["masks"].float().cpu(), o["boxes"].float().cpu(),
                                 o["labels"].cpu(), o["scores"].float().cpu(), size,
                                 self.mask_threshold) for o in outputs]


class LabelsPredictor:
    """Replays ground truth through the same path as a model: each tile sees only the part of
    each labelled object inside its window. Labels come from `pipeline.labels.load_labels`."""

    def __init__(self, labels_uri: str, input_root: str) -> None:
        from pipeline.labels import load_labels

        self.labels = load_labels(labels_uri, input_root)

    def __call__(self, batch: Batch) -> Batch:
        from pipeline.labels import detections_for_tile, labels_for_scene

        n = len(batch["x0"])
        detections = np.empty(n, dtype=object)
        for i in range(n):
            detections[i] = []
            scene = labels_for_scene(self.labels, str(batch["scene_id"][i]))
            if batch["skip"][i] or scene is None:
                continue
            tile = _tile_from_row(batch, i)
            dets = detections_for_tile(scene, tile, _transform_from_row(batch, i),
                                       int(batch["width"][i]), int(batch["height"][i]))
            detections[i] = place_in_scene(dets, batch, i)
        return _without_image(batch, detections)


def place_in_scene(dets: list[Detection], batch: Batch, row: int) -> list[Detection]:
    """Tile-frame detections -> scene frame, clipped to the scene (padded tiles reach past it)."""
    dx, dy = int(batch["x0"][row]), int(batch["y0"][row])
    width, height = int(batch["width"][row]), int(batch["height"][row])
    placed = []
    for det in dets:
        det = det.shifted(dx, dy)
        if det.x0 < 0 or det.y0 < 0 or det.x1 > width or det.y1 > height:
            det = clip_detection(det, width, height)
        if det is not None:
            placed.append(det)
    return placed


def clip_detection(det: Detection, width: int, height: int) -> Detection | None:
    """Crop a scene-frame detection to the scene rectangle [0, width) x [0, height); None when
    nothing is left. Works on the box-local mask only (the box is at most a tile)."""
    x0, y0 = max(det.x0, 0), max(det.y0, 0)
    x1, y1 = min(det.x1, width), min(det.y1, height)
    if x1 <= x0 or y1 <= y0:
        return None
    mask = mask_utils.decode(det.rle)[y0 - det.y0:y1 - det.y0, x0 - det.x0:x1 - det.x0]
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    # Re-tighten: the part that was cut off may have held the mask's extreme pixels.
    mask = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    rle_ = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return Detection(det.class_id, det.score, x0 + int(xs.min()), y0 + int(ys.min()),
                     x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1, rle_)


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA (or CPU allocator) out-of-memory error: the forward may fit in smaller pieces."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text
                                              or "can't allocate memory" in text)


def _without_image(batch: Batch, detections: np.ndarray,
                   failed: dict[int, str] | None = None) -> Batch:
    """The batch without its pixels, with `detections`; rows in `failed` (row -> message) are
    marked skipped with error_type "out_of_memory", which fails their scene on the driver."""
    out = {k: v for k, v in batch.items() if k != "image"}
    out["detections"] = detections
    if failed:
        skip = out["skip"].astype(bool).copy()
        error_type = out["error_type"].astype(object).copy()
        error_message = out["error_message"].astype(object).copy()
        for row, message in failed.items():
            skip[row], error_type[row], error_message[row] = True, "out_of_memory", message
        out.update(skip=skip, error_type=error_type, error_message=error_message)
    return out


def _tile_from_row(batch: Batch, i: int) -> Any:
    from pipeline.tiling import grid_windows

    tiles = grid_windows(int(batch["width"][i]), int(batch["height"][i]),
                         int(batch["tile_size"][i]), int(batch["overlap"][i]))
    return tiles[int(batch["tile_index"][i])]


def _transform_from_row(batch: Batch, i: int) -> Any:
    from affine import Affine

    return Affine(*[float(v) for v in batch["transform"][i][:6]])
