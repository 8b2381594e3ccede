"""Output schema v1, GeoParquet `geo` metadata, and detections -> Arrow rows (pipeline.rows)."""

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely
from affine import Affine
from rasterio.crs import CRS

from pipeline import rle
from pipeline.commit import open_root, write_shard
from pipeline.detection import Detection
from pipeline.rows import SceneInfo, build_instance_table, build_shard_tables, crs_to_projjson
from pipeline.schema import (INSTANCE_SCHEMA, SCENE_SCHEMA, build_geo_metadata,
                             build_maskray_metadata, validate_geo_metadata)

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
UTM16 = CRS.from_epsg(32616).to_wkt()
GRID = Affine(0.5, 0.0, 740000.0, 0.0, -0.5, 3730000.0)  # 0.5 m pixels, north up
NAMES = ["background", "car", "building"]


def make_detection(class_id, x0, y0, w, h, score=0.9):
    """A w x h box whose mask is the box minus its right column and bottom row, plus one pixel
    set at the bottom-right corner (so the mask is two pieces touching only at a corner)."""
    mask = np.zeros((h, w), dtype=bool)
    mask[: h - 1, : w - 1] = True
    mask[h - 1, w - 1] = True
    return Detection(class_id, score, x0, y0, x0 + w, y0 + h, rle.encode(mask))


def test_schemas_have_the_design_columns_and_types():
    assert INSTANCE_SCHEMA.names == ["scene_id", "instance_id", "class_id", "class_name", "score",
                                     "px_bbox", "mask_rle", "area_px", "geometry", "bbox",
                                     "model_id", "run_id"]
    types = {f.name: f.type for f in INSTANCE_SCHEMA}
    assert types["instance_id"] == pa.int64() and types["class_id"] == pa.int16()
    assert types["score"] == pa.float32() and types["area_px"] == pa.int64()

    def children(struct):
        return [(f.name, f.type) for f in struct]

    assert children(types["px_bbox"]) == [(k, pa.int32()) for k in ("x0", "y0", "x1", "y1")]
    assert children(types["mask_rle"]) == [("size", pa.list_(pa.int32())), ("counts", pa.binary())]
    assert types["geometry"] == pa.binary()
    assert children(types["bbox"]) == [(k, pa.float64()) for k in ("xmin", "ymin", "xmax", "ymax")]
    for name in ("scene_id", "model_id", "run_id", "status", "error_type", "error_message", "width",
                 "height", "bands", "dtype", "crs", "transform", "tile_count", "instance_count",
                 "seconds", "source_size", "source_mtime"):
        assert name in SCENE_SCHEMA.names


@pytest.mark.parametrize("crs", [crs_to_projjson(UTM16), None])
def test_geo_metadata_has_the_geoparquet_1_1_shape(crs):
    geo = json.loads(json.dumps(build_geo_metadata(crs, [0, 1, 2, 3])))
    validate_geo_metadata(geo, INSTANCE_SCHEMA)
    col = geo["columns"]["geometry"]
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry"
    assert col["encoding"] == "WKB" and col["geometry_types"] == ["Polygon", "MultiPolygon"]
    assert col["covering"]["bbox"]["ymax"] == ["bbox", "ymax"]
    assert "crs" in col  # present: null means "unknown", absent would mean OGC:CRS84
    if crs is not None:
        assert col["crs"]["id"] == {"authority": "EPSG", "code": 32616}


@pytest.mark.parametrize("breakage", [
    lambda g: g.update(primary_column="geom"),
    lambda g: g["columns"]["geometry"].update(encoding="wkb"),
    lambda g: g["columns"]["geometry"].update(crs="EPSG:4326"),
    lambda g: g["columns"]["geometry"].update(geometry_types=["Polygon", "Polygon"]),
    lambda g: g["columns"]["geometry"]["covering"]["bbox"].pop("xmin"),
    lambda g: g["columns"]["geometry"].update(bbox=[1, 2, 3]),
])
def test_validator_rejects_malformed_geo(breakage):
    geo = build_geo_metadata(None, [0, 0, 1, 1])
    breakage(geo)
    with pytest.raises(ValueError):
        validate_geo_metadata(geo, INSTANCE_SCHEMA)


def test_maskray_metadata():
    meta = build_maskray_metadata("instances", "abc123", NAMES)
    assert meta == {"schema_version": 1, "table": "instances", "model_id": "abc123",
                    "class_names": {"0": "background", "1": "car", "2": "building"}}


def test_rows_are_georeferenced_in_the_scene_crs():
    scene = SceneInfo("a.tif", 200, 100, 1, "uint16", UTM16, GRID)
    dets = [make_detection(2, 40, 30, 6, 5), make_detection(1, 10, 20, 4, 4, 0.5)]
    table = build_instance_table(scene, dets, "m", "r", NAMES)
    assert table.schema.equals(INSTANCE_SCHEMA)
    rows = table.to_pylist()
    assert [r["px_bbox"]["y0"] for r in rows] == [20, 30]  # sorted by (y0, x0)
    assert [r["class_name"] for r in rows] == ["car", "building"]
    for row, det in zip(rows, sorted(dets, key=lambda d: d.y0)):
        geom = shapely.from_wkb(row["geometry"])
        assert geom.geom_type == "MultiPolygon" and geom.is_valid
        assert row["area_px"] == rle.area(det.rle) == (det.width - 1) * (det.height - 1) + 1
        assert geom.area == pytest.approx(row["area_px"] * 0.25)  # 0.5 m pixels
        b = row["bbox"]
        assert (b["xmin"], b["ymin"], b["xmax"], b["ymax"]) == geom.bounds
        # The px box corners map onto the bbox through the scene transform (y flips: north up).
        assert GRID @ (det.x0, det.y1) == (b["xmin"], b["ymin"])
        assert GRID @ (det.x1, det.y0) == (b["xmax"], b["ymax"])


