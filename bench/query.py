"""Benchmark: DuckDB over a 10-million-instance output written by the project's own writer.

The output is --scenes scenes of 10 000 px (0.5 m pixels, UTM 33N, laid on a grid 5 km apart)
with --per-scene synthetic instances each (random boxes 4-40 px, a box-shaped WKB polygon, a
tiny RLE), committed by `commit.write_shard` in shards of --shard-scenes scenes exactly as
`maskray infer` commits them: rows sorted by (scene_id, y0, x0), row groups of 65 536 rows, the
bbox covering column with statistics. Timed with `maskray query`'s connection
(`pipeline.query.connect`), median of --reps after one warm-up:
  count by class   select class_name, count(*) from instances group by 1
  bbox window      rows whose bbox meets a 200 m x 200 m box inside one scene
For the window query it prints DuckDB's profile (EXPLAIN ANALYZE: the filter is pushed into the
Parquet scan), counts from the Parquet footers the row groups whose bbox statistics can meet the
box (the ones DuckDB has to read), and measures the bytes DuckDB actually read (this process's
`rchar` in /proc/self/io, Linux) against the same query with the pushdown defeated (`+ 0` on each
column), which reads the four bbox columns of every row group.

    .venv/bin/python bench/query.py [--scenes 1000] [--per-scene 10000] [--out DIR] [--keep]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import rasterio.crs
import shapely
from affine import Affine

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline import commit  # noqa: E402
from pipeline.query import connect  # noqa: E402
from pipeline.rows import SceneInfo, build_shard_tables  # noqa: E402
from pipeline.schema import INSTANCE_SCHEMA  # noqa: E402

MODEL = "bench0query00000"
CLASSES = ("background", "building", "vehicle", "ship", "tree")
SIDE, PIXEL, SPACING, COLUMNS = 10_000, 0.5, 5_000.0, 40
CRS = rasterio.crs.CRS.from_epsg(32633).to_wkt()


def scene_origin(k: int) -> tuple[float, float]:
    """Upper-left corner (x, y) in metres of scene k: a grid of COLUMNS scenes per row."""
    return 300_000 + (k % COLUMNS) * SPACING, 5_000_000 + (k // COLUMNS) * SPACING


def scene_instances(k: int, n: int, rng: np.random.Generator, run_id: str) -> pa.Table:
    """n synthetic instance rows of scene k (INSTANCE_SCHEMA), vectorised."""
    x0 = rng.integers(0, SIDE - 40, n).astype(np.int32)
    y0 = rng.integers(0, SIDE - 40, n).astype(np.int32)
    w = rng.integers(4, 40, n).astype(np.int32)
    h = rng.integers(4, 40, n).astype(np.int32)
    ox, oy = scene_origin(k)
    xmin, xmax = ox + x0 * PIXEL, ox + (x0 + w) * PIXEL
    ymax, ymin = oy - y0 * PIXEL, oy - (y0 + h) * PIXEL
    geometry = shapely.to_wkb(shapely.box(xmin, ymin, xmax, ymax))
    class_id = rng.integers(1, len(CLASSES), n).astype(np.int16)
    size = pa.array([[int(a), int(b)] for a, b in zip(h, w)], pa.list_(pa.int32()))
    counts = pa.array([bytes([48 + (i % 10)]) * 6 for i in range(n)], pa.binary())
    return pa.table({
        "scene_id": pa.array([f"scenes/s{k:05d}.tif"] * n),
        "instance_id": pa.array(np.arange(n, dtype=np.int64)),
        "class_id": pa.array(class_id),
        "class_name": pa.array(np.array(CLASSES, dtype=object)[class_id]),
        "score": pa.array(rng.random(n, dtype=np.float32)),
        "px_bbox": pa.StructArray.from_arrays([pa.array(x0), pa.array(y0), pa.array(x0 + w),
                                               pa.array(y0 + h)], ["x0", "y0", "x1", "y1"]),
        "mask_rle": pa.StructArray.from_arrays([size, counts], ["size", "counts"]),
        "area_px": pa.array((w * h).astype(np.int64)),
        "geometry": pa.array(list(geometry), pa.binary()),
        "bbox": pa.StructArray.from_arrays([pa.array(xmin), pa.array(ymin), pa.array(xmax),
                                            pa.array(ymax)], ["xmin", "ymin", "xmax", "ymax"]),
        "model_id": pa.array([MODEL] * n), "run_id": pa.array([run_id] * n),
    }).cast(INSTANCE_SCHEMA)


def write_output(root: Path, scenes: int, per_scene: int, shard_scenes: int) -> float:
    fs, path = commit.open_root(str(root))
    rng, run_id, start = np.random.default_rng(0), "bench", time.perf_counter()
    for first in range(0, scenes, shard_scenes):
        ks = range(first, min(first + shard_scenes, scenes))
        instances = pa.concat_tables([scene_instances(k, per_scene, rng, run_id) for k in ks])
        infos = [(SceneInfo(scene_id=f"scenes/s{k:05d}.tif", width=SIDE, height=SIDE, bands=3,
                            dtype="uint8", crs_wkt=CRS,
                            transform=Affine(PIXEL, 0, scene_origin(k)[0], 0, -PIXEL,
                                             scene_origin(k)[1])), []) for k in ks]
        _, table = build_shard_tables(infos, MODEL, run_id, CLASSES)
        table = table.set_column(table.schema.get_field_index("instance_count"), "instance_count",
                                 pa.array([per_scene] * len(ks), pa.int64()))
        commit.write_shard(fs, path, instances=instances, scenes=table, model_id=MODEL,
                           run_id=run_id, config_hash="bench", class_names=CLASSES)
        done = min(first + shard_scenes, scenes)
        print(f"\rwrote {done}/{scenes} scenes ({done * per_scene / 1e6:.1f} M instances)",
              end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return time.perf_counter() - start


def row_groups_meeting(root: Path, box: tuple[float, float, float, float]) -> tuple[int, int]:
    """(row groups whose bbox statistics can meet `box`, all row groups) over instances/."""
    xmin, ymin, xmax, ymax = box
    can, total = 0, 0
    for part in sorted((root / "instances").rglob("*.parquet")):
        meta = pq.ParquetFile(part).metadata
        names = [meta.schema.column(i).path for i in range(meta.num_columns)]
        col = {name: i for i, name in enumerate(names)}
        for g in range(meta.num_row_groups):
            rg = meta.row_group(g)
            stats = {k: rg.column(col[f"bbox.{k}"]).statistics for k in ("xmin", "ymin", "xmax", "ymax")}
            total += 1
            if (stats["xmin"].min <= xmax and stats["xmax"].max >= xmin
                    and stats["ymin"].min <= ymax and stats["ymax"].max >= ymin):
                can += 1
    return can, total


def bytes_read(con, sql: str) -> int:
    """Bytes this process read (read syscalls, page cache included) while running `sql`."""
    def rchar() -> int:
        with open("/proc/self/io") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("rchar"))

    before = rchar()
    con.sql(sql).fetchall()
    return rchar() - before


def timed(con, sql: str, reps: int) -> tuple[float, list]:
    con.sql(sql).fetchall()  # warm-up: footers and metadata cached like a notebook's 2nd query
    times, result = [], None
    for _ in range(reps):
        start = time.perf_counter()
        result = con.sql(sql).fetchall()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=1000)
    parser.add_argument("--per-scene", type=int, default=10_000)
    parser.add_argument("--shard-scenes", type=int, default=10)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", help="where to write the output (default: a temporary dir)")
    parser.add_argument("--keep", action="store_true", help="keep the output")
    args = parser.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="maskray-bench-query-"))
    try:
        if not (root / "scenes").exists():
            seconds = write_output(root, args.scenes, args.per_scene, args.shard_scenes)
            n = args.scenes * args.per_scene
            print(f"writer: {n / 1e6:.1f} M instances in {seconds:.0f} s "
                  f"({n / seconds / 1e3:.0f} k rows/s)")
        size = sum(p.stat().st_size for p in (root / "instances").rglob("*.parquet"))
        files = len(list((root / "instances").rglob("*.parquet")))
        con = connect(str(root))
        total = con.sql("select count(*) from instances").fetchone()[0]
        print(f"output: {total:,} instances in {files} parts, {size / 2**30:.2f} GiB")

        count_s, rows = timed(con, "select class_name, count(*) as n from instances "
                                   "group by 1 order by 1", args.reps)
        assert sum(n for _, n in rows) == total
        ox, oy = scene_origin(min(137, args.scenes - 1))
        box = (ox + 2000, oy - 2200, ox + 2200, oy - 2000)  # 200 m x 200 m inside one scene
        window = (f"select count(*) from instances where bbox.xmin <= {box[2]} and "
                  f"bbox.xmax >= {box[0]} and bbox.ymin <= {box[3]} and bbox.ymax >= {box[1]}")
        window_s, hits = timed(con, window, args.reps)
        can, groups = row_groups_meeting(root, box)
        unpruned = window.replace(" <=", " + 0 <=").replace(" >=", " + 0 >=")
        pruned_bytes, full_bytes = bytes_read(con, window), bytes_read(con, unpruned)
        print("\nDuckDB profile of the window query:")
        for row in con.sql("explain analyze " + window).fetchall():
            print(row[-1])
        print(f"\n{'query':<16}{'median s':>10}")
        print(f"{'count by class':<16}{count_s:>10.3f}   goal < 1 s")
        print(f"{'bbox window':<16}{window_s:>10.3f}   {hits[0][0]} rows")
        print(f"row groups the window must read: {can} of {groups} ({can / groups:.1%}); "
              "goal < 10%")
        print(f"bytes DuckDB read for the window: {pruned_bytes / 2**20:.2f} MiB, "
              f"{pruned_bytes / full_bytes:.1%} of the {full_bytes / 2**20:.1f} MiB a scan "
              "without row-group pruning reads")
    finally:
        if not args.keep and not args.out:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
