"""The storage layer against a real S3 server (moto, on 127.0.0.1): settings, listing, windowed
GeoTIFF reads, the commit protocol, the lease, and DuckDB over s3://."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from pipeline import commit, incremental, storage
from pipeline.errors import UsageError
from pipeline.lease import Lease, LeaseHeld
from pipeline.query import connect, run_query
from pipeline.raster_io import SceneError, open_scene, read_window
from pipeline.rows import SceneInfo, build_shard_tables
from pipeline.scenes import list_scenes


def test_settings_come_from_config_then_environment():
    env = {"AWS_ENDPOINT_URL": "http://10.0.0.5:9000", "AWS_REGION": "eu-west-1"}
    s = storage.resolve(storage.StorageConfig(), env)
    assert (s.endpoint_url, s.region, s.path_style) == ("http://10.0.0.5:9000", "eu-west-1", True)
    s3 = storage.resolve(storage.StorageConfig(endpoint_url="https://minio.internal/",
                                               addressing="virtual"), env)
    assert (s3.endpoint_url, s3.path_style) == ("https://minio.internal", False)
    aws = storage.resolve(storage.StorageConfig(), {})
    assert (aws.endpoint_url, aws.region, aws.path_style) == ("", "us-east-1", False)
    gdal = storage.gdal_options(s)
    assert gdal["AWS_S3_ENDPOINT"] == "10.0.0.5:9000" and gdal["AWS_HTTPS"] == "NO"
    assert gdal["AWS_VIRTUAL_HOSTING"] == "FALSE"
    options = storage.s3fs_options(s)
    assert options["config_kwargs"]["s3"] == {"addressing_style": "path"}
    assert options["config_kwargs"]["retries"]["max_attempts"] == 5


def test_credentials_in_endpoints_or_uris_are_refused():
    with pytest.raises(UsageError, match="must not carry credentials"):
        storage.resolve(storage.StorageConfig(), {"AWS_ENDPOINT_URL": "http://AKIA:secret@host"})
    with pytest.raises(UsageError, match="must not carry credentials"):
        storage.check_uri("s3://AKIA:secret@bucket/key.tif")
    with pytest.raises(UsageError, match="http"):
        storage.resolve(storage.StorageConfig(), {"AWS_ENDPOINT_URL": "127.0.0.1:9000"})


def _geotiff(path, size=256, seed=0):
    rng = np.random.default_rng(seed)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500000, 4000000, 0.5, 0.5),
                       tiled=True, blockxsize=128, blockysize=128) as dst:
        dst.write(rng.integers(0, 255, (3, size, size), dtype=np.uint8))


@pytest.fixture
def s3_prefix(moto_s3, request):
    storage.configure(storage.StorageConfig(endpoint_url=moto_s3.endpoint))
    return moto_s3.uri("storage", request.node.name)


@pytest.mark.parametrize("port", [54037, 4030, 9000])
def test_storage_errors_name_the_cause_whatever_the_port(port):
    """An endpoint's port must not read as an S3 error code (":54037" holds "403")."""
    from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
    url = f"http://127.0.0.1:{port}/out"
    timeout = storage.storage_error(ReadTimeoutError(endpoint_url=url), "s3://out/r")
    assert "storage endpoint unreachable" in str(timeout) and "access denied" not in str(timeout)
    refused = storage.storage_error(EndpointConnectionError(endpoint_url=url), "s3://out/r")
    assert "storage endpoint unreachable" in str(refused)
    # a plain OSError carrying the same text (as s3fs re-raises some) reads the same way
    assert "unreachable" in str(storage.storage_error(OSError(f"Read timeout on {url}"), "x"))
    denied = ClientError({"Error": {"Code": "InvalidAccessKeyId", "Message": "no such key"}},
                         "ListObjectsV2")
    assert "access denied" in str(storage.storage_error(denied, "s3://out/r"))
    forbidden = ClientError({"Error": {"Code": "403", "Message": "Forbidden"}}, "HeadObject")
    assert "access denied" in str(storage.storage_error(forbidden, "s3://out/r"))
    missing = storage.storage_error(FileNotFoundError(f"{url}/x"), "s3://out/r")
    assert "not found" in str(missing)


