"""An inference output from Python (notebooks, scripts): tables, SQL, frames, masks, geometries.

    from pipeline.output import open_output
    out = open_output("s3://results/buildings/")          # or a local path; model_id= to pick one
    out.models                                             # model ids present
    out.dataset()                                          # pyarrow.dataset over instances/
    out.sql("select class_name, count(*) from instances group by 1").df()
    out.polars().filter(pl.col("score") > 0.5).collect()   # Polars LazyFrame over instances/
    gdf = out.geopandas(scene_id="tiles/a.tif")            # GeoDataFrame in the scene's CRS
    rows = out.window("tiles/a.tif", 0, 0, 512, 512)       # instance rows meeting a pixel window
    masks = [mask(r) for r in rows.to_pylist()]            # box-local bool arrays
    shapes = geometries(rows)                              # shapely (Multi)Polygons

Frames: `px_bbox` and masks are in scene pixels (x right, y down, half-open boxes); `geometry`
and `bbox` in the scene's CRS (pixels when it has none). A box-local mask (y1 - y0, x1 - x0)
has pixel [r, c] at scene pixel (x0 + c, y0 + r); `mask(row, full=(height, width))` places it
in a scene-sized array (only for small scenes: that allocates the whole scene).

Adapters ring: reads only committed parts (pipeline/dataset.py), local or object storage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from pipeline import dataset as _dataset
from pipeline import storage
from pipeline.errors import UsageError


def open_output(uri: str, model_id: str | None = None) -> "Output":
    """The output at `uri` (a local path or s3://...), optionally one model's rows only."""
    storage.check_uri(uri)
    fs, root = storage.filesystem(uri)
    with storage.translating_errors(uri):
        if _dataset.open_dataset(uri, "scenes", filesystem=fs) is None:
            raise UsageError(f"no inference output at {uri} (no committed scenes yet)")
    return Output(uri, model_id, fs)


@dataclass
class Output:
    """Handle on one output; cheap to create, every method reads on demand."""

    uri: str
    model_id: str | None
    fs: Any

    @property
    def models(self) -> list[str]:
        """Model ids with committed rows (the `model=<id>` partitions)."""
        table = _dataset.read_scenes(self.uri, filesystem=self.fs, columns=["model_id"])
        return sorted(set(table.column("model_id").to_pylist()))

    def dataset(self, table: str = "instances") -> ds.Dataset:
        """pyarrow dataset over `instances` or `scenes` (this model's, when one was given).
        Filters on scene_id, px_bbox or bbox prune row groups by their statistics."""
        found = _dataset.open_dataset(self.uri, table, self.model_id, self.fs)
        if found is None:
            schema = _dataset.INSTANCE_SCHEMA if table == "instances" else _dataset.SCENE_SCHEMA
            return ds.dataset(schema.empty_table())
        return found

    def table(self, table: str = "instances", columns: list[str] | None = None,
              filter: Any = None) -> pa.Table:
        return self.dataset(table).to_table(columns=columns, filter=filter)

    def duckdb(self):
        """DuckDB connection with views `instances`, `scenes`, `runs` (pipeline/query.py)."""
        from pipeline.query import connect

        return connect(self.uri)

    def sql(self, query: str):
        """A DuckDB relation: `.df()`, `.arrow()`, `.pl()`, `.fetchall()`."""
        from pipeline.query import run_query

        return run_query(self.duckdb(), query)

    def polars(self, table: str = "instances"):
        """Polars LazyFrame over the table (filters and projections pushed to pyarrow)."""
        import polars as pl

        return pl.scan_pyarrow_dataset(self.dataset(table))

    def window(self, scene_id: str, x0: int, y0: int, x1: int, y1: int,
               columns: list[str] | None = None) -> pa.Table:
        """Instance rows of `scene_id` whose px_bbox meets the half-open pixel window."""
        def edge(name: str):
            return ds.field(("px_bbox", name))

        expr = ((ds.field("scene_id") == scene_id) & (edge("x0") < x1) & (edge("x1") > x0)
                & (edge("y0") < y1) & (edge("y1") > y0))
        return self.table("instances", columns, expr)

    def geopandas(self, scene_id: str | None = None, filter: Any = None, crs: Any = None):
        """GeoDataFrame of instance rows (geometry from WKB, mask_rle left out). One CRS per
        frame: rows of scenes in different CRSs need `crs=` (reprojected there) or a scene_id;
        rows without a CRS (pixel units) cannot be mixed with georeferenced ones."""
        import geopandas as gpd
        import shapely

        expr = ds.field("scene_id") == scene_id if scene_id is not None else None
        if filter is not None:
            expr = filter if expr is None else expr & filter
        table = self.table("instances", filter=expr).drop_columns(["mask_rle"])
        scene_crs = self._scene_crs(set(table.column("scene_id").to_pylist()))
        frames = []
        for wkt in sorted(set(scene_crs.values()), key=lambda v: v or ""):
            ids = [s for s, c in scene_crs.items() if c == wkt]
            part = table.filter(pc.is_in(table.column("scene_id"), pa.array(ids, pa.string())))
            frame = part.drop_columns(["geometry"]).to_pandas()
            geometry = shapely.from_wkb(part.column("geometry").to_numpy(zero_copy_only=False))
            frames.append(gpd.GeoDataFrame(frame, geometry=geometry, crs=wkt))
        if not frames:
            return gpd.GeoDataFrame(table.drop_columns(["geometry"]).to_pandas(),
                                    geometry=[], crs=crs)
        if len(frames) > 1 and crs is None:
            raise UsageError(f"the rows span {len(frames)} CRSs; pass crs= (e.g. 'EPSG:4326') "
                             "to reproject them into one frame, or one scene_id")
        if crs is not None:
            if any(f.crs is None for f in frames):
                raise UsageError("rows of scenes without a CRS (pixel units) cannot be reprojected")
            frames = [f.to_crs(crs) for f in frames]
        import pandas as pd

        return gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=frames[0].crs)

    def _scene_crs(self, scene_ids: set[str]) -> dict[str, str | None]:
        if not scene_ids:
            return {}
        table = self.table("scenes", ["scene_id", "crs"],
                           ds.field("scene_id").isin(sorted(scene_ids)))
        return {r["scene_id"]: r["crs"] for r in table.to_pylist()}


def mask(row: Mapping[str, Any], full: tuple[int, int] | None = None) -> np.ndarray:
    """The instance's mask: box-local (y1 - y0, x1 - x0) bool, or with full=(height, width) a
    scene-sized bool array. row: a dict from `Table.to_pylist()` with px_bbox and mask_rle."""
    if full is None:
        return _dataset.decode_mask(row)
    return _dataset.decode_full_mask(row, *full)


def geometries(rows: pa.Table | Iterable[Mapping[str, Any]]) -> list:
    """shapely (Multi)Polygons of instance rows, in the scene's CRS (pixels without one)."""
    import shapely

    if isinstance(rows, pa.Table):
        return list(shapely.from_wkb(rows.column("geometry").to_numpy(zero_copy_only=False)))
    return [shapely.from_wkb(r["geometry"]) for r in rows]
