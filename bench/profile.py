"""Profile: where the inference actor's and the driver's time goes, sampled by py-spy.

One worker process (this file with `--worker`) runs, on one synthetic archive and one bundle,
exactly the code the pipeline runs, in the pipeline's order but without Ray, so that every
sample lands in our code or in torch rather than in Ray's scheduling:
  read:   `pipeline.tiles.plan_scene` + `read_tiles` (what the read tasks run), batches of
          `--batch-size` tiles;
  actor:  `pipeline.predictor.TilePredictor` (as the actor builds it, `--threads` torch threads)
          called on every batch: forward + box-local RLE + placement in the scene frame;
  driver: `ShardAssembler` + `ShardWriter` on the actor's rows (stitching, instance rows,
          GeoParquet, commit), as `pipeline.infer` runs them.
py-spy (`pip install py-spy`) samples the worker at `--rate` Hz (`py-spy record --format raw
--idle`). Each sample is put in the stage of the deepest frame that names one (STAGES below:
model stages by torchvision module, ours by function), so the table reads "share of the wall
time spent in this stage and what it calls". The worker also prints its own perf_counter times
per phase, which the sample counts must agree with. The raw collapsed stacks are kept
(`--workdir`/profile-*.txt; flamegraph.pl or speedscope read them).

    pip install py-spy
    python bench/profile.py                              # 32 tiles of 512 px, resnet18_fpn
    python bench/profile.py --bundle DEMO_OUT/train-run/bundle --scene-size 2048 --scenes 1
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

_HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(_HERE)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# (stage, test on one frame "function (file:line)"). A sample belongs to the stage of its
# deepest matching frame, so the order only matters between rules that match the same frame;
# the frame of RoIHeads.forward is told apart by its line (ROI_HEAD_CALLS).
STAGES: list[tuple[str, str, str]] = [
    # stage, substring of the file, function name or "" for any function in that file
    ("read tiles (plan + windowed read)", "pipeline/tiles.py", ""),
    ("model: normalise + batch (transform)", "detection/transform.py", ""),
    ("model: backbone + FPN", "detection/backbone_utils.py", ""),
    ("model: RPN", "detection/rpn.py", ""),
    # torchvision's RoIHeads.forward: split by the line it is on (ROI_HEAD_CALLS)
    ("model: RoI heads, other", "detection/roi_heads.py", ""),
    ("actor: box-local RLE (encode_box_masks)", "pipeline/masks.py", ""),
    ("actor: place in scene", "pipeline/predictor.py", "place_in_scene"),
    ("actor: tensor in / out", "pipeline/predictor.py", "_predict"),
    ("driver: stitch", "pipeline/stitch.py", ""),
    ("driver: instance rows (geometry, WKB)", "pipeline/rows.py", ""),
    ("driver: instance rows (geometry, WKB)", "pipeline/geometry.py", ""),
    ("driver: Parquet + commit", "pipeline/commit.py", ""),
    ("driver: shard bookkeeping", "pipeline/shards.py", ""),
    ("driver: shard writer", "pipeline/infer.py", ""),
    ("model load", "model/bundle.py", ""),
]


# RoIHeads.forward calls its parts from single lines; which line a sample is on says which part.
ROI_HEAD_CALLS = {
    "self.box_roi_pool(": "model: box branch, RoI align",
    "self.box_head(": "model: box branch, head",
    "self.box_predictor(": "model: box branch, head",
    "self.postprocess_detections(": "model: box branch, post-processing + NMS",
    "self.mask_roi_pool(": "model: mask branch, RoI align",
    "self.mask_head(": "model: mask branch, head (4 convs)",
    "self.mask_predictor(": "model: mask branch, predictor (deconv)",
    "maskrcnn_inference(": "model: mask branch, post-processing",
}


def _roi_head_lines() -> dict[int, str]:
    """Line number in torchvision's roi_heads.py -> stage, for the calls in ROI_HEAD_CALLS."""
    import torchvision.models.detection.roi_heads as roi_heads

    lines = {}
    with open(roi_heads.__file__) as f:
        for number, text in enumerate(f, start=1):
            for call, stage in ROI_HEAD_CALLS.items():
                if call in text and "def " not in text:
                    lines[number] = stage
    return lines


