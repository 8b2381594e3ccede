"""Benchmark: `maskray infer` throughput with 1 and 2 model actors, and on a multi-node cluster
that lives on this one machine.

Same synthetic archive, same random-weight bundle, same batch size, same total of torch threads
(the machine's cores) in every layout:
  1 actor:     a local cluster of `--cpus` CPUs; one actor reserving 1 CPU (the other CPUs are
               left to the read tasks), forwarding with `--cpus` torch threads (`infer.threads`
               auto);
  2 actors:    the same cluster; two actors of 0.5 CPU each (together the 1 CPU the single
               actor reserved), each forwarding with `--cpus` / 2 threads;
  3 nodes:     `ray.cluster_utils.Cluster` on this machine: a head of 1 CPU (the driver's tasks
               and the reads) and two worker nodes of 1 CPU; two actors of 1 CPU each, so they
               run on two different nodes and tiles and results cross raylets and object
               stores, each forwarding with `--cpus` / 2 threads.
Each run is a fresh subprocess (its own cluster), layouts interleaved rep by rep, after one
warm-up run each. The figure is the run's flow (`RunSummary.flow`: first tile requested to last
shard committed, i.e. without cluster start), and tiles/s relative to 1 actor. On a machine
with as many cores as the layouts use this says what Ray's layout costs; it does not make the
2-core machine faster, which is the point: the same work split over actors or nodes should cost
no throughput.

    python bench/scaling.py                   # ~10 min on 2 cores
    python bench/scaling.py --reps 3 --layouts 1-actor,2-actors
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

_HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(_HERE)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

LAYOUTS = ("1-actor", "2-actors", "3-nodes")


def layout_overrides(layout: str, cpus: int) -> list[str]:
    """The `--set`s of one layout (threads pinned so every layout uses `cpus` threads in all)."""
    if layout == "1-actor":
        return ["infer.num_actors=1", "infer.actor_cpus=1", f"infer.threads={cpus}"]
    if layout == "2-actors":
        return ["infer.num_actors=2", "infer.actor_cpus=0.5", f"infer.threads={max(1, cpus // 2)}"]
    if layout == "3-nodes":
        return ["infer.num_actors=2", "infer.actor_cpus=1", f"infer.threads={max(1, cpus // 2)}"]
    raise SystemExit(f"unknown layout {layout!r}: one of {', '.join(LAYOUTS)}")


def worker(args: argparse.Namespace) -> int:
    """One run of one layout on a cluster of its own; prints `RESULT {json}`."""
    import ray

    from bench import pipeline as bench
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    cluster = None
    if args.layout == "3-nodes":
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1,
                                                                "include_dashboard": False})
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    else:
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    try:
        overrides = [*args.overrides, *layout_overrides(args.layout, args.cpus)]
        wall, summary = bench.run_pipeline(Path(args.bundle), args.archive, Path(args.output),
                                           overrides)
        result = {"layout": args.layout, "wall_s": wall, "flow_s": summary.flow.seconds,
                  "tiles": summary.flow.tiles, "instances": summary.instances,
                  "nodes": len(ray.nodes())}
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    from bench import pipeline as bench
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    archive = bench.ensure_archive(
        workdir / f"archive-{args.scenes}x{args.scene_size}-seed{args.seed}",
        scenes=args.scenes, size=args.scene_size, seed=args.seed)
    bundle = bench.ensure_bundle(
        workdir / f"bundle-{args.backbone}-{args.tile_size}-{args.overlap}", args.backbone,
        args.tile_size, args.overlap, 0.05)
    overrides = [f"tiling.tile_size={args.tile_size}", f"tiling.overlap={args.overlap}",
                 f"infer.batch_size={args.batch_size}", "infer.device=cpu"]
    layouts = args.layouts.split(",")
    print(f"archive {args.scenes} x {args.scene_size} px, tile {args.tile_size} (overlap "
          f"{args.overlap}), {args.backbone} random weights, batch {args.batch_size}, "
          f"{args.cpus} CPUs; layouts {', '.join(layouts)}; {args.reps} reps + warm-up",
          flush=True)
    results: dict[str, list[dict]] = {layout: [] for layout in layouts}
    for rep in range(args.reps + 1):
        for layout in layouts:
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--layout", layout,
                   "--bundle", str(bundle), "--archive", str(archive), "--cpus", str(args.cpus),
                   "--output", str(workdir / "runs" / layout)]
            for item in overrides:
                cmd += ["--set", item]
            start = time.perf_counter()
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
            if done.returncode or not lines:
                sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
                raise SystemExit(f"{layout} failed (exit {done.returncode})")
            result = json.loads(lines[-1][len("RESULT "):])
            result["process_s"] = time.perf_counter() - start
            label = "warm-up" if rep == 0 else f"rep {rep}/{args.reps}"
            print(f"{label} {layout:<9} flow {result['flow_s']:6.1f} s  run {result['wall_s']:6.1f}"
                  f" s  process {result['process_s']:6.1f} s  {result['tiles']} tiles  "
                  f"{result['instances']} instances  {result['nodes']} node(s)", flush=True)
            if rep:
                results[layout].append(result)
    base = statistics.median(r["flow_s"] for r in results[layouts[0]])
    print(f"\n| layout | nodes | flow s (median) | tiles/s | vs {layouts[0]} | reps flow s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for layout in layouts:
        rs = results[layout]
        flow = statistics.median(r["flow_s"] for r in rs)
        reps = " ".join(f"{r['flow_s']:.1f}" for r in rs)
        print(f"| {layout} | {rs[0]['nodes']} | {flow:.1f} | {rs[0]['tiles'] / flow:.3f} | "
              f"{base / flow:.2f} | {reps} |")
    counts = {layout: {r["instances"] for r in results[layout]} for layout in layouts}
    if len(set.union(*counts.values())) != 1:
        print(f"WARNING: the layouts wrote different instance counts: {counts}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    parser.add_argument("--backbone", default="resnet18_fpn")
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--scene-size", type=int, default=928,
                        help="scene side px (928 = 4 x 4 tiles of 256 with 32 overlap)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2,
                        help="CPUs of the local cluster, and torch threads in all")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--workdir", default=os.path.join(ROOT, ".bench", "scaling"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--layout", help=argparse.SUPPRESS)
    parser.add_argument("--bundle", help=argparse.SUPPRESS)
    parser.add_argument("--archive", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return worker(args) if args.worker else run(args)


if __name__ == "__main__":
    sys.exit(main())
