"""The two CPU stages before the predictor: plan_scene lists a scene's tiles from its header,
read_tiles fills them with windowed reads, in the scenes' own sample type where that is lossless."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.tiles import plan_scene, read_tiles, tile_dtype
from pipeline.tiling import grid_windows
from tests.pipeline.test_raster_io import write_tif

TILE, OVERLAP = 64, 16


def plan(path: Path, bands=(1, 2, 3), shard: int = 0) -> list[dict]:
    return plan_scene({"scene_id": path.stem, "uri": str(path), "shard": shard},
                      tile_size=TILE, overlap=OVERLAP, bands=bands, max_pixels=10 ** 8)


def as_batch(rows: list[dict]) -> dict[str, np.ndarray]:
    """Rows -> the column dict Ray Data hands a map_batches function."""
    batch = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        column = np.empty(len(values), dtype=object)
        column[:] = values
        batch[key] = column if isinstance(values[0], (str, list)) else np.asarray(values)
    return batch


def expected_tile(data: np.ndarray, x0: int, y0: int, fill) -> np.ndarray:
    """data (C, H, W) sliced at the tile window, `fill` outside the scene."""
    count, height, width = data.shape
    out = np.empty((count, TILE, TILE), dtype=data.dtype)
    out[:] = np.asarray(fill, dtype=data.dtype)[:, None, None]
    h, w = min(TILE, height - y0), min(TILE, width - x0)
    out[:, :h, :w] = data[:, y0:y0 + h, x0:x0 + w]
    return out


@pytest.mark.parametrize("dtype, fill, fill_as", [
    ("uint8", (123.675, 116.28, 103.53), (124, 116, 104)),
    ("uint16", (300.4, 0.0, 70000.0), (300, 0, 65535)),  # rounded, and clipped to the dtype
    ("int16", (-2.6, 5.5, 0.0), (-3, 6, 0)),
])
def test_integer_scenes_travel_in_their_own_dtype_exactly(tmp_path, dtype, fill, fill_as):
    rng = np.random.default_rng(3)
    info = np.iinfo(dtype)
    data = rng.integers(info.min, info.max, size=(3, 100, 150), endpoint=True).astype(dtype)
    path = write_tif(tmp_path / f"{dtype}.tif", data)
    rows = plan(path)
    assert len(rows) == len(grid_windows(150, 100, TILE, OVERLAP))
    assert {r["dtype"] for r in rows} == {dtype}
    out = read_tiles(as_batch(rows), bands=(1, 2, 3), fill=fill)
    assert out["image"].dtype == np.dtype(dtype)
    assert out["image"].shape == (len(rows), 3, TILE, TILE)
    for i, row in enumerate(rows):
        np.testing.assert_array_equal(out["image"][i], expected_tile(data, row["x0"], row["y0"], fill_as))
    assert not out["skip"].any()


def test_float_scene_and_band_selection(tmp_path):
    data = np.random.default_rng(4).normal(size=(4, 70, 70)).astype(np.float32)
    path = write_tif(tmp_path / "f.tif", data)
    rows = plan(path, bands=(4, 2))
    out = read_tiles(as_batch(rows), bands=(4, 2), fill=(0.5, -0.5))
    assert out["image"].dtype == np.float32
    for i, row in enumerate(rows):
        np.testing.assert_array_equal(out["image"][i],
                                      expected_tile(data[[3, 1]], row["x0"], row["y0"], (0.5, -0.5)))


def test_a_batch_of_mixed_scenes_takes_their_common_type(tmp_path):
    small = np.full((3, 40, 40), 200, np.uint8)
    wide = np.full((3, 40, 40), 4000, np.uint16)
    rows = plan(write_tif(tmp_path / "a.tif", small)) + plan(write_tif(tmp_path / "b.tif", wide))
    out = read_tiles(as_batch(rows), bands=(1, 2, 3), fill=None)
    assert out["image"].dtype == np.uint16
    assert out["image"][0, :, :40, :40].max() == 200 and out["image"][1, :, :40, :40].min() == 4000


def test_all_nodata_tile_is_skipped_and_a_truncated_scene_is_an_error(tmp_path):
    data = np.zeros((3, 150, 60), np.uint8)
    data[:, 100:] = 7  # only the bottom tiles see valid pixels
    rows = plan(write_tif(tmp_path / "nd.tif", data, nodata=0))
    out = read_tiles(as_batch(rows), bands=(1, 2, 3), fill=(1, 1, 1))
    assert [bool(s) for s in out["skip"]] == [r["y0"] + TILE <= 100 for r in rows]

    big = np.random.default_rng(5).integers(0, 255, (3, 600, 600), dtype=np.uint8)
    path = write_tif(tmp_path / "cut.tif", big, compress="deflate", tiled=True)
    rows = plan(path)  # the header is intact ...
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # ... the pixels are not
    out = read_tiles(as_batch(rows), bands=(1, 2, 3), fill=None)
    assert out["skip"].all()
    assert set(out["error_type"]) == {"read_failed"}


def test_unreadable_scene_becomes_one_error_row():
    rows = plan_scene({"scene_id": "gone", "uri": "/nonexistent/gone.tif", "shard": 3},
                      tile_size=TILE, overlap=OVERLAP, bands=(1,), max_pixels=10 ** 8)
    assert len(rows) == 1
    assert rows[0]["tile_index"] == -1 and rows[0]["skip"] and rows[0]["shard"] == 3
    assert rows[0]["error_type"] and "\n" not in rows[0]["error_message"]


def test_tile_dtype_rule():
    assert tile_dtype(["uint8", "uint8"]) == np.uint8
    assert tile_dtype(["uint8", "int16"]) == np.int16
    assert tile_dtype(["uint16", "int16"]) == np.float32  # int32 would not be smaller
    assert tile_dtype(["float64"]) == np.float32
    assert tile_dtype(["int32"]) == np.float32
    assert tile_dtype([]) == np.float32
