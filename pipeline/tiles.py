"""Planning and reading tiles: the two CPU stages before the predictor, as plain functions.

A *tile row* is one dict per tile (Ray Data turns lists of them into blocks):
    scene_id, uri, shard       which scene, where, and which commit unit it belongs to
    tile_index, n_tiles        position in `grid_windows(width, height, tile_size, overlap)`
    x0, y0                     tile window origin, scene pixels
    width, height, bands, dtype, crs_wkt, transform (6 floats, rasterio Affine order), nodata
    tile_size, overlap
    error_type, error_message  "" unless the scene failed (then the row stands for the scene)
    skip                       no pixels to predict on: all nodata, or the scene failed
A scene that cannot be opened becomes ONE row with tile_index -1 and n_tiles 0, so the driver
still learns its fate. `read_tiles` adds `image` ((C, T, T) in the batch's tile dtype, see
`tile_dtype`) and `seconds`.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, TypeVar

import numpy as np

from pipeline.raster_io import (ReadLimits, SceneError, StorageUnavailable, forget_remote,
                                open_raster, open_scene, read_window, require_bands)
from pipeline.storage import configure as configure_storage
from pipeline.storage import filesystem, is_remote
from pipeline.tiling import grid_windows

log = logging.getLogger(__name__)
T = TypeVar("T")


def plan_scene(item: dict[str, Any], tile_size: int, overlap: int, bands: tuple[int, ...],
               max_pixels: int, storage: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Open a scene's header (never its pixels) and list its tiles; one error row on failure.
    storage: `pipeline.storage.Resolved.to_dict()` for scenes in object storage."""
    settings = configure_storage(storage)
    base = {"scene_id": item["scene_id"], "uri": item["uri"], "shard": int(item["shard"]),
            "tile_size": tile_size, "overlap": overlap}
    try:
        info = retrying(lambda: open_scene(item["uri"], limits=ReadLimits(max_pixels=max_pixels)),
                        settings.retries, on_retry=lambda: forget_remote(item["uri"]))
        require_bands(info, bands)
    except SceneError as exc:
        return [_error_row(base, exc.error_type, exc.message)]
    meta = {"width": info.width, "height": info.height, "bands": info.count,
            "dtype": str(info.dtype), "crs_wkt": info.crs.to_wkt() if info.crs else "",
            "transform": list(info.transform)[:6],
            "nodata": float("nan") if info.nodata is None else float(info.nodata)}
    tiles = grid_windows(info.width, info.height, tile_size, overlap)
    return [{**base, **meta, "tile_index": i, "n_tiles": len(tiles), "x0": t.x0, "y0": t.y0,
             "error_type": "", "error_message": "", "skip": False}
            for i, t in enumerate(tiles)]


def retrying(fn: Callable[[], T], attempts: int, first_delay_s: float = 0.5,
             on_retry: Callable[[], None] = lambda: None) -> T:
    """fn(), called again after 0.5, 1, 2, ... s while the object store is unavailable, at most
    `attempts` times in all (storage.retries); then StorageUnavailable propagates and fails the
    task, so the run fails without committing the shard instead of recording a healthy scene as
    an error row. `on_retry` runs before each new attempt (e.g. to forget GDAL's cache)."""
    for attempt in range(attempts):
        try:
            return fn()
        except StorageUnavailable as exc:
            if attempt == attempts - 1:
                raise
            delay = first_delay_s * 2 ** attempt
            log.warning("object store unavailable (%s); retrying in %.1f s", exc, delay)
            time.sleep(delay)
            on_retry()
    raise AssertionError("unreachable")


def store_answers(uri: str) -> bool:
    """Whether the object store answers a metadata request about `uri` (a missing object is an
    answer too); False when it cannot be reached after the client's own retries."""
    fs, inner = filesystem(uri)
    try:
        fs.invalidate_cache(inner)  # ask the store, not s3fs's listing cache
        fs.info(inner)
    except FileNotFoundError:
        return True
    except Exception:  # noqa: BLE001 - connection refused, timeouts, 5xx: the store is away
        return False
    return True


def refused_row(scene_id: str, shard: int, reason: str) -> dict[str, Any]:
    """The one row of a scene whose name was refused (`SceneRef.refused`): a bad_key error,
    decided on the driver; the scene never reaches a worker."""
    return _error_row({"scene_id": scene_id, "uri": "", "shard": int(shard), "tile_size": 0,
                       "overlap": 0, "seconds": 0.0}, "bad_key", reason)


