"""Stitched detections of a scene -> Arrow rows of the `instances` and `scenes` tables.

Georeferencing: a scene with a CRS gets its geometry in that CRS through its affine transform;
a scene without a CRS gets pixel units (x right, y down), whatever transform it may declare,
because coordinates in an unknown frame are worse than honest pixels (DESIGN.md).

Instance ids: detections that carry `instance_id` (the stitcher's instances) keep it; plain
`Detection`s are numbered 0..n-1 in a canonical order (box, class, score, mask bytes), so the same
detections in any order give the same rows. Rows come out sorted by (y0, x0, instance_id), the
order the writer keeps inside a scene so DuckDB can prune row groups on the pixel box.

Shard helpers for the writer (`pipeline.commit`): `check_shard_tables`, `split_by_crs` (one
GeoParquet part per CRS), `sort_instances`, `build_part_geo`. CRS conversions go through rasterio
(GDAL): pyproj is not a dependency, and `CRS.to_dict(projjson=True)` gives the same PROJJSON.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import rasterio
import shapely
from affine import Affine
from rasterio.crs import CRS

from pipeline import rle
from pipeline.detection import Detection
from pipeline.geometry import masks_to_geometries
from pipeline.schema import (BBOX_TYPE, GEOMETRY_TYPES, INSTANCE_SCHEMA, MASK_RLE_TYPE,
                             PX_BBOX_TYPE, SCENE_SCHEMA, SCENE_STATUSES, build_geo_metadata)

log = logging.getLogger(__name__)

OUTLINE_CHUNK = 4096  # detections outlined at a time (bounds the decoded masks held)


@dataclass(frozen=True)
class SceneInfo:
    """What the scenes table records about one input scene (header facts and outcome).

    transform: pixel -> CRS, an `affine.Affine` or 6 floats in GDAL GeoTransform order
        (c, a, b, f, d, e); None when the scene has none.
    crs_wkt: the scene CRS as WKT (rasterio `crs.to_wkt()`); None means pixel units.
    source_mtime: datetime (naive = UTC) or POSIX seconds; source_* feed incremental re-runs.
    """

    scene_id: str
    width: int | None = None
    height: int | None = None
    bands: int | None = None
    dtype: str | None = None
    crs_wkt: str | None = None
    transform: Affine | Sequence[float] | None = None
    tile_count: int | None = None
    seconds: float | None = None
    status: str = "ok"
    error_type: str | None = None
    error_message: str | None = None
    source_size: int | None = None
    source_mtime: dt.datetime | float | None = None
    source_etag: str | None = None

    def __post_init__(self) -> None:
        if self.status not in SCENE_STATUSES:
            raise ValueError(f"status must be one of {SCENE_STATUSES}, got {self.status!r}")
        if self.crs_wkt is not None and self.transform is None:
            # Geometry would silently come out in pixels while the part claims the CRS.
            raise ValueError(f"scene {self.scene_id}: a CRS without a transform")

    @property
    def affine(self) -> Affine | None:
        """The transform as an `Affine` (None when the scene has none)."""
        return to_affine(self.transform)


def to_affine(transform: Affine | Sequence[float] | None) -> Affine | None:
    """Affine from an Affine or 6 floats in GDAL GeoTransform order."""
    if transform is None or isinstance(transform, Affine):
        return transform
    if len(transform) != 6:
        raise ValueError(f"transform must be an Affine or 6 GDAL-order floats, got {transform!r}")
    return Affine.from_gdal(*map(float, transform))


def crs_to_projjson(crs_wkt: str | None) -> dict[str, Any] | None:
    """PROJJSON of a WKT CRS (via rasterio/GDAL; pyproj is not a dependency); None stays None."""
    return None if crs_wkt is None else CRS.from_wkt(crs_wkt).to_dict(projjson=True)


def crs_to_epsg(crs_wkt: str | None) -> int | None:
    """EPSG code of a WKT CRS when it has one (custom CRSs have none)."""
    return None if crs_wkt is None else CRS.from_wkt(crs_wkt).to_epsg()


def build_instance_table(scene: SceneInfo, detections: Sequence[Detection], model_id: str,
                         run_id: str, class_names: Sequence[str] | Mapping[int, str]) -> pa.Table:
    """Instance rows (INSTANCE_SCHEMA) of one scene.

    detections: scene-frame `Detection`s (or stitched instances with an `instance_id`), box-local
        RLE masks. Detections whose mask is empty carry no object and are dropped (logged).
    class_names: indexed by class_id (a list with background at 0, or {class_id: name}).
    Geometry: the box-local mask's outline (`pipeline.geometry.masks_to_geometries`, equal to
    `mask_to_geometry` per mask), in the scene CRS, or in pixels when the scene has no CRS; bbox =
    geometry bounds; area_px from the RLE.
    """
    transform = scene.affine if scene.crs_wkt is not None else None
    kept = []
    for iid, det in _number(detections):
        _check_detection(det)
        area = rle.area(det.rle)
        if area == 0:
            log.warning("scene %s: dropping a detection with an empty mask", scene.scene_id)
            continue
        kept.append((iid, det, area))
    kept.sort(key=lambda r: (r[1].y0, r[1].x0, r[0]))
    dets = [det for _, det, _ in kept]
    wkb, bounds = _outlines(dets, transform)
    n = len(dets)
    box = {k: pa.array([getattr(d, k) for d in dets], pa.int32()) for k in ("x0", "y0", "x1", "y1")}
    columns = {
        "scene_id": pa.array([scene.scene_id] * n, pa.string()),
        "instance_id": pa.array([iid for iid, _, _ in kept], pa.int64()),
        "class_id": pa.array([d.class_id for d in dets], pa.int16()),
        "class_name": pa.array([_class_name(class_names, d.class_id) for d in dets], pa.string()),
        "score": pa.array([d.score for d in dets], pa.float32()),
        "px_bbox": pa.StructArray.from_arrays(list(box.values()), fields=list(PX_BBOX_TYPE)),
        "mask_rle": pa.StructArray.from_arrays(
            [pa.array([list(d.rle["size"]) for d in dets], pa.list_(pa.int32())),
             pa.array([bytes(d.rle["counts"]) for d in dets], pa.binary())],
            fields=list(MASK_RLE_TYPE)),
        "area_px": pa.array([area for _, _, area in kept], pa.int64()),
        "geometry": pa.array(wkb, pa.binary()),
        "bbox": pa.StructArray.from_arrays([pa.array(bounds[:, i]) for i in range(4)],
                                           fields=list(BBOX_TYPE)),
        "model_id": pa.array([model_id] * n, pa.string()),
        "run_id": pa.array([run_id] * n, pa.string()),
    }
    return pa.Table.from_pydict(columns, schema=INSTANCE_SCHEMA)


def build_scene_table(scenes: Sequence[SceneInfo], instance_counts: Sequence[int], model_id: str,
                      run_id: str) -> pa.Table:
    """Scene rows (SCENE_SCHEMA), one per scene, in the given order; transform in GDAL order."""
    if len(scenes) != len(instance_counts):
        raise ValueError("one instance count per scene is needed")
    rows = [_scene_row(s, int(c), model_id, run_id) for s, c in zip(scenes, instance_counts)]
    return pa.Table.from_pylist(rows, schema=SCENE_SCHEMA)


def build_shard_tables(
    scenes: Sequence[tuple[SceneInfo, Sequence[Detection]]], model_id: str, run_id: str,
    class_names: Sequence[str] | Mapping[int, str],
) -> tuple[pa.Table, pa.Table]:
    """(instances, scenes) tables of a shard: every scene's instance rows, then one scene row each
    with its instance count. Error scenes must come with no detections."""
    parts, counts = [], []
    for info, dets in scenes:
        if info.status == "error" and dets:
            raise ValueError(f"scene {info.scene_id}: an error scene cannot have detections")
        table = build_instance_table(info, dets, model_id, run_id, class_names)
        parts.append(table)
        counts.append(table.num_rows)
    instances = pa.concat_tables(parts) if parts else INSTANCE_SCHEMA.empty_table()
    return instances, build_scene_table([s for s, _ in scenes], counts, model_id, run_id)


def _outlines(detections: Sequence[Detection], transform: Affine | None
              ) -> tuple[list[bytes], np.ndarray]:
    """(ISO WKB per detection, (n, 4) float64 bounds) of the detections' outlines in the scene CRS
    (pixels without one). In chunks of OUTLINE_CHUNK, so the decoded masks and shapely objects of
    a scene with a million instances never exist at once; what is kept is bytes and floats."""
    wkb: list[bytes] = []
    bounds = np.empty((len(detections), 4), dtype=np.float64)
    # One GDAL environment for the scene: polygonize otherwise sets one up per call.
    with rasterio.Env():
        for start in range(0, len(detections), OUTLINE_CHUNK):
            chunk = detections[start:start + OUTLINE_CHUNK]
            geoms = np.array([_polygonal(g) for g in masks_to_geometries(
                [(rle.decode(d.rle), d.x0, d.y0) for d in chunk], transform)], dtype=object)
            wkb.extend(shapely.to_wkb(geoms, hex=False, output_dimension=2, byte_order=1,
                                      flavor="iso").tolist())
            bounds[start:start + len(chunk)] = shapely.bounds(geoms)
    return wkb, bounds


def _number(detections: Sequence[Detection]) -> list[tuple[int, Detection]]:
    """(instance_id, detection) pairs: given ids kept, else a canonical numbering."""
    given = [getattr(d, "instance_id", None) for d in detections]
    if all(i is not None for i in given):
        if len(set(given)) != len(given):
            raise ValueError("instance_id values must be unique within a scene")
        return [(int(i), d) for i, d in zip(given, detections)]
    key = lambda d: (d.y0, d.x0, d.y1, d.x1, d.class_id, -d.score, bytes(d.rle["counts"]))
    return list(enumerate(sorted(detections, key=key)))


def _polygonal(geom: Any) -> Any:
    """The polygonal part of a geometry: the `geo` metadata promises Polygon | MultiPolygon, and
    a make_valid repair could in theory return a GeometryCollection with stray lines."""
    if geom.geom_type in GEOMETRY_TYPES:
        return geom
    polygons = [p for p in shapely.get_parts(geom) if p.geom_type in GEOMETRY_TYPES]
    merged = shapely.union_all(polygons) if polygons else shapely.Polygon()
    return merged if merged.geom_type in GEOMETRY_TYPES else shapely.Polygon()


def _check_detection(det: Detection) -> None:
    if det.class_id <= 0:
        raise ValueError(f"class_id must be >= 1 (0 is background), got {det.class_id}")
    if list(det.rle["size"]) != [det.y1 - det.y0, det.x1 - det.x0]:
        raise ValueError(f"mask size {list(det.rle['size'])} does not match its box "
                         f"[{det.y1 - det.y0}, {det.x1 - det.x0}] (masks must be box-local)")


def _class_name(class_names: Sequence[str] | Mapping[int, str], class_id: int) -> str:
    try:
        return str(class_names[class_id])
    except (IndexError, KeyError):
        raise ValueError(f"class_id {class_id} has no name in the model's class names") from None


def _scene_row(s: SceneInfo, count: int, model_id: str, run_id: str) -> dict[str, Any]:
    affine = s.affine
    return {
        "scene_id": s.scene_id, "model_id": model_id, "run_id": run_id, "status": s.status,
        "error_type": s.error_type, "error_message": s.error_message, "width": s.width,
        "height": s.height, "bands": s.bands, "dtype": s.dtype, "crs": s.crs_wkt,
        "epsg": crs_to_epsg(s.crs_wkt),
        "transform": list(affine.to_gdal()) if affine is not None else None,
        "tile_count": s.tile_count, "instance_count": count, "seconds": s.seconds,
        "source_size": s.source_size, "source_mtime": _utc(s.source_mtime),
        "source_etag": s.source_etag,
    }


def _utc(value: dt.datetime | float | None) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value if value is None or value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    return dt.datetime.fromtimestamp(float(value), tz=dt.timezone.utc)


def check_shard_tables(instances: pa.Table, scenes: pa.Table,
                       model_id: str) -> tuple[pa.Table, pa.Table]:
    """Both tables cast to their schemas, after checking they describe the same scenes (unique
    ids, instance_count = rows per scene) and one model. Raises ValueError otherwise."""
    instances, scenes = instances.cast(INSTANCE_SCHEMA), scenes.cast(SCENE_SCHEMA)
    ids = scenes.column("scene_id").to_pylist()
    if len(set(ids)) != len(ids):
        raise ValueError("a scene appears twice in the shard's scenes table")
    for table in (instances, scenes):
        if table.num_rows and set(table.column("model_id").to_pylist()) != {model_id}:
            raise ValueError(f"rows must all have model_id {model_id!r}")
    counts = dict(zip(ids, scenes.column("instance_count").to_pylist()))
    found = Counter(instances.column("scene_id").to_pylist())
    if not set(found) <= set(counts) or any(found.get(s, 0) != c for s, c in counts.items()):
        raise ValueError("scenes.instance_count does not match the instances rows of the shard")
    return instances, scenes


def split_by_crs(instances: pa.Table, scenes: pa.Table) -> list[tuple[str, str | None, pa.Table]]:
    """(crs key, crs WKT, rows) per CRS of the shard, keys sorted, rows sorted by `sort_instances`.

    GeoParquet holds one CRS per geometry column per file, so each group becomes its own part.
    key: 8 hex of the WKT's sha256, or "pixel" for scenes without a CRS.
    """
    crs_of = dict(zip(scenes.column("scene_id").to_pylist(), scenes.column("crs").to_pylist()))
    keys = [crs_key(crs_of[s]) for s in instances.column("scene_id").to_pylist()]
    groups = []
    for key in sorted(set(keys)):
        rows = sort_instances(instances.filter(pa.array([k == key for k in keys])))
        groups.append((key, crs_of[rows.column("scene_id")[0].as_py()], rows))
    return groups


def crs_key(crs_wkt: str | None) -> str:
    """Short stable name of a CRS for part names: 8 hex of sha256(WKT), or "pixel"."""
    return "pixel" if crs_wkt is None else hashlib.sha256(crs_wkt.encode()).hexdigest()[:8]


def sort_instances(table: pa.Table) -> pa.Table:
    """Rows sorted by (scene_id, px y0, px x0, instance_id): each row group then holds a narrow
    range of scenes and image rows, so its min/max statistics let DuckDB skip it for a scene or
    a pixel window."""
    keys = pa.table({"s": table["scene_id"], "y": pc.struct_field(table["px_bbox"], "y0"),
                     "x": pc.struct_field(table["px_bbox"], "x0"), "i": table["instance_id"]})
    order = pc.sort_indices(keys, sort_keys=[(k, "ascending") for k in ("s", "y", "x", "i")])
    return table.take(order)


def build_part_geo(part: pa.Table, crs_wkt: str | None) -> dict[str, Any]:
    """GeoParquet `geo` metadata of one instances part: its CRS as PROJJSON (null for pixel
    units) and the bbox of all its geometries."""
    def edge(name: str, reduce: Any) -> float:
        return reduce(pc.struct_field(part["bbox"], name)).as_py()

    bbox = [edge("xmin", pc.min), edge("ymin", pc.min), edge("xmax", pc.max), edge("ymax", pc.max)]
    return build_geo_metadata(crs_to_projjson(crs_wkt), bbox)