def test_listing_an_s3_prefix_glob_and_list_file(s3_prefix, tmp_path):
    fs, base = storage.filesystem(s3_prefix)
    _geotiff(tmp_path / "a.tif")
    for key in ("scenes/a.tif", "scenes/sub/b.TIF", "scenes/.hidden/c.tif", "scenes/notes.txt"):
        fs.put_file(str(tmp_path / "a.tif"), f"{base}/{key}")
    fs.pipe_file(f"{base}/scenes/sub/../evil.tif", b"x")  # a key GDAL would normalise
    refs = list_scenes(f"{s3_prefix}/scenes")
    assert [(r.scene_id, bool(r.refused)) for r in refs] == [
        ("a.tif", False), ("sub/../evil.tif", True), ("sub/b.TIF", False)]  # refused: an error row
    refs = [r for r in refs if not r.refused]
    assert refs[0].uri == f"{s3_prefix}/scenes/a.tif"
    assert refs[0].size == (tmp_path / "a.tif").stat().st_size and len(refs[0].etag) == 32
    assert refs[0].mtime is not None
    assert [r.scene_id for r in list_scenes(f"{s3_prefix}/scenes/sub/*.TIF")] == ["b.TIF"]
    fs.pipe_file(f"{base}/list.txt", b"# two scenes\nscenes/a.tif\nscenes/missing.tif\n")
    listed = list_scenes(f"{s3_prefix}/list.txt")
    assert [(r.scene_id, r.size is None) for r in listed] == [("scenes/a.tif", False),
                                                              ("scenes/missing.tif", True)]
    with pytest.raises(UsageError, match="not found or empty"):
        list_scenes(f"{s3_prefix}/nothing-here")


def test_geotiff_windows_are_read_from_s3_with_range_requests(s3_prefix, tmp_path):
    fs, base = storage.filesystem(s3_prefix)
    _geotiff(tmp_path / "a.tif", size=512, seed=3)
    fs.put_file(str(tmp_path / "a.tif"), f"{base}/a.tif")
    info = open_scene(f"{s3_prefix}/a.tif")
    assert (info.width, info.height, info.count, info.crs.to_epsg()) == (512, 512, 3, 32633)
    image, valid = read_window(f"{s3_prefix}/a.tif", (100, 200, 164, 264), (3, 1))
    with rasterio.open(tmp_path / "a.tif") as src:
        want = src.read([3, 1], window=((200, 264), (100, 164)))
    assert valid.all() and np.array_equal(image, want.astype(np.float32))
    with pytest.raises(SceneError, match="not_found"):
        open_scene(f"{s3_prefix}/nope.tif")


def _shard(scene_ids, run_id="r1"):
    infos = [(SceneInfo(scene_id=s, width=64, height=64, bands=3, dtype="uint8",
                        source_size=10, source_etag="e" + s), []) for s in scene_ids]
    return build_shard_tables(infos, "m1", run_id, ("background", "car"))


def test_commit_on_s3_publishes_nothing_partial_and_reruns_do_nothing(s3_prefix, monkeypatch):
    fs, root = storage.filesystem(s3_prefix)
    instances, scenes = _shard(["a.tif", "b.tif"])

    def broken(table, where, **kwargs):
        where.write(b"PAR1 truncated")
        raise OSError("disk full")

    monkeypatch.setattr(commit.pq, "write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        commit.write_shard(fs, root, instances=instances, scenes=scenes, model_id="m1",
                           run_id="r1", config_hash="h")
    monkeypatch.undo()
    # s3fs publishes the truncated object on the exception, but only under _staging/
    assert fs.glob(f"{root}/_staging/r1/**/*.parquet")
    assert not fs.glob(f"{root}/scenes/**/*.parquet") and not fs.glob(f"{root}/instances/**")
    first = commit.write_shard(fs, root, instances=instances, scenes=scenes, model_id="m1",
                               run_id="r1", config_hash="h")
    again = commit.write_shard(fs, root, instances=instances, scenes=scenes, model_id="m1",
                               run_id="r2", config_hash="h")
    assert not first.skipped and again.skipped
    assert not fs.glob(f"{root}/_staging/r1/**/*.parquet")
    rows = incremental.committed_scenes(fs, root, "m1")
    assert sorted(rows) == ["a.tif", "b.tif"] and rows["a.tif"][0].etag == "ea.tif"


