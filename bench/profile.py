"""Profile: where the inference actor's and the driver's time goes, sampled by py-spy.

One worker process (this file with `--worker`) runs, on one synthetic archive and one bundle,
exactly the code the pipeline runs, in the pipeline's order but without Ray, so that every
sample lands in our code or in torch rather than in Ray's scheduling:
  read:   `pipeline.tiles.plan_scene` + `read_tiles` (what the read tasks run), batches of
          `--batch-size` tiles;
  actor:  `pipeline.predictor.TilePredictor` (as the actor builds it, `--threads` torch threads,
          convolutions NCHW or NHWC = `infer.channels_last`, `--layout`) called on every batch:
          forward + box-local RLE + placement in the scene frame;
  driver: `ShardAssembler` + `ShardWriter` on the actor's rows (stitching, instance rows,
          GeoParquet, commit), as `pipeline.infer` runs them.
py-spy (`pip install py-spy`) samples the worker at `--rate` Hz (`py-spy record --format raw
--idle`). Each sample is put in the stage of the deepest frame that names one (STAGES below:
model stages by torchvision module, ours by function), so the table reads "share of the wall
time spent in this stage and what it calls". The worker also prints its own perf_counter times
per phase, to check the sample counts against. `--layout both` (default) profiles the actor
before and after `infer.channels_last` and prints the stages side by side (ms per tile and
share). The raw collapsed stacks are kept (`--workdir`/LABEL-nchw.txt and LABEL-nhwc.txt;
flamegraph.pl or speedscope read them).

    pip install -e '.[bench]'                            # py-spy (and sahi)
    python bench/profile.py                              # 32 tiles of 512 px, resnet18_fpn
    python bench/profile.py --bundle DEMO_OUT/train-run/bundle --scenes 1    # 16 tiles
"""

from __future__ import annotations

import argparse
import collections
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
    ("set-up: model load", "pipeline/infer.py", "model_source"),
    ("driver: shard writer", "pipeline/infer.py", ""),
    ("set-up: model load", "model/bundle.py", ""),
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

    from bench import pipeline as bench
    bundle = load_bundle(args.bundle)
    times: dict[str, float] = {}
    start = time.perf_counter()
    mean, _ = bundle.model.normalization()  # padding is filled with the band means, as in infer
    batches, _, _ = bench.read_archive(Path(args.archive), bundle.tile_size, bundle.overlap,
                                       tuple(bundle.model.bands), tuple(mean), args.batch_size)
    times["read"] = time.perf_counter() - start

    start = time.perf_counter()
    predictor = TilePredictor(args.bundle, device="cpu", batch_size=args.batch_size,
                              threads=args.threads, channels_last=args.channels_last)
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
    if name in ("", "<module>"):  # a module being imported
        return "set-up: imports"
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
        stages[stage or "other (Python start-up, torch internals outside the stages)"] += n
        leaf = frames[-1]
        name, _, where = leaf.partition(" (")
        leaves[f"{name} ({where.rsplit(':', 1)[0].split('site-packages/')[-1]})"] += n
    return stages, leaves, total


def run(args: argparse.Namespace) -> int:
    from bench import pipeline as bench
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
    layouts = {"nchw": False, "nhwc": True}
    chosen = list(layouts) if args.layout == "both" else [args.layout]
    profiles = {}
    for layout in chosen:  # one worker per layout, one after the other
        name = f"{label}-{layout}"
        raw, record = workdir / f"{name}.txt", workdir / f"{name}.json"
        record.unlink(missing_ok=True)
        cmd = [py_spy, "record", "--format", "raw", "--rate", str(args.rate), "--idle", "-o",
               str(raw), "--", sys.executable, os.path.abspath(__file__), "--worker", "--bundle",
               str(bundle), "--archive", str(archive), "--output", str(workdir / f"{name}-out"),
               "--record", str(record), "--batch-size", str(args.batch_size),
               "--threads", str(args.threads)] + (["--channels-last"] if layouts[layout] else [])
        start = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        if not record.exists():
            raise SystemExit("the profiled worker failed (its traceback is above)")
        done = json.loads(record.read_text())
        stages, leaves, total = stage_table(raw)
        profiles[layout] = (done, stages, total)
        print(f"\n{name}: {done['tiles']} tiles, {done['detections']} detections -> "
              f"{done['instances']} instances; {done['threads']} torch threads; wall {wall:.1f} s; "
              f"{total} samples at {args.rate} Hz; raw stacks: {raw}")
        print("phases (perf_counter): "
              + ", ".join(f"{k} {v:.2f} s" for k, v in done["times"].items()))
        print(f"top {args.top} self-time leaves:")
        for leaf, n in leaves.most_common(args.top):
            print(f"  {n / total:6.1%}  {leaf}")
    # One table: ms per tile of every stage under each layout (samples / rate / tiles).
    order = [s for s, _ in profiles[chosen[0]][1].most_common()]
    order += [s for lay in chosen[1:] for s in profiles[lay][1] if s not in order]
    head = " | ".join(f"{lay} ms/tile | {lay} share" for lay in chosen)
    print(f"\n| stage | {head} |" + (" nchw / nhwc |" if len(chosen) == 2 else ""))
    print("| --- |" + " --- | --- |" * len(chosen) + (" --- |" if len(chosen) == 2 else ""))
    for stage in order:
        cells, ms = [], []
        for lay in chosen:
            done, stages, total = profiles[lay]
            ms.append(1000 * stages.get(stage, 0) / args.rate / done["tiles"])
            cells.append(f"{ms[-1]:.1f} | {stages.get(stage, 0) / total:.1%}")
        ratio = (f" {ms[0] / ms[1]:.2f}x |" if len(chosen) == 2 and ms[1] else
                 (" - |" if len(chosen) == 2 else ""))
        print(f"| {stage} | {' | '.join(cells)} |{ratio}")
    for lay in chosen:
        done = profiles[lay][0]
        print(f"{lay}: actor {1000 * done['times']['actor'] / done['tiles']:.0f} ms/tile, driver "
              f"{1000 * done['times']['driver'] / done['tiles']:.0f} ms/tile (perf_counter)")
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
    parser.add_argument("--layout", choices=["nchw", "nhwc", "both"], default="both",
                        help="the actor's convolution layout (infer.channels_last off / on); "
                             "both: one profile each, side by side")
    parser.add_argument("--channels-last", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=os.path.join(ROOT, ".bench", "profile"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--archive", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--record", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return worker(args) if args.worker else run(args)


if __name__ == "__main__":
    sys.exit(main())
