"""Run `maskray infer`'s pipeline on a multi-node Ray cluster on this machine, optionally removing
a worker node mid-run; print a JSON summary. Runs in its own process (tests/jobs/test_multinode.py)
because `ray.cluster_utils.Cluster` needs a driver of its own, apart from the suite's cluster.

    python tests/multinode.py ARCHIVE OUTPUT [--kill-node]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def actor_nodes(class_name: str) -> dict[str, str]:
    """actor id -> node id of the live actors of `class_name` (GCS actor table; no dashboard)."""
    from ray._private.state import actors

    found = {}
    for actor_id, info in actors().items():
        if class_name in str(info.get("ActorClassName", "")) and info.get("State") == "ALIVE":
            found[actor_id] = info["Address"]["NodeID"]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("archive")
    parser.add_argument("output")
    parser.add_argument("--kill-node", action="store_true")
    args = parser.parse_args(argv)

    import ray
    from ray.cluster_utils import Cluster

    from pipeline.config import load_config
    from pipeline.infer import labels_source, run_inference

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    # A head with one CPU (driver-side tasks, reads) and two one-CPU worker nodes: two actors of
    # one CPU each cannot share a node, so the pool spans nodes.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1,
                                                            "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    seen: dict[str, str] = {}
    result: dict = {"removed_node": None}
    try:
        cfg = load_config(overrides=["tiling.tile_size=128", "tiling.overlap=32",
                                     "infer.shard_scenes=1", "infer.num_actors=2",
                                     "infer.actor_cpus=1", "infer.batch_size=4"])
        archive = Path(args.archive)
        source = labels_source(str(archive / "annotations.json"), str(archive))
        if args.kill_node:
            # The replay takes a few seconds on a fast machine: slow it down so the node is
            # removed while both actors still have tiles to do.
            import faults

            ray.cloudpickle.register_pickle_by_value(faults)
            spec = replace(source.spec, cls=faults.SlowLabelsPredictor,
                           kwargs={**source.spec.kwargs, "delay_s": 0.5})
            source = replace(source, spec=spec)
        stop = threading.Event()

        def watch() -> None:
            """Record where actors run; with --kill-node, remove a worker node whose actor has
            been working for 2 s (mid-run: before the last shard is committed)."""
            scenes = Path(args.output) / "scenes"
            working_since: dict[str, float] = {}
            while not stop.is_set():
                now_alive = actor_nodes(source.spec.cls.__name__)
                seen.update(now_alive)
                for node in set(now_alive.values()):
                    working_since.setdefault(node, time.monotonic())
                committed = list(scenes.rglob("part-*.parquet")) if scenes.exists() else []
                if args.kill_node and result["removed_node"] is None:
                    victim = next((w for w in workers if w.node_id in working_since
                                   and time.monotonic() - working_since[w.node_id] > 2), None)
                    if victim is not None:
                        cluster.remove_node(victim, allow_graceful=False)
                        result["removed_node"] = victim.node_id
                        result["committed_before_removal"] = len(committed)
                time.sleep(0.2)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        start = time.perf_counter()
        summary = run_inference(source, str(archive), args.output, cfg)
        stop.set()
        watcher.join()
        result.update(scenes_ok=summary.scenes_ok, scenes_error=summary.scenes_error,
                      instances=summary.instances, seconds=round(time.perf_counter() - start, 1),
                      actor_nodes=sorted(set(seen.values())),
                      worker_nodes=sorted(w.node_id for w in workers))
    finally:
        ray.shutdown()
        cluster.shutdown()
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