def test_retiring_rows_of_replaced_scenes_on_s3(s3_prefix):
    fs, root = storage.filesystem(s3_prefix)
    old_i, old_s = _shard(["a.tif", "b.tif"], "r1")
    commit.write_shard(fs, root, instances=old_i, scenes=old_s, model_id="m1", run_id="r1",
                       config_hash="h")
    new_i, new_s = _shard(["a.tif"], "r2")
    commit.write_shard(fs, root, instances=new_i, scenes=new_s, model_id="m1", run_id="r2",
                       config_hash="h2")
    rows = incremental.committed_scenes(fs, root, "m1")
    assert len(rows["a.tif"]) == 2  # as a run killed before retiring would leave it
    assert incremental.dedupe(fs, root, "m1", "r3") == 1
    rows = incremental.committed_scenes(fs, root, "m1")
    assert {s: [r.run_id for r in v] for s, v in rows.items()} == {"a.tif": ["r2"],
                                                                   "b.tif": ["r1"]}


def test_the_lease_admits_one_run_and_is_taken_over_when_stale(s3_prefix):
    fs, root = storage.filesystem(s3_prefix)
    with Lease(fs, root, "m1", "run-a"):
        with pytest.raises(LeaseHeld, match="run-a"):
            Lease(fs, root, "m1", "run-b").acquire()
        # another model's lease is independent
        with Lease(fs, root, "m2", "run-c"):
            pass
    stale = {"run_id": "dead", "host": "h", "pid": 1, "heartbeat": 0}
    fs.pipe_file(f"{root}/_locks/model=m1.json", json.dumps(stale).encode())
    with Lease(fs, root, "m1", "run-d") as lease:
        assert json.loads(fs.cat_file(lease.path))["run_id"] == "run-d"
    assert not fs.exists(f"{root}/_locks/model=m1.json")
    # a fresh heartbeat, but the holder's process on this host is gone: a killed driver's rerun
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = {"run_id": "killed", "host": socket.gethostname(), "pid": int(gone.stdout),
            "heartbeat": time.time()}
    fs.pipe_file(f"{root}/_locks/model=m1.json", json.dumps(dead).encode())
    with Lease(fs, root, "m1", "run-e") as lease:
        assert json.loads(fs.cat_file(lease.path))["run_id"] == "run-e"


def test_duckdb_reads_an_output_on_s3(s3_prefix):
    fs, root = storage.filesystem(s3_prefix)
    instances, scenes = _shard(["a.tif", "b.tif"])
    commit.write_shard(fs, root, instances=instances, scenes=scenes, model_id="m1", run_id="r1",
                       config_hash="h")
    con = connect(s3_prefix)
    got = run_query(con, "select scene_id, status, model from scenes order by scene_id").fetchall()
    assert got == [("a.tif", "ok", "m1"), ("b.tif", "ok", "m1")]
    with pytest.raises(UsageError, match="instances does not exist"):  # no detections yet
        run_query(con, "select count(*) from instances")


def test_a_store_that_does_not_answer_is_not_a_bad_scene(moto_s3):
    from pipeline.raster_io import StorageUnavailable
    from pipeline.tiles import plan_scene, retrying

    with socket.socket() as s:  # a port nothing listens on: connection refused
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    settings = storage.resolve(storage.StorageConfig(endpoint_url=dead, retries=2)).to_dict()
    storage.configure(settings)
    try:
        with pytest.raises(StorageUnavailable, match="connect"):
            open_scene("s3://bucket/a.tif")
        # not an error row: the task fails after its retries, so the shard is not committed
        with pytest.raises(StorageUnavailable):
            plan_scene({"scene_id": "a.tif", "uri": "s3://bucket/a.tif", "shard": 0}, 128, 32,
                       (1,), 10**9, storage=settings)
    finally:
        storage.configure(storage.StorageConfig(endpoint_url=moto_s3.endpoint))
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise StorageUnavailable("Connection refused")
        return "read"

    assert retrying(flaky, attempts=3, first_delay_s=0.01) == "read" and len(calls) == 3
    calls.clear()
    with pytest.raises(StorageUnavailable):
        retrying(flaky, attempts=2, first_delay_s=0.01)
    assert len(calls) == 2
