"""Benchmark: the driver's cost per instance — time and peak memory of stitching, instance rows,
GeoParquet and commit for one scene of N instances (10^3 .. 10^6).

This is what grows on the driver with a scene: tiles and pixels never reach it, only
detections. Each N runs in a fresh subprocess:
  1. the scene of `bench/stitch.py` (one rectangle per `--cell` px cell, plus large objects
     spanning several tiles), cut into 256 px tiles with 32 px overlap; every tile's view of
     every object becomes a `Detection` with its own box-local RLE (own bytes, as detections
     arriving from the actors have), held in a `SceneResult` as `ShardAssembler` holds them;
  2. `pipeline.infer.ShardWriter` on that one-scene shard (georeferenced, UTM): stitch, rows
     with geometry, GeoParquet part, commit — the driver's code, nothing re-implemented.
The process's RSS is sampled every 20 ms. Printed per N: the detections' resident size (RSS
after step 1 minus before), the write's peak above that, both per instance, and the time of
the stitch and of the whole write per instance. Checked: the committed row count equals N.
Then the outline step alone, before and after batching it (`mask_to_geometry` per mask, i.e.
one GDAL polygonize call each, against `masks_to_geometries` on shared canvases), on the same
first 20 000 detections, side by side; checked: the same WKB.

    python bench/driver.py                           # 10^3 .. 10^5, ~1 min
    python bench/driver.py --sizes 1000 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(_HERE)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

UTM_33N = "EPSG:32633"
OUTLINE_SAMPLE = 20_000  # masks outlined both ways for the before / after figure


class PeakRss:
    """Sample this process's RSS on a thread; `.peak` is the largest seen (bytes)."""

    def __init__(self, interval: float = 0.02) -> None:
        import psutil

        self.proc, self.interval = psutil.Process(), interval
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def worker(n: int, cell: int, out: str) -> dict:
    import gc

    import psutil
    import rasterio
    from affine import Affine
    from rasterio.crs import CRS

    import pipeline.infer as infer
    from pipeline import commit, rle
    from pipeline.config import load_config
    from pipeline.detection import Detection
    from pipeline.geometry import mask_to_geometry, masks_to_geometries
    from pipeline.infer import RunSummary, ShardWriter, Source
    from pipeline.dataflow import PredictorSpec
    from pipeline.predictor import LabelsPredictor
    from pipeline.scenes import SceneRef
    from pipeline.shards import SceneResult
    from pipeline.tiling import grid_windows

    from bench import stitch as stitch_bench

    tile, overlap = 256, 32
    cfg = load_config(None, [f"tiling.tile_size={tile}", f"tiling.overlap={overlap}"])
    proc = psutil.Process()
    gc.collect()
    before = proc.memory_info().rss
    side, boxes, classes = stitch_bench.build_scene(n, cell, seed=0)
    tiles = grid_windows(side, side, tile, overlap)
    shared = stitch_bench.tile_views(tiles, boxes, classes)
    index = {(t.row, t.col): i for i, t in enumerate(tiles)}
    # Own RLE bytes per detection, as unpickled actor rows have (tile_views shares them).
    detections = {index[key]: [Detection(d.class_id, d.score, d.x0, d.y0, d.x1, d.y1,
                                         {"size": list(d.rle["size"]),
                                          "counts": bytes(d.rle["counts"])})
                               for d in dets] for key, dets in shared.items()}
    pieces = sum(len(v) for v in detections.values())
    del shared, boxes
    gc.collect()
    held = proc.memory_info().rss - before
    meta = {"width": side, "height": side, "bands": 3, "dtype": "uint8",
            "crs_wkt": CRS.from_string(UTM_33N).to_wkt(),
            "transform": (0.5, 0.0, 500000.0, 0.0, -0.5, 5000000.0), "nodata": None,
            "tile_size": tile, "overlap": overlap}
    result = SceneResult("scene.tif", "scene.tif", 0, meta=meta, n_tiles=len(tiles),
                         tiles_seen=len(tiles), detections=detections)
    del detections
    source = Source(PredictorSpec(LabelsPredictor, {}, (1, 2, 3), None, False), "bench-driver",
                    ("small", "large"), {})
    fs, root = commit.open_root(out)
    summary = RunSummary(commit.new_run_id(), source.model_id)
    writer = ShardWriter(fs, root, source, cfg, summary,
                         {"scene.tif": SceneRef("scene.tif", "scene.tif", 1, 0.0)}, {})
    stitch_s = []
    real_stitch = infer.stitch_scene

    def timed_stitch(*args, **kwargs):
        start = time.perf_counter()
        try:
            return real_stitch(*args, **kwargs)
        finally:
            stitch_s.append(time.perf_counter() - start)

    infer.stitch_scene = timed_stitch
    sample = [d for dets in result.detections.values() for d in dets][:OUTLINE_SAMPLE]
    base = proc.memory_info().rss
    start = time.perf_counter()
    with PeakRss() as peak:
        writer([result])
    write_s = time.perf_counter() - start
    if summary.instances != n:
        raise SystemExit(f"committed {summary.instances} instances, expected {n}")
    # The outline step alone, before (one polygonize call per mask) and after (batched onto
    # shared canvases), side by side on the same masks.
    masks = [(rle.decode(d.rle), d.x0, d.y0) for d in sample]
    grid = Affine(*meta["transform"])
    with rasterio.Env():
        start = time.perf_counter()
        one_by_one = [mask_to_geometry(m, x0, y0, grid) for m, x0, y0 in masks]
        single_s = time.perf_counter() - start
        start = time.perf_counter()
        batched = masks_to_geometries(masks, grid)
        batched_s = time.perf_counter() - start
    if [g.wkb for g in one_by_one] != [g.wkb for g in batched]:
        raise SystemExit("batched outlines differ from one-by-one outlines")
    return {"outline_masks": len(masks), "outline_single_s": single_s,
            "outline_batched_s": batched_s,"instances": n, "pieces": pieces, "tiles": len(tiles), "side_px": side,
            "held_mib": held / 2**20, "write_peak_mib": (peak.peak - base) / 2**20,
            "stitch_s": stitch_s[0], "write_s": write_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--cell", type=int, default=40, help="px per object cell (density)")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.cell, args.out)), flush=True)
        return 0
    print("| instances | tiles | pieces | detections held MiB (KiB/inst) | write peak above "
          "MiB (KiB/inst) | stitch s (us/inst) | stitch+rows+Parquet+commit s (us/inst) | "
          "outlines us/mask: one by one / batched (ratio) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            done = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", str(n),
                                   "--cell", str(args.cell), "--out", os.path.join(tmp, "out")],
                                  cwd=ROOT, capture_output=True, text=True)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
        if done.returncode or not lines:
            sys.stderr.write(done.stdout[-2000:] + done.stderr[-4000:])
            raise SystemExit(f"N={n} failed (exit {done.returncode})")
        r = json.loads(lines[-1][len("RESULT "):])
        per = 1024 / r["instances"]
        single = 1e6 * r["outline_single_s"] / r["outline_masks"]
        batched = 1e6 * r["outline_batched_s"] / r["outline_masks"]
        print(f"| {r['instances']:,} | {r['tiles']:,} | {r['pieces']:,} | {r['held_mib']:.0f} "
              f"({r['held_mib'] * per:.2f}) | {r['write_peak_mib']:.0f} "
              f"({r['write_peak_mib'] * per:.2f}) | {r['stitch_s']:.2f} "
              f"({1e6 * r['stitch_s'] / r['instances']:.0f}) | {r['write_s']:.2f} "
              f"({1e6 * r['write_s'] / r['instances']:.0f}) | {single:.0f} / {batched:.0f} "
              f"({single / batched:.1f}x) |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