def test_instance_ids_do_not_depend_on_input_order():
    scene = SceneInfo("a.tif", 200, 100, 1, "uint16", UTM16, GRID)
    dets = [make_detection(1, x, y, 5, 5) for x, y in [(50, 5), (5, 50), (5, 5), (60, 60)]]
    first = build_instance_table(scene, dets, "m", "r", NAMES)
    again = build_instance_table(scene, dets[::-1], "m", "r", NAMES)
    assert first.equals(again)
    assert first.column("instance_id").to_pylist() == [0, 1, 2, 3]


def test_scene_without_crs_is_in_pixel_units():
    scene = SceneInfo("a.png", 64, 64, 3, "uint8", None, GRID)  # a transform but no CRS
    table = build_instance_table(scene, [make_detection(1, 7, 9, 4, 3)], "m", "r", NAMES)
    row = table.to_pylist()[0]
    assert row["bbox"] == {"xmin": 7.0, "ymin": 9.0, "xmax": 11.0, "ymax": 12.0}


def test_bad_detections_are_refused_and_empty_masks_dropped():
    scene = SceneInfo("a.png", 64, 64)
    with pytest.raises(ValueError, match="background"):
        build_instance_table(scene, [make_detection(0, 1, 1, 3, 3)], "m", "r", NAMES)
    wrong = Detection(1, 0.9, 0, 0, 5, 5, rle.encode(np.ones((4, 5), bool)))
    with pytest.raises(ValueError, match="box-local"):
        build_instance_table(scene, [wrong], "m", "r", NAMES)
    empty = Detection(1, 0.9, 0, 0, 2, 2, rle.encode(np.zeros((2, 2), bool)))
    assert build_instance_table(scene, [empty], "m", "r", NAMES).num_rows == 0


def test_scene_rows():
    ok = SceneInfo("a.tif", 200, 100, 1, "uint16", UTM16, GRID, tile_count=2, seconds=1.5,
                   source_size=1234, source_mtime=1_700_000_000.0, source_etag="e1")
    bad = SceneInfo("b.tif", status="error", error_type="RasterioIOError", error_message="boom")
    instances, scenes = build_shard_tables([(ok, [make_detection(1, 1, 1, 3, 3)]), (bad, [])],
                                           "m", "r", NAMES)
    a, b = scenes.to_pylist()
    assert instances.num_rows == 1 and a["instance_count"] == 1 and b["instance_count"] == 0
    assert a["transform"] == [740000.0, 0.5, 0.0, 3730000.0, 0.0, -0.5]  # GDAL order
    assert Affine.from_gdal(*a["transform"]) == GRID
    assert a["epsg"] == 32616 and CRS.from_wkt(a["crs"]) == CRS.from_epsg(32616)
    assert a["source_mtime"] == dt.datetime.fromtimestamp(1_700_000_000, dt.timezone.utc)
    assert (b["status"], b["error_type"], b["crs"], b["width"]) == ("error", "RasterioIOError",
                                                                    None, None)
    with pytest.raises(ValueError, match="status"):
        SceneInfo("c", status="failed")
    with pytest.raises(ValueError, match="without a transform"):
        SceneInfo("c", crs_wkt=UTM16)


@pytest.mark.shared_data
def test_custom_crs_from_a_real_geotiff(tmp_path):
    path = SHARED / "solaris" / "sample_geotiff_custom_proj.tif"
    if not path.exists():
        pytest.skip(f"{path.name} is not available")
    import rasterio

    with rasterio.open(path) as src:
        crs, transform, bounds = src.crs, src.transform, src.bounds
        scene = SceneInfo(path.name, src.width, src.height, src.count, src.dtypes[0],
                          crs.to_wkt(), transform)
    assert crs.to_epsg() is None  # a custom Albers CRS, no authority code
    instances, scenes = build_shard_tables([(scene, [make_detection(1, 100, 200, 12, 10)])],
                                           "m", "r", NAMES)
    fs, root = open_root(str(tmp_path))
    result = write_shard(fs, root, instances=instances, scenes=scenes, model_id="m", run_id="r",
                         config_hash="c", class_names=NAMES)
    part = tmp_path / "instances" / "model=m" / result.instance_files[0]
    schema = pq.read_schema(part)
    geo = json.loads(schema.metadata[b"geo"])
    validate_geo_metadata(geo, schema)
    col = geo["columns"]["geometry"]
    assert col["crs"] == crs.to_dict(projjson=True)
    assert CRS.from_dict(col["crs"]) == crs  # round-trips through PROJJSON
    xmin, ymin, xmax, ymax = col["bbox"]
    assert bounds.left <= xmin < xmax <= bounds.right and bounds.bottom <= ymin < ymax <= bounds.top
    assert (xmax - xmin, ymax - ymin) == (12 * 30.0, 10 * 30.0)  # 30 m pixels
