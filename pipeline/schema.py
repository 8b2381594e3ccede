"""Arrow schemas of the inference output (schema version 1) and the Parquet file metadata.

Two tables (DESIGN.md, "Output contract"):
  instances: one row per stitched object instance; a GeoParquet 1.1 dataset.
  scenes:    one row per input scene and model; no geometry.

Coordinate frames: `px_bbox` is in scene pixels (x right, y down, half-open). `geometry` and
`bbox` are in the scene CRS; a scene without a CRS is written in pixel units (x right, y down).

File metadata (Parquet key-value, JSON, keys sorted so the bytes are deterministic):
  geo:     GeoParquet 1.1 (instances only), built by `build_geo_metadata`.
  maskray: {"schema_version", "table", "model_id", "class_names"}, by `build_maskray_metadata`.

CRS policy: GeoParquet allows one CRS per geometry column per file, and a shard may hold scenes in
several CRSs, so the writer splits a shard's instances into one part per CRS (`pipeline.commit`).
A pixel-unit part writes `"crs": null`, which GeoParquet defines as "undefined / unknown" (a
*missing* key would mean OGC:CRS84, which would be wrong). An engineering-CRS PROJJSON was the
alternative; null is what GeoPandas and GDAL read back as "no CRS" without surprises.

This module is pure: no I/O, no rasterio. Callers turn WKT into PROJJSON (`pipeline.rows`).
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import pyarrow as pa

SCHEMA_VERSION = 1
GEOPARQUET_VERSION = "1.1.0"
GEOMETRY_TYPES = ("Polygon", "MultiPolygon")
# GeoParquet 1.1 geometry type names (each may also carry a " Z" suffix).
_GEO_TYPE_NAMES = {"Point", "LineString", "Polygon", "MultiPoint", "MultiLineString",
                   "MultiPolygon", "GeometryCollection"}
SCENE_STATUSES = ("ok", "error")


def _field(name: str, kind: pa.DataType, doc: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, kind, nullable=nullable, metadata={"description": doc})


PX_BBOX_TYPE = pa.struct([pa.field(k, pa.int32(), nullable=False)
                          for k in ("x0", "y0", "x1", "y1")])
MASK_RLE_TYPE = pa.struct([
    pa.field("size", pa.list_(pa.int32()), nullable=False),
    pa.field("counts", pa.binary(), nullable=False),
])
BBOX_TYPE = pa.struct([pa.field(k, pa.float64(), nullable=False)
                       for k in ("xmin", "ymin", "xmax", "ymax")])

INSTANCE_SCHEMA = pa.schema([
    _field("scene_id", pa.string(), "source scene URI relative to the input root", False),
    _field("instance_id", pa.int64(), "unique within (scene_id, model_id), deterministic", False),
    _field("class_id", pa.int16(), "model class, 1..K (0 is background, never written)", False),
    _field("class_name", pa.string(), "name of class_id in the model bundle", False),
    _field("score", pa.float32(), "detection confidence in [0, 1]", False),
    _field("px_bbox", PX_BBOX_TYPE, "scene pixels, half-open, x right, y down", False),
    _field("mask_rle", MASK_RLE_TYPE,
           "COCO compressed RLE of the mask cropped to px_bbox, size [y1-y0, x1-x0], "
           "column-major", False),
    _field("area_px", pa.int64(), "pixels in the mask", False),
    _field("geometry", pa.binary(), "WKB (Multi)Polygon in the scene CRS (pixels if none)", False),
    _field("bbox", BBOX_TYPE, "geometry bounds in CRS units (GeoParquet 1.1 covering)", False),
    _field("model_id", pa.string(), "model bundle sha256 prefix", False),
    _field("run_id", pa.string(), "run that wrote the row", False),
])

SCENE_SCHEMA = pa.schema([
    _field("scene_id", pa.string(), "source scene URI relative to the input root", False),
    _field("model_id", pa.string(), "model bundle sha256 prefix", False),
    _field("run_id", pa.string(), "run that wrote the row", False),
    _field("status", pa.string(), "'ok' or 'error'", False),
    _field("error_type", pa.string(), "short error class when status is 'error'"),
    _field("error_message", pa.string(), "one-line error when status is 'error'"),
    _field("width", pa.int32(), "scene width in pixels"),
    _field("height", pa.int32(), "scene height in pixels"),
    _field("bands", pa.int32(), "band count"),
    _field("dtype", pa.string(), "numpy dtype name of the bands"),
    _field("crs", pa.string(), "scene CRS as WKT; null when the scene has none (pixel units)"),
    _field("epsg", pa.int32(), "EPSG code of crs when it has one"),
    _field("transform", pa.list_(pa.float64()),
           "pixel -> CRS affine, 6 floats in GDAL GeoTransform order (c, a, b, f, d, e)"),
    _field("tile_count", pa.int32(), "tiles planned for the scene"),
    _field("instance_count", pa.int64(), "rows of this scene in instances/", False),
    _field("seconds", pa.float64(), "wall seconds spent on the scene (not deterministic)"),
    _field("source_size", pa.int64(), "source object size in bytes (incremental diffing)"),
    _field("source_mtime", pa.timestamp("us", tz="UTC"), "source object modification time"),
    _field("source_etag", pa.string(), "source object ETag or checksum when the store has one"),
])


def build_geo_metadata(crs_projjson: Mapping[str, Any] | None,
                       bbox: Sequence[float] | None = None) -> dict[str, Any]:
    """GeoParquet 1.1 `geo` metadata for an instances part.

    crs_projjson: PROJJSON of the part's single CRS, or None for pixel units (written as an
        explicit `"crs": null`: GeoParquet's "unknown CRS"; see the module docstring).
    bbox: [xmin, ymin, xmax, ymax] of every geometry in the part, or None to leave it out.
    """
    column: dict[str, Any] = {
        "encoding": "WKB",
        "geometry_types": list(GEOMETRY_TYPES),
        "crs": dict(crs_projjson) if crs_projjson is not None else None,
        "edges": "planar",
        "covering": {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}},
    }
    if bbox is not None:
        column["bbox"] = [float(v) for v in bbox]
    return {"version": GEOPARQUET_VERSION, "primary_column": "geometry",
            "columns": {"geometry": column}}


def build_maskray_metadata(table: str, model_id: str,
                           class_names: Sequence[str] | Mapping[int, str] = ()) -> dict[str, Any]:
    """The `maskray` metadata key: schema version, which table, model id, {class_id: name}."""
    if table not in ("instances", "scenes"):
        raise ValueError(f"table must be 'instances' or 'scenes', got {table!r}")
    names = dict(class_names) if isinstance(class_names, Mapping) else dict(enumerate(class_names))
    return {"schema_version": SCHEMA_VERSION, "table": table, "model_id": model_id,
            "class_names": {str(int(k)): str(v) for k, v in sorted(names.items())}}


def encode_metadata(meta: Mapping[str, Any]) -> bytes:
    """Deterministic JSON bytes (sorted keys, no whitespace) for a Parquet key-value entry."""
    return json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()


def with_file_metadata(schema: pa.Schema, geo: Mapping[str, Any] | None,
                       maskray: Mapping[str, Any]) -> pa.Schema:
    """`schema` with the `geo` (when given) and `maskray` keys set, other keys kept."""
    meta = dict(schema.metadata or {})
    meta[b"maskray"] = encode_metadata(maskray)
    if geo is not None:
        meta[b"geo"] = encode_metadata(geo)
    return schema.with_metadata(meta)


def validate_geo_metadata(geo: Mapping[str, Any], schema: pa.Schema | None = None) -> None:
    """Raise ValueError unless `geo` has the shape GeoParquet 1.1 requires.

    Checks the required keys and types of the file and of each column (encoding, geometry_types,
    crs: absent, null or a PROJJSON object, edges, orientation, bbox, epoch, covering). With
    `schema`, also that the geometry columns are binary and the covering fields exist as doubles.
    """
    if not isinstance(geo.get("version"), str) or not geo["version"].startswith("1."):
        raise ValueError(f"geo.version must be a '1.x' string, got {geo.get('version')!r}")
    columns = geo.get("columns")
    if not isinstance(columns, Mapping) or not columns:
        raise ValueError("geo.columns must be a non-empty object")
    if geo.get("primary_column") not in columns:
        raise ValueError(f"geo.primary_column {geo.get('primary_column')!r} is not in columns")
    for name, col in columns.items():
        _validate_geo_column(name, col, schema)


def _validate_geo_column(name: str, col: Mapping[str, Any], schema: pa.Schema | None) -> None:
    where = f"geo.columns.{name}"
    if col.get("encoding") != "WKB":
        raise ValueError(f"{where}.encoding must be 'WKB', got {col.get('encoding')!r}")
    types = col.get("geometry_types")
    if not isinstance(types, list) or len(set(types)) != len(types) or any(
            t.removesuffix(" Z") not in _GEO_TYPE_NAMES for t in types):
        raise ValueError(f"{where}.geometry_types must list unique GeoJSON types, got {types!r}")
    crs = col.get("crs", "absent")
    if crs not in ("absent", None) and not (isinstance(crs, Mapping) and "type" in crs):
        raise ValueError(f"{where}.crs must be PROJJSON, null or absent")
    if col.get("edges", "planar") not in ("planar", "spherical"):
        raise ValueError(f"{where}.edges must be 'planar' or 'spherical'")
    if col.get("orientation", "counterclockwise") != "counterclockwise":
        raise ValueError(f"{where}.orientation must be 'counterclockwise'")
    bbox = col.get("bbox")
    if bbox is not None and (len(bbox) not in (4, 6) or not all(
            isinstance(v, (int, float)) for v in bbox)):
        raise ValueError(f"{where}.bbox must be 4 or 6 numbers")
    if "epoch" in col and not isinstance(col["epoch"], (int, float)):
        raise ValueError(f"{where}.epoch must be a number")
    if schema is not None and schema.field(name).type != pa.binary():
        raise ValueError(f"{where}: column must be binary (WKB)")
    if "covering" in col:
        _validate_covering(where, col["covering"], schema)


def _validate_covering(where: str, covering: Mapping[str, Any], schema: pa.Schema | None) -> None:
    box = covering.get("bbox") if isinstance(covering, Mapping) else None
    if not isinstance(box, Mapping) or not {"xmin", "ymin", "xmax", "ymax"} <= set(box):
        raise ValueError(f"{where}.covering.bbox must name xmin, ymin, xmax, ymax")
    paths = [box[k] for k in ("xmin", "ymin", "xmax", "ymax")]
    well_formed = all(isinstance(p, list) and len(p) == 2 for p in paths)
    if not well_formed or len({p[0] for p in paths}) != 1:
        raise ValueError(f"{where}.covering.bbox paths must be [struct, field] in one struct")
    if schema is not None:
        struct = schema.field(paths[0][0]).type
        for column, child in paths:
            if not pa.types.is_struct(struct) or struct.field(child).type != pa.float64():
                raise ValueError(f"{where}.covering.bbox: {column}.{child} must be a double")