def _error_row(base: dict[str, Any], error_type: str, message: str) -> dict[str, Any]:
    return {**base, "width": 0, "height": 0, "bands": 0, "dtype": "", "crs_wkt": "",
            "transform": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0], "nodata": float("nan"),
            "tile_index": -1, "n_tiles": 0, "x0": 0, "y0": 0,
            "error_type": error_type, "error_message": message.splitlines()[0][:500], "skip": True}


def tile_dtype(dtypes) -> np.dtype:
    """The dtype a batch of tiles travels in: the scenes' own sample type when every scene of the
    batch is 8- or 16-bit integer (lossless, and 2-4x fewer bytes through the object store than
    float32), float32 otherwise. The predictor converts to float32 on its device."""
    found = [np.dtype(d) for d in dtypes if d]
    if not found:
        return np.dtype(np.float32)
    common = np.result_type(*found)
    if common.kind in "ui" and common.itemsize <= 2:
        return common
    return np.dtype(np.float32)


def _fill_values(fill: tuple[float, ...], dtype: np.dtype) -> np.ndarray:
    """`fill` (C,) cast to `dtype`: rounded and clipped for integer tiles."""
    values = np.asarray(fill, dtype=np.float64)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    return values.astype(dtype)


def read_tiles(batch: dict[str, np.ndarray], bands: tuple[int, ...],
               fill: tuple[float, ...] | None, storage: dict[str, Any] | None = None
               ) -> dict[str, np.ndarray]:
    """Read each row's window (C = len(bands), T = tile_size) with a windowed read.

    Pixels outside the scene or marked nodata are set to `fill` (the model's per-band mean, so
    they look like nothing in particular after normalisation; rounded for integer tiles); a tile
    with no valid pixel is marked `skip`. A read that fails mid-file (a truncated scene) marks
    the row as an error. `image` is (N, C, T, T) in `tile_dtype` of the batch's scenes.
    """
    settings = configure_storage(storage)
    n = len(batch["scene_id"])
    size = int(batch["tile_size"][0]) if n else 0
    skip = batch["skip"].astype(bool).copy()
    dtype = tile_dtype(str(batch["dtype"][i]) for i in np.flatnonzero(~skip))
    images = np.zeros((n, len(bands), size, size), dtype=dtype)
    fill_values = None if fill is None else _fill_values(fill, dtype)[:, None]
    error_type = batch["error_type"].astype(object).copy()
    error_message = batch["error_message"].astype(object).copy()
    seconds = np.zeros(n, dtype=np.float64)
    # Open each scene once per batch: rows of one scene arrive together and in row-major order,
    # which also lets GDAL's block cache serve PNG / JPEG rows it already decoded.
    for uri in dict.fromkeys(str(batch["uri"][i]) for i in np.flatnonzero(~skip)):
        rows = [i for i in np.flatnonzero(~skip) if str(batch["uri"][i]) == uri]
        start = time.perf_counter()

        def read_scene_rows(uri=uri, rows=rows) -> None:
            with open_raster(uri) as src:
                for i in rows:
                    x0, y0 = int(batch["x0"][i]), int(batch["y0"][i])
                    # float32 holds every 8/16-bit sample exactly, so the cast back is lossless
                    pixels, valid = read_window(src, (x0, y0, x0 + size, y0 + size), bands)
                    images[i], skip[i] = pixels, not valid.any()
                    if fill_values is not None:
                        images[i][:, ~valid] = fill_values

        def read_or_ask_store(uri=uri, read=read_scene_rows) -> None:
            try:
                read()
            except SceneError as exc:
                if exc.error_type != "read_failed" or not is_remote(uri):
                    raise
                # GDAL can report a block it could not fetch as a decoding error
                # ("TIFFReadEncodedTile() failed"), the curl error staying behind: read once
                # more with a fresh cache, and before blaming the file ask the store itself.
                forget_remote(uri)
                try:
                    read()
                except SceneError as again:
                    if again.error_type == "read_failed" and not store_answers(uri):
                        raise StorageUnavailable(
                            f"{again.message} (and the store does not answer)") from again
                    raise

        try:
            retrying(read_or_ask_store, settings.retries,
                     on_retry=lambda uri=uri: forget_remote(uri))
        except SceneError as exc:
            for i in rows:
                skip[i], error_type[i], error_message[i] = True, exc.error_type, exc.message
        seconds[rows] = (time.perf_counter() - start) / len(rows)
    return {**batch, "image": images, "skip": skip, "error_type": error_type,
            "error_message": error_message, "seconds": seconds}
