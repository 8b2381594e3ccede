"""Reading an inference output back: tables, masks, COCO results, the scenes already done.

Readers open only `instances/` and `scenes/` (committed parts; staging lives in `_staging/`), as
pyarrow datasets with hive partitioning, so the tables gain a `model` column (dictionary string)
beside `model_id`. The same data from DuckDB, without any ST_ function:

    SELECT scene_id, class_name, count(*) AS n
    FROM read_parquet('<root>/instances/**/*.parquet', hive_partitioning = true)
    GROUP BY ALL ORDER BY ALL;                        -- instances per class per scene
    ... WHERE scene_id = 's' AND px_bbox.x0 < 200 AND px_bbox.x1 > 100
          AND px_bbox.y0 < 200 AND px_bbox.y1 > 100;  -- px_bbox meets window [100,200)^2

Frames: `decode_mask` gives the box-local mask, (y1 - y0, x1 - x0) bool, whose pixel [r, c] is
scene pixel (x0 + c, y0 + r); `decode_full_mask` places it in a (height, width) scene array.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline import rle
from pipeline.commit import open_root, partition_dir
from pipeline.schema import INSTANCE_SCHEMA, SCENE_SCHEMA


def open_dataset(root: str, table: str, model_id: str | None = None,
                 filesystem: fsspec.AbstractFileSystem | None = None) -> ds.Dataset | None:
    """pyarrow dataset over the committed parts of `table` ("instances" or "scenes"), all models
    or one; None when nothing is committed yet."""
    if table not in ("instances", "scenes"):
        raise ValueError(f"table must be 'instances' or 'scenes', got {table!r}")
    fs, path = open_root(root, filesystem)
    base = partition_dir(path, table, model_id) if model_id else f"{path}/{table}"
    files = sorted(p for p in fs.glob(f"{base}/**/*.parquet")
                   if not any(s[:1] in "._" for s in p[len(base):].split("/") if s))
    if not files:
        return None
    schema = INSTANCE_SCHEMA if table == "instances" else SCENE_SCHEMA
    partitioning = ds.partitioning(pa.schema([("model", pa.string())]), flavor="hive")
    return ds.dataset(files, schema=schema.append(pa.field("model", pa.string())),
                      filesystem=fs, format="parquet", partitioning=partitioning,
                      partition_base_dir=f"{path}/{table}")


def read_instances(root: str, model_id: str | None = None,
                   filesystem: fsspec.AbstractFileSystem | None = None,
                   columns: list[str] | None = None, filter: Any = None) -> pa.Table:
    """All committed instance rows (INSTANCE_SCHEMA + `model`), optionally one model's, only
    `columns`, and rows matching `filter` (a pyarrow.compute expression)."""
    return _read(root, "instances", model_id, filesystem, columns, filter)


def read_scenes(root: str, model_id: str | None = None,
                filesystem: fsspec.AbstractFileSystem | None = None,
                columns: list[str] | None = None, filter: Any = None) -> pa.Table:
    """All committed scene rows (SCENE_SCHEMA + `model`); see `read_instances`."""
    return _read(root, "scenes", model_id, filesystem, columns, filter)


def done_scene_ids(root: str, model_id: str, filesystem: fsspec.AbstractFileSystem | None = None,
                   statuses: Iterable[str] = ("ok", "error")) -> set[str]:
    """Scene ids with a committed scenes row for `model_id` and a status in `statuses`: the
    scenes a re-run skips. Pass statuses=("ok",) to retry failed scenes (their new row is added
    beside the old error row; read the latest by run_id)."""
    wanted = list(statuses)
    table = read_scenes(root, model_id, filesystem, columns=["scene_id"],
                        filter=ds.field("status").isin(wanted))
    return set(table.column("scene_id").to_pylist())


def read_geo_metadata(path: str, filesystem: fsspec.AbstractFileSystem | None = None
                      ) -> dict[str, Any] | None:
    """The parsed GeoParquet `geo` key of one Parquet file (None when absent)."""
    fs, p = open_root(path, filesystem)
    with fs.open(p, "rb") as f:
        meta = pq.read_schema(f).metadata or {}
    return json.loads(meta[b"geo"]) if b"geo" in meta else None


def decode_mask(row: Mapping[str, Any]) -> np.ndarray:
    """Box-local mask of one instance row: (y1 - y0, x1 - x0) bool; [r, c] is scene pixel
    (x0 + c, y0 + r). row: a dict from `Table.to_pylist()` (needs `mask_rle`)."""
    return rle.decode(_rle_of(row))


def decode_full_mask(row: Mapping[str, Any], height: int, width: int) -> np.ndarray:
    """The instance's mask in a (height, width) bool scene array. Allocates the whole scene:
    for big scenes prefer `decode_mask` + px_bbox, or `full_image_rle`."""
    return rle.decode(full_image_rle(row, height, width))


def full_image_rle(row: Mapping[str, Any], height: int, width: int) -> dict[str, Any]:
    """Full-scene COCO compressed RLE {"size": [height, width], "counts": bytes} of one row,
    built from runs (memory O(box), not O(scene))."""
    box = row["px_bbox"]
    return rle.to_full_image(_rle_of(row), box["x0"], box["y0"], height, width)


def to_coco_results(instances: pa.Table, scenes: pa.Table | Mapping[str, tuple[int, int]],
                    image_ids: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """COCO results JSON entries (what `COCO.loadRes` takes) for instance rows.

    scenes: the scenes table, or {scene_id: (height, width)}: full-image RLEs need the scene size.
    image_ids: {scene_id: COCO image id}; default the scene_id itself.
    Each entry: image_id, category_id (= class_id), score, bbox [x, y, w, h] in pixels from
    px_bbox, segmentation = full-image compressed RLE with `counts` as str.
    """
    sizes = _scene_sizes(scenes)
    cols = ["scene_id", "class_id", "score", "px_bbox", "mask_rle"]
    results = []
    for row in instances.select(cols).to_pylist():
        height, width = sizes[row["scene_id"]]
        seg = full_image_rle(row, height, width)
        box = row["px_bbox"]
        results.append({
            "image_id": image_ids[row["scene_id"]] if image_ids is not None else row["scene_id"],
            "category_id": int(row["class_id"]),
            "score": float(row["score"]),
            "bbox": [box["x0"], box["y0"], box["x1"] - box["x0"], box["y1"] - box["y0"]],
            "segmentation": {"size": [height, width], "counts": rle.counts_to_str(seg["counts"])},
        })
    return results


def _read(root: str, table: str, model_id: str | None,
          filesystem: fsspec.AbstractFileSystem | None, columns: list[str] | None,
          filter: Any) -> pa.Table:
    dataset = open_dataset(root, table, model_id, filesystem)
    if dataset is None:
        schema = INSTANCE_SCHEMA if table == "instances" else SCENE_SCHEMA
        schema = schema.append(pa.field("model", pa.string()))
        empty = schema.empty_table()
        return empty.select(columns) if columns is not None else empty
    return dataset.to_table(columns=columns, filter=filter)


def _rle_of(row: Mapping[str, Any]) -> dict[str, Any]:
    mask = row["mask_rle"]
    return {"size": [int(v) for v in mask["size"]], "counts": bytes(mask["counts"])}


def _scene_sizes(scenes: pa.Table | Mapping[str, tuple[int, int]]) -> Mapping[str, tuple[int, int]]:
    if isinstance(scenes, pa.Table):
        rows = scenes.select(["scene_id", "height", "width"]).to_pylist()
        return {r["scene_id"]: (int(r["height"]), int(r["width"])) for r in rows
                if r["height"] is not None and r["width"] is not None}
    return scenes
