"""No secret in anything a run writes or prints: a run against S3 with a planted secret key, then
a grep of every object it wrote (Parquet data and metadata, run records), its stdout / stderr,
and the same for a failed run (wrong credentials) whose errors quote the store's answers."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from jobs import synth as synth_job

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from objectstore import client, start_moto, upload_tree  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _all_objects(endpoint: str, bucket: str, prefix: str) -> bytes:
    s3 = client(endpoint)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
    assert keys
    return b"".join(k.encode() + s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys)


def test_a_planted_secret_appears_nowhere(tmp_path):
    pytest.importorskip("moto")
    archive = tmp_path / "archive"
    assert synth_job.main(["--out", str(archive), "--scenes", "2", "--size", "256", "--seed", "3",
                           "--quiet"]) == 0
    server = start_moto(bucket="secrets-test")  # accepts any key: the planted one works
    try:
        upload_tree(server.endpoint, archive / "scenes", server.bucket, "in/scenes")
        planted_key, planted_secret = "AKIA" + secrets.token_hex(8).upper(), secrets.token_hex(20)
        env = {**os.environ, "AWS_ACCESS_KEY_ID": planted_key,
               "AWS_SECRET_ACCESS_KEY": planted_secret, "AWS_ENDPOINT_URL": server.endpoint}
        command = [sys.executable, "-m", "jobs.infer", "--predictor",
                   f"labels:{archive / 'annotations.json'}", "--input", server.uri("in"),
                   "--output", server.uri("out"), "--set", "tiling.tile_size=128"]
        ok = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
        assert ok.returncode == 0, ok.stderr[-2000:]
        debug = subprocess.run([sys.executable, "-m", "jobs.query", server.uri("out"),
                                "select * from runs", "--format", "json", "--debug"],
                               cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert debug.returncode == 0, debug.stderr[-2000:]
        written = _all_objects(server.endpoint, server.bucket, "out/")
        printed = (ok.stdout + ok.stderr + debug.stdout + debug.stderr).encode()
        for secret in (planted_secret, planted_key):
            assert secret.encode() not in written, "a credential was written into the output"
            assert secret.encode() not in printed, "a credential was printed"
    finally:
        server.stop()
