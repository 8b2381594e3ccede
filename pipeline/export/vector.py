"""Vector layers: GeoJSON, GeoPackage and FlatGeobuf, streamed from Arrow batches by pyogrio
(GDAL), with the CRS checks and reprojection they need.

Frame: the stored `geometry` (WKB, scene CRS, pixel units x right / y down when the scene has no
CRS) unchanged, or reprojected to `crs` when one is asked for.

CRS policy for one merged vector layer: GeoPackage, FlatGeobuf and GeoJSON layers hold one CRS.
Scenes in different CRSs are refused with one line naming them, unless the caller reprojects
everything to `crs` or writes one file per scene. GeoJSON keeps the scene CRS by default (GDAL
writes the pre-RFC 7946 `"crs"` member, which GeoPandas, GDAL and QGIS read), so its coordinates
are the instances' geometry exactly. RFC 7946 proper is `crs="EPSG:4326"`: longitude / latitude,
written with GDAL's RFC7946=YES (no "crs" member, counterclockwise outer rings, 7 decimals, about
1 cm).
"""

from __future__ import annotations

import warnings
from typing import Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa

from pipeline.errors import UsageError
from pipeline.export.source import (Scene, Source, Written, check_directory, join,
                                    scene_file_names, write_index, writing)

# format -> (OGR driver, file suffix)
VECTOR_FORMATS = {"geojson": ("GeoJSON", ".geojson"), "gpkg": ("GPKG", ".gpkg"),
                  "fgb": ("FlatGeobuf", ".fgb")}
LAYER = "instances"
ATTRIBUTES = ("scene_id", "instance_id", "class_id", "class_name", "score", "area_px",
              "model_id", "run_id")
# What a vector layer's rows hold: the attributes, then the WKB geometry. The float32 score goes
# out as the double holding the same value: GDAL prints a float32 field with 8 digits in GeoJSON,
# which does not always read back as the same float32.
VECTOR_SCHEMA = pa.schema([
    ("scene_id", pa.string()), ("instance_id", pa.int64()), ("class_id", pa.int16()),
    ("class_name", pa.string()), ("score", pa.float64()), ("area_px", pa.int64()),
    ("model_id", pa.string()), ("run_id", pa.string()), ("geometry", pa.binary()),
])


def export_vector(src: Source, out: str, fmt: str, per_scene: bool = False,
                  crs: str | None = None) -> Written:
    """GeoJSON / GeoPackage / FlatGeobuf (`fmt`: geojson | gpkg | fgb), written by pyogrio
    (GDAL) from a stream of Arrow batches: layer `instances`, attributes ATTRIBUTES, geometry the
    stored WKB (Polygon or MultiPolygon, layer type "Unknown").

    per_scene: `out` is a directory; one file per scene (named by `scene_file_names`) and an
    `index.json` [{scene_id, file, instances}], written last. Otherwise one merged file `out`,
    which needs every scene holding instances in one CRS, or `crs`.
    crs: reproject every geometry to it (anything pyproj takes: "EPSG:4326", WKT, PROJ string).
    """
    if fmt not in VECTOR_FORMATS:
        raise ValueError(f"not a vector format: {fmt!r}")
    target = _target_crs(crs, src.scenes) if crs else None
    written = Written(notes=list(src.notes))
    if not per_scene:
        layer_crs = target.to_wkt() if target is not None else _single_crs(src.scenes)
        written.instances = _write_layer(src, src.scene_ids, out, fmt, layer_crs, target)
        written.files.append(out)
        written.scenes = len(src.scenes)
        return written
    check_directory(out)
    names = scene_file_names(src.scene_ids, VECTOR_FORMATS[fmt][1])
    index = []
    for scene in src.scenes:
        path = join(out, names[scene.scene_id])
        layer_crs = target.to_wkt() if target is not None else scene.crs_wkt
        count = _write_layer(src, [scene.scene_id], path, fmt, layer_crs, target)
        index.append({"scene_id": scene.scene_id, "file": names[scene.scene_id],
                      "instances": count})
        written.files.append(path)
        written.instances += count
    written.scenes = len(src.scenes)
    write_index(out, {"model_id": src.model_id, "format": fmt, "scenes": index})
    return written


