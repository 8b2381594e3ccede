"""Inference on a multi-node Ray cluster on one machine (`ray.cluster_utils.Cluster`: a head and
two worker nodes, each its own raylet): the actors spread over nodes, and a worker node removed
mid-run still leaves exactly the rows of a clean run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from jobs import synth as synth_job
from pipeline.dataset import read_scenes

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
from replay import comparable_rows  # noqa: E402


def _run(archive: Path, out: Path, *extra: str) -> dict:
    proc = subprocess.run([sys.executable, str(TESTS / "multinode.py"), str(archive), str(out),
                           *extra], capture_output=True, text=True, timeout=600,
                          cwd=TESTS.parent)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])




def test_a_worker_node_removed_mid_run_leaves_the_rows_of_a_clean_run(tmp_path):
    archive = tmp_path / "archive"
    assert synth_job.main(["--out", str(archive), "--scenes", "6", "--size", "512", "--seed", "11",
                           "--quiet"]) == 0
    clean = _run(archive, tmp_path / "clean")
    assert clean["scenes_ok"] == 6 and clean["removed_node"] is None
    # two actors of one CPU each on nodes of one CPU: the pool spans two nodes
    assert len(clean["actor_nodes"]) >= 2

    faulted = _run(archive, tmp_path / "faulted", "--kill-node")
    assert faulted["removed_node"] in faulted["worker_nodes"]
    assert faulted["committed_before_removal"] < 6  # it really was mid-run
    assert faulted["scenes_ok"] == 6 and faulted["scenes_error"] == 0
    assert comparable_rows(tmp_path / "faulted") == comparable_rows(tmp_path / "clean")
    assert sorted(read_scenes(str(tmp_path / "faulted")).column("scene_id").to_pylist()) == \
        sorted(read_scenes(str(tmp_path / "clean")).column("scene_id").to_pylist())
