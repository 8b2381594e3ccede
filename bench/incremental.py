"""Benchmark: what a scheduled `maskray infer` costs when nothing (or little) is new, on a real
S3 server (SeaweedFS on 127.0.0.1) against the local filesystem, side by side in one run.

The archive is --scenes objects (tiny: listing and diffing cost does not depend on their size)
under scenes/, and an output whose scenes table already holds every one of them (as a finished
run leaves it, in parts of --shard rows). Timed, per store, --reps times (median):
  no-op run    `run_inference` from start to return: lease, recovery, dedupe, reading the
               committed scenes rows, listing the input, diffing; nothing to do, so Ray never
               starts and nothing is written;
  list         `list_scenes` alone (one paginated LIST on S3, a directory walk locally);
  committed    reading the scenes table (`incremental.committed_scenes`);
  plan +1%     the diff after 1% of the objects were replaced and 1% added (what the next run
               would process), counted to check it finds exactly those.

    .venv/bin/python bench/incremental.py [--scenes 5000] [--shard 500] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from objectstore import TEST_KEY_ID, TEST_SECRET, client, start_seaweed  # noqa: E402

from pipeline import commit, incremental, storage  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.dataflow import PredictorSpec  # noqa: E402
from pipeline.infer import Source, run_inference  # noqa: E402
from pipeline.rows import SceneInfo, build_shard_tables  # noqa: E402
from pipeline.scenes import list_scenes  # noqa: E402

MODEL = "bench0incremental"


def _seed_output(output: str, refs, shard: int) -> None:
    """A scenes table holding every listed scene, as a finished run leaves it."""
    fs, root = storage.filesystem(output)
    for start in range(0, len(refs), shard):
        part = refs[start:start + shard]
        infos = [(SceneInfo(scene_id=r.scene_id, width=64, height=64, bands=1, dtype="uint8",
                            source_size=r.size, source_mtime=r.mtime, source_etag=r.etag), [])
                 for r in part]
        instances, scenes = build_shard_tables(infos, MODEL, "seed", ("background", "x"))
        commit.write_shard(fs, root, instances=instances, scenes=scenes, model_id=MODEL,
                           run_id="seed", config_hash=str(start))


def _median_s(fn, reps: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(reps):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def measure(name: str, input_uri: str, output: str, put, n: int, shard: int, reps: int,
            endpoint: str = "") -> dict:
    cfg = load_config(overrides=[f"storage.endpoint_url={endpoint}"] if endpoint else [])
    source = Source(PredictorSpec(object, {}, (1,), None, False), MODEL, ("x",), {})
    refs = list_scenes(input_uri)
    assert len(refs) == n, (len(refs), n)
    _seed_output(output, refs, shard)
    fs, root = storage.filesystem(output)
    row = {"store": name}
    row["no-op run"], summary = _median_s(
        lambda: run_inference(source, input_uri, output, cfg), reps)
    assert summary.scenes_skipped == n and summary.scenes_ok == 0
    row["list"], _ = _median_s(lambda: list_scenes(input_uri), reps)
    row["committed"], committed = _median_s(
        lambda: incremental.committed_scenes(fs, root, MODEL), reps)
    changed = max(1, n // 100)
    for i in range(changed):
        put(f"scenes/s{i:06d}.tif", b"replaced-" + bytes(16))
        put(f"scenes/new{i:06d}.tif", b"new")
    time.sleep(1.1)  # local mtimes: the replaced files must differ by more than the tolerance
    row["plan +1%"], plan = _median_s(
        lambda: incremental.plan(list_scenes(input_uri), committed), reps)
    assert len(plan.todo) == 2 * changed and len(plan.replaced) == changed, (len(plan.todo),)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=5000)
    parser.add_argument("--shard", type=int, default=500)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    n = args.scenes
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        local_in = tmp / "local-in"

        def put_local(key: str, data: bytes) -> None:
            path = local_in / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

        for i in range(n):
            put_local(f"scenes/s{i:06d}.tif", b"scene")
        rows.append(measure("local", str(local_in), str(tmp / "local-out"), put_local, n,
                            args.shard, args.reps))

        # The local server's test credentials, as the test suite uses them.
        os.environ.update(AWS_ACCESS_KEY_ID=TEST_KEY_ID, AWS_SECRET_ACCESS_KEY=TEST_SECRET)
        server = start_seaweed(tmp / "seaweed")
        try:
            storage.configure(storage.StorageConfig(endpoint_url=server.endpoint))
            s3c = client(server.endpoint)

            def put_s3(key: str, data: bytes) -> None:
                s3c.put_object(Bucket=server.bucket, Key=f"in/{key}", Body=data)

            start = time.perf_counter()
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda i: put_s3(f"scenes/s{i:06d}.tif", b"scene"), range(n)))
            print(f"uploaded {n} objects in {time.perf_counter() - start:.1f} s", file=sys.stderr)
            rows.append(measure("s3 (SeaweedFS)", server.uri("in"), server.uri("out"), put_s3, n,
                                args.shard, args.reps, server.endpoint))
        finally:
            server.stop()
    cols = ["no-op run", "list", "committed", "plan +1%"]
    print(f"\n{n} scenes, scenes table in parts of {args.shard} rows; median of {args.reps}\n")
    print(f"{'store':<16}" + "".join(f"{c:>12}" for c in cols))
    for row in rows:
        print(f"{row['store']:<16}" + "".join(f"{row[c]:>11.2f}s" for c in cols))
    ratio = rows[1]["no-op run"] / rows[0]["no-op run"]
    print(f"\nno-op run, s3 / local: {ratio:.2f}x; per 1000 scenes on s3: "
          f"{rows[1]['no-op run'] / n * 1000:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