def _write_layer(src: Source, scene_ids: Sequence[str], out: str, fmt: str,
                 layer_crs: str | None, target) -> int:
    """Stream the rows of `scene_ids` into one layer at `out`; returns the rows written."""
    from pyogrio.raw import write_arrow

    scenes = {s.scene_id: s for s in src.scenes}
    count = 0

    def batches() -> Iterator[pa.RecordBatch]:
        nonlocal count
        for batch in src.batches([*ATTRIBUTES, "geometry"], scene_ids):
            if target is not None:
                batch = _reprojected(batch, scenes, target)
            count += batch.num_rows
            yield pa.RecordBatch.from_arrays([batch.column(n).cast(f.type) for n, f in
                                              zip(VECTOR_SCHEMA.names, VECTOR_SCHEMA)],
                                             schema=VECTOR_SCHEMA)

    reader = pa.RecordBatchReader.from_batches(VECTOR_SCHEMA, batches())
    driver = VECTOR_FORMATS[fmt][0]
    options = {"RFC7946": "YES"} if fmt == "geojson" and _is_wgs84(target) else {}
    with writing(out) as local, warnings.catch_warnings():
        # pixel-unit layers have no CRS on purpose; pyogrio warns about that
        warnings.filterwarnings("ignore", "'crs' was not provided", UserWarning)
        write_arrow(reader, local, layer=LAYER, driver=driver, geometry_name="geometry",
                    geometry_type="Unknown", crs=layer_crs, layer_options=options)
    return count


def _is_wgs84(target) -> bool:
    """True for WGS 84 longitude / latitude (EPSG:4326, OGC:CRS84): GeoJSON's own CRS."""
    from pyproj import CRS

    return target is not None and target.equals(CRS.from_epsg(4326), ignore_axis_order=True)


def _single_crs(scenes: Sequence[Scene]) -> str | None:
    """The one CRS (WKT, or None = pixel units) of the scenes that hold instances; UsageError
    when they have several (a layer has one CRS)."""
    holding = [s for s in scenes if s.instance_count] or list(scenes)
    by_key: dict[str | None, Scene] = {}
    for s in holding:
        by_key.setdefault(s.crs_key, s)  # the first scene of each CRS names it
    if len(by_key) > 1:
        shown = ", ".join(f"{'pixel units' if k is None else _short_crs(k)} ({s.scene_id})"
                          for k, s in by_key.items())
        raise UsageError(f"the scenes are in {len(by_key)} CRSs ({shown}); one layer holds one: "
                         "reproject with --crs (e.g. --crs EPSG:4326) or write --per-scene")
    return next(iter(by_key.values())).crs_wkt if by_key else None


def _short_crs(key: str) -> str:
    return key if key.startswith("EPSG:") else key.split('"')[1] if '"' in key else key[:40]


def _target_crs(crs: str, scenes: Sequence[Scene]):
    """pyproj CRS of `crs`; UsageError when it is unknown or a scene to reproject has no CRS."""
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    try:
        target = CRS.from_user_input(crs)
    except CRSError:
        raise UsageError(f"--crs {crs!r} is not a CRS pyproj knows (try EPSG:4326)") from None
    pixel = [s.scene_id for s in scenes if s.crs_wkt is None and s.instance_count]
    if pixel:
        raise UsageError(f"scene {pixel[0]!r} has no CRS (pixel units) and cannot be "
                         "reprojected; leave out --crs or that scene")
    return target


def _reprojected(batch: pa.RecordBatch, scenes: Mapping[str, Scene], target) -> pa.RecordBatch:
    """`batch` with its geometry reprojected from each row's scene CRS to `target` (vertex by
    vertex, x/y order on both sides; a scene already in `target` keeps its exact coordinates)."""
    import shapely

    geoms = shapely.from_wkb(batch.column("geometry").to_numpy(zero_copy_only=False))
    row_scenes = [scenes[s] for s in batch.column("scene_id").to_pylist()]
    keys = np.array([s.crs_key for s in row_scenes], dtype=object)
    for key, scene in {s.crs_key: s for s in row_scenes}.items():
        transformer = _transformer(scene.crs_wkt, target)
        if transformer is not None:
            rows = np.flatnonzero(keys == key)
            geoms[rows] = shapely.transform(geoms[rows], transformer.transform, interleaved=False)
    wkb = pa.array(shapely.to_wkb(geoms), pa.binary())
    return batch.set_column(batch.schema.get_field_index("geometry"), "geometry", wkb)


def _transformer(crs_wkt: str, target):
    """pyproj Transformer scene CRS -> target in x/y (easting/longitude first) order, or None
    when the two are the same CRS."""
    from pyproj import CRS, Transformer

    source = CRS.from_wkt(crs_wkt)
    if source.equals(target, ignore_axis_order=True):
        return None
    return Transformer.from_crs(source, target, always_xy=True)