def _bench_pipeline():
    """bench/pipeline.py (archive, bundle and batch helpers), loaded by path."""
    spec = importlib.util.spec_from_file_location("bench_pipeline", os.path.join(_HERE, "pipeline.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- worker


def worker(args: argparse.Namespace) -> int:
    """Run read -> actor -> driver once; print and write per-phase perf_counter seconds."""
    import torch

    from model.bundle import load_bundle
    from pipeline import commit
    from pipeline.config import load_config
    from pipeline.infer import RunSummary, ShardWriter, model_source
    from pipeline.predictor import TilePredictor
    from pipeline.scenes import SceneRef
    from pipeline.shards import ShardAssembler

    bench = _bench_pipeline()
    bundle = load_bundle(args.bundle)
    times: dict[str, float] = {}
    start = time.perf_counter()
    mean, _ = bundle.model.normalization()  # padding is filled with the band means, as in infer
    batches, _, _ = bench.read_archive(Path(args.archive), bundle.tile_size, bundle.overlap,
                                       tuple(bundle.model.bands), tuple(mean), args.batch_size)
    times["read"] = time.perf_counter() - start

    start = time.perf_counter()
    predictor = TilePredictor(args.bundle, device="cpu", batch_size=args.batch_size,
                              threads=args.threads)
    times["model load"] = time.perf_counter() - start
    start = time.perf_counter()
    predicted = [predictor(batch) for batch in batches]
    times["actor"] = time.perf_counter() - start

    rows = [{k: v[i] for k, v in out.items()} for out in predicted
            for i in range(len(out["x0"]))]
    cfg = load_config(None, [])
    source = model_source(args.bundle, cfg)
    output = Path(args.output)
    shutil.rmtree(output, ignore_errors=True)
    fs, root = commit.open_root(str(output))
    summary = RunSummary(commit.new_run_id(), source.model_id)
    scenes = sorted({(str(r["scene_id"]), str(r["uri"])) for r in rows})
    refs = {sid: SceneRef(sid, uri, os.path.getsize(uri), os.path.getmtime(uri))
            for sid, uri in scenes}
    writer = ShardWriter(fs, root, source, cfg, summary, refs, {})
    start = time.perf_counter()
    assembler = ShardAssembler([(sid, uri, 0) for sid, uri in scenes])
    for row in rows:
        for shard in assembler.add(row):
            writer(shard)
    times["driver"] = time.perf_counter() - start
    detections = sum(len(r["detections"] or ()) for r in rows)
    record = {"times": times, "tiles": len(rows), "detections": detections,
              "instances": summary.instances, "threads": torch.get_num_threads()}
    Path(args.record).write_text(json.dumps(record))
    print(json.dumps(record), flush=True)
    return 0


# ----------------------------------------------------------------------------- profile parsing


def _frame_stage(frame: str, roi_lines: dict[int, str]) -> str | None:
    name, _, where = frame.partition(" (")
    if name.endswith("RoIHeads.forward") and "detection/roi_heads.py:" in where:
        line = int(where.rstrip(")").rsplit(":", 1)[1])
        if line in roi_lines:
            return roi_lines[line]
    for stage, file_part, function in STAGES:
        if file_part in where and (not function or name == function):
            return stage
    return None


def stage_table(raw: Path) -> tuple[collections.Counter, collections.Counter, int]:
    """py-spy raw output ("f1 (file:line);f2 (...) COUNT" per line) -> samples per stage, per leaf
    function (self time), and the total."""
    stages: collections.Counter = collections.Counter()
    leaves: collections.Counter = collections.Counter()
    total = 0
    roi_lines = _roi_head_lines()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        stage = None
        for frame in reversed(frames):  # deepest first
            stage = _frame_stage(frame, roi_lines)
            if stage:
                break
        stages[stage or "other (imports, setup, Python start-up)"] += n
        leaf = frames[-1]
        name, _, where = leaf.partition(" (")
        leaves[f"{name} ({where.rsplit(':', 1)[0].split('site-packages/')[-1]})"] += n
    return stages, leaves, total


def run(args: argparse.Namespace) -> int:
    bench = _bench_pipeline()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    py_spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(py_spy):
        raise SystemExit("py-spy is not installed: pip install py-spy")
    archive = bench.ensure_archive(
        workdir / f"archive-{args.scenes}x{args.scene_size}-seed{args.seed}",
        scenes=args.scenes, size=args.scene_size, seed=args.seed)
    if args.bundle:
        bundle = Path(args.bundle)
    else:
        bundle = bench.ensure_bundle(
            workdir / f"bundle-{args.backbone}-{args.tile_size}-{args.overlap}", args.backbone,
            args.tile_size, args.overlap, args.score_thresh)
    label = args.label or "profile"
    raw = workdir / f"{label}.txt"
    record = workdir / f"{label}.json"
    record.unlink(missing_ok=True)
    cmd = [py_spy, "record", "--format", "raw", "--rate", str(args.rate), "--idle", "-o", str(raw),
           "--", sys.executable, os.path.abspath(__file__), "--worker", "--bundle", str(bundle),
           "--archive", str(archive), "--output", str(workdir / f"{label}-out"),
           "--record", str(record), "--batch-size", str(args.batch_size),
           "--threads", str(args.threads)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    if not record.exists():
        raise SystemExit("the profiled worker failed (its traceback is above)")
    done = json.loads(record.read_text())
    stages, leaves, total = stage_table(raw)
    print(f"\n{label}: {done['tiles']} tiles, {done['detections']} detections -> "
          f"{done['instances']} instances; {done['threads']} torch threads; wall {wall:.1f} s; "
          f"{total} samples at {args.rate} Hz; raw stacks: {raw}")
    print("phases (perf_counter): " + ", ".join(f"{k} {v:.2f} s" for k, v in done["times"].items()))
    print("\n| stage | samples | share | per tile ms |")
    print("| --- | --- | --- | --- |")
    for stage, n in stages.most_common():
        print(f"| {stage} | {n} | {n / total:.1%} | {1000 * n / args.rate / done['tiles']:.1f} |")
    print(f"\ntop {args.top} self-time leaves:")
    for leaf, n in leaves.most_common(args.top):
        print(f"  {n / total:6.1%}  {leaf}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--bundle", help="model bundle (default: a random-weight one of "
                                         "--backbone / --tile-size / --overlap)")
    parser.add_argument("--backbone", default="resnet18_fpn")
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--score-thresh", type=float, default=0.05)
    parser.add_argument("--scenes", type=int, default=2)
    parser.add_argument("--scene-size", type=int, default=1856,
                        help="scene side px (1856 = 4 x 4 tiles of 512 with 64 overlap)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads (the auto value of a single CPU actor)")
    parser.add_argument("--rate", type=int, default=50, help="samples per second")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--label", help="name of the raw stacks / record files")
    parser.add_argument("--workdir", default=os.path.join(ROOT, ".bench", "profile"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--archive", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--record", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return worker(args) if args.worker else run(args)


if __name__ == "__main__":
    sys.exit(main())
