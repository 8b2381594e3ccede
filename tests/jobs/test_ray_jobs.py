"""Ray Jobs against a real head: `ray start --head` on 127.0.0.1 with token authentication on, in
a temporary directory; an inference job submitted with JobSubmissionClient under the run id as
its submission id. Only the processes of the head this test started are stopped (by pid)."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from jobs import synth as synth_job
from pipeline.dataset import read_instances

REPO = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).with_name("ray")


def _free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            if s.getsockname()[1] not in ports:
                ports.append(s.getsockname()[1])
    return ports


def _processes_of(marker: str) -> list[psutil.Process]:
    """This user's processes whose command line names `marker` (the head's temp dir)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "uids"]):
        try:
            if proc.info["uids"] and proc.info["uids"].real == os.getuid() and \
                    any(marker in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """(dashboard address, token) of a head started for this module with RAY_AUTH_MODE=token."""
    if not RAY.exists():
        pytest.skip("the ray CLI is not installed beside this Python")
    temp = tmp_path_factory.mktemp("rayhead")
    token = secrets.token_hex(32)
    gcs, dashboard, client, agent = _free_ports(4)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "PATH": f"{RAY.parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([str(RAY), "start", "--head", "--node-ip-address=127.0.0.1",
                    f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                    f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
                    "--num-cpus=2", f"--temp-dir={temp}", "--disable-usage-stats"],
                   env=env, check=True, capture_output=True, timeout=180)
    try:
        yield f"http://127.0.0.1:{dashboard}", token
    finally:
        procs = _processes_of(str(temp))
        for proc in procs:
            try:
                proc.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=20)
        for proc in alive:
            proc.kill()


def _client(address: str, token: str | None):
    from ray.job_submission import JobSubmissionClient

    headers = {"Authorization": f"Bearer {token}"} if token else None
    return JobSubmissionClient(address, headers=headers)


def test_an_inference_job_on_a_token_protected_head(ray_head, tmp_path):
    from ray.job_submission import JobStatus

    address, token = ray_head
    with pytest.raises(Exception, match="(?i)401|unauthori[sz]ed|authentication"):
        _client(address, None).list_jobs()  # token auth is on: no token, no cluster

    archive = tmp_path / "archive"
    assert synth_job.main(["--out", str(archive), "--scenes", "2", "--size", "256", "--seed", "5",
                           "--quiet"]) == 0
    out = tmp_path / "out"
    run_id = "maskray-infer-" + secrets.token_hex(4)
    entrypoint = (f"python -m jobs.infer --predictor labels:{archive / 'annotations.json'} "
                  f"--input {archive} --output {out} --run-id {run_id} --quiet "
                  "--set tiling.tile_size=128 --set tiling.overlap=32")
    runtime_env = {"working_dir": str(REPO),
                   "excludes": [".venv", ".git", "*.egg-info", "__pycache__", ".pytest_cache"]}
    client = _client(address, token)
    assert client.submit_job(entrypoint=entrypoint, submission_id=run_id,
                             runtime_env=runtime_env) == run_id
    with pytest.raises(Exception, match="(?i)already exists"):
        client.submit_job(entrypoint=entrypoint, submission_id=run_id, runtime_env=runtime_env)
    deadline = time.monotonic() + 300
    while (status := client.get_job_status(run_id)) not in {JobStatus.SUCCEEDED,
                                                            JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.monotonic() < deadline, "job did not finish in 300 s"
        time.sleep(1)
    logs = client.get_job_logs(run_id)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    assert "2 scene(s) ok, 0 error" in logs
    assert token not in logs  # the token never shows in what the job printed
    assert (out / "runs" / f"{run_id}.json").is_file()
    assert read_instances(str(out)).num_rows > 0
