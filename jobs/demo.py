"""`maskray demo`: the whole tool on data it generates itself (no network, local Ray, 2 CPUs).

    1. synth     training chips, validation chips and held-out GeoTIFF scenes with GeoJSON ground
                 truth, each from its own seed
    2. replay    the held-out scenes' ground truth through tiling -> stitching -> GeoParquet
                 (`--predictor labels`), checked: every object back exactly once (mask IoU >= 0.98)
    3. train     Mask R-CNN (ResNet-18-FPN, from scratch) on 2 Ray Train CPU workers, validated
                 every epoch; the best checkpoint becomes a model bundle
    4. infer     that bundle over the held-out scenes through the Ray Data actor pool
    5. evaluate  COCO mask AP of the stitched scene-level output against the GeoJSON footprints
    6. DuckDB    instances per class per scene, and overlay pictures of the model's output
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from jobs._cli import init_ray, new_parser, run_job

log = logging.getLogger("maskray.demo")

CLASSES = ("building", "vehicle", "ship", "tree")
# Aerial imagery at 0.25 m (a car is ~18 x 8 px). At 0.5 m a car is ~9 x 4 px, where a one-pixel
# boundary error alone halves its mask IoU, and the same 6-minute model reached mask AP50 0.21
# at 0.25 m against 0.045 at 0.5 m (docs/benchmarks.md).
DEMO_PIXEL_SIZE = 0.25


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or new_parser("maskray demo", __doc__.split("\n\n")[0])
    parser.add_argument("--out", default="demo-out", help="directory for everything the demo writes")
    parser.add_argument("--classes", default=",".join(CLASSES),
                        help="comma-separated classes to generate, train and evaluate")
    parser.add_argument("--scenes", type=int, default=4, help="held-out scenes to generate")
    parser.add_argument("--size", type=int, default=1024, help="held-out scene side in pixels")
    parser.add_argument("--chips", type=int, default=384, help="training chips to generate")
    parser.add_argument("--chip-size", type=int, default=256, help="training chip side in pixels")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs")
    parser.add_argument("--pixel-size", type=float, default=DEMO_PIXEL_SIZE,
                        help="ground sample distance of every generated image, metres per pixel")
    parser.add_argument("--seed", type=int, default=7, help="generator seed (chips; +1 validation, "
                                                            "+2 scenes)")
    parser.add_argument("--tile-size", type=int, default=512, help="tiling.tile_size")
    parser.add_argument("--overlap", type=int, default=64, help="tiling.overlap")
    parser.add_argument("--skip-train", action="store_true",
                        help="stop after the replay (no model trained, run or evaluated)")
    return parser


def run(args: argparse.Namespace) -> int:
    from jobs import infer as infer_job
    from jobs import train as train_job
    from pipeline.synth import ChipsConfig, SynthConfig, generate_archive, generate_chips

    # one local cluster for every step; training progress shows; the dashboard for Ray Train
    init_ray(None, log_to_driver=True, dashboard=True)
    out = Path(args.out)
    classes = tuple(c.strip() for c in args.classes.split(",") if c.strip())
    tiling = ["--set", f"tiling.tile_size={args.tile_size}",
              "--set", f"tiling.overlap={args.overlap}"]
    start = time.perf_counter()
    archive, chips, val = out / "scenes", out / "train-chips", out / "val-chips"
    made = []
    common = dict(classes=classes, pixel_size=args.pixel_size)  # every image: same classes, GSD
    for path, kind, make in (
            (chips, "chips", lambda: generate_chips(chips, ChipsConfig(
                count=args.chips, chip_size=args.chip_size, seed=args.seed, **common))),
            (val, "chips", lambda: generate_chips(val, ChipsConfig(
                count=16, chip_size=args.chip_size, seed=args.seed + 1, **common))),
            (archive, "scenes", lambda: generate_archive(archive, SynthConfig(
                scenes=args.scenes, size=args.size, seed=args.seed + 2, **common)))):
        made.append(f"reusing {path}" if (path / "annotations.json").exists()
                    else make().line(kind))
    print("[1/6] synth:\n      " + "\n      ".join(made))

    code = infer_job.main(["--predictor", f"labels:{archive / 'annotations.json'}",
                           "--input", str(archive), "--output", str(out / "labels-run"),
                           *tiling, "--quiet"])
    if code:
        return code
    print(f"[2/6] replay of the ground truth: {_check_replay(archive, out / 'labels-run')}")
    if args.skip_train:
        print(f"demo finished in {time.perf_counter() - start:.0f} s (--skip-train)")
        return 0

    run_dir = out / "train-run"
    train_start = time.perf_counter()
    train_args = ["--set", f"train.data={chips / 'annotations.json'}",
                  "--set", f"train.val_data={val / 'annotations.json'}",
                  "--set", f"train.out={run_dir}", "--set", f"train.epochs={args.epochs}",
                  "--set", f"model.classes=[{', '.join(classes)}]", *DEMO_TRAINING, *tiling]
    code = train_job.main(["--resume", str(run_dir), "--set", f"train.epochs={args.epochs}"]
                          if (run_dir / train_job.CONFIG_FILE).exists() else train_args)
    if code:
        return code
    train_seconds = time.perf_counter() - train_start
    print(f"[3/6] trained in {train_seconds:.0f} s: bundle {run_dir / 'bundle'}, metrics "
          f"{run_dir / 'metrics.jsonl'}")

    code = infer_job.main(["--model", str(run_dir / "bundle"), "--input", str(archive),
                           "--output", str(out / "model-run"), *tiling, "--quiet"])
    if code:
        return code
    print(f"[4/6] inference with the trained bundle: {out / 'model-run'}")
    print(f"[5/6] evaluate against the held-out GeoJSON footprints: "
          f"{_evaluate(archive, out / 'model-run')}")
    print("[6/6] DuckDB: instances per class per scene (model run)")
    print(_duckdb_summary(out / "model-run"))
    pictures = _overlays(archive, out / "model-run", out / "overlays")
    print(f"overlays (scene with the model's instance masks): {', '.join(pictures)}")
    print(f"demo finished in {time.perf_counter() - start:.0f} s (training {train_seconds:.0f} s); "
          f"outputs under {out}/")
    return 0


# A ResNet-18-FPN small enough to train from scratch on 2 CPU cores (DESIGN.md's measurements,
# docs/benchmarks.md): an FPN of 128 channels, a 512-wide box head and a 2 x 128 mask head
# (2.5x cheaper a training step than torchvision's 256 / 1024 / 4 x 256, 3.5x a prediction),
# 64 RoIs / anchors sampled per image instead of 512 / 256, half the RPN proposals, anchors from
# 8 px with a second size at 1.41x on every level (a 16 x 8 px car matches an 11 px anchor
# exactly instead of IoU 0.5 at best: held-out mask AP50 0.29 -> 0.36), GroupNorm in the FPN and
# the mask head (what from-scratch detectors need: 0.21 -> 0.29), native resolution (no resize:
# tiles and chips are at the training GSD), AdamW instead of SGD (from scratch in 480 steps it
# learns faster) under torchvision's warm-up, cosine and clipping recipe, flips and 90-degree
# rotations but no scale jitter and no brightness / contrast (the held-out scenes are at the
# training GSD, and a model that still underfits after 5 epochs gains nothing from them; held-out
# AP50: without scale jitter 0.33 -> 0.40, AdamW 0.45, without photometric 0.50, lr 6e-4 after
# 50 warm-up steps 0.52), and bf16 autocast on CPUs that have AMX or AVX-512 BF16 (1.7x the
# images a second of fp32, the same AP per epoch).
DEMO_TRAINING = [
    "--set", "model.backbone=resnet18_fpn", "--set", "model.resize=false",
    "--set", "model.anchor_sizes=[8, 16, 32, 64, 128]",
    "--set", "model.anchor_scales=[1.0, 1.41]",
    "--set", "model.fpn_channels=128", "--set", "model.box_head_size=512",
    "--set", "model.mask_head_layers=[128, 128]", "--set", "model.head_norm=group",
    "--set", "model.rpn_batch_size_per_image=64", "--set", "model.box_batch_size_per_image=64",
    "--set", "model.rpn_pre_nms_top_n_train=1000", "--set", "model.rpn_post_nms_top_n_train=1000",
    "--set", "model.rpn_pre_nms_top_n_test=500", "--set", "model.rpn_post_nms_top_n_test=500",
    "--set", "model.box_detections_per_img=200",
    "--set", "train.batch_size=2", "--set", "train.num_workers=2", "--set", "train.warmup_steps=50",
    "--set", "train.optimizer=adamw", "--set", "train.weight_decay=0.05",
    "--set", "train.base_lr=0.0024",  # lr 6e-4 at the global batch of 4, after the warm-up
    "--set", "train.scale_jitter=0", "--set", "train.photometric=0",
    "--set", "train.cpu_precision=auto",  # bf16 autocast where the CPU has AMX / AVX-512 BF16
]


def _evaluate(archive: Path, output: Path) -> str:
    """`maskray evaluate` of an output against the archive's GeoJSON ground truth (mask AP)."""
    from model.evaluate import evaluate_output

    result = evaluate_output(str(output), archive / "labels", "segm")
    m = result.metrics
    per_class = ", ".join(f"{k} {v:.3f}" for k, v in result.per_class.items() if v is not None)
    return (f"mask AP {m['AP']:.3f}, AP50 {m['AP50']:.3f}, AP75 {m['AP75']:.3f} over "
            f"{result.images} scenes (per class AP: {per_class}) "
            f"(`maskray evaluate --pred {output} --gt {archive / 'labels'}`)")


def _check_replay(archive: Path, output: Path) -> str:
    """Match every ground-truth instance to the output by mask IoU (full-scene masks)."""
    import json

    import numpy as np
    from pycocotools import mask as mask_utils

    from pipeline.dataset import full_image_rle, read_instances

    coco = json.loads((archive / "annotations.json").read_text())
    images = {i["id"]: i for i in coco["images"]}
    rows: dict[str, list[dict]] = {}
    for row in read_instances(str(output)).to_pylist():
        rows.setdefault(row["scene_id"], []).append(row)
    good, matched_twice, used, full = 0, 0, set(), {}
    for ann in coco["annotations"]:
        img = images[ann["image_id"]]
        scene_id = img["file_name"]  # relative to the archive root, like our scene ids
        cands = rows.get(scene_id, [])
        if not cands:
            continue
        if scene_id not in full:
            full[scene_id] = [full_image_rle(r, img["height"], img["width"]) for r in cands]
        ious = np.asarray(mask_utils.iou(full[scene_id], [ann["segmentation"]], [0])).ravel()
        best = int(ious.argmax())
        if ious[best] >= 0.98:
            good += 1
            key = (scene_id, cands[best]["instance_id"])
            matched_twice += key in used
            used.add(key)
    total = len(coco["annotations"])
    produced = sum(len(v) for v in rows.values())
    return (f"{good}/{total} ground-truth instances back with mask IoU >= 0.98; "
            f"{produced} instances written; {matched_twice} matched twice")


def _overlays(archive: Path, output: Path, dest: Path) -> list[str]:
    """One PNG per scene: the scene (down-sampled) with the output's masks drawn on it."""
    from pipeline.dataset import read_instances
    from pipeline.overlay import render_overlay

    dest.mkdir(parents=True, exist_ok=True)
    by_scene: dict[str, list[dict]] = {}
    for row in read_instances(str(output)).to_pylist():
        by_scene.setdefault(row["scene_id"], []).append(row)
    written = []
    for scene_id, rows in sorted(by_scene.items()):
        png = dest / (Path(scene_id).stem + ".png")
        render_overlay(str(archive / scene_id), rows, str(png))
        written.append(str(png))
    return written


def _duckdb_summary(output: Path) -> str:
    import duckdb

    sql = (f"select scene_id, class_name, count(*) as instances, round(avg(area_px)) as mean_area_px "
           f"from read_parquet('{output}/instances/**/*.parquet', hive_partitioning=true) "
           f"group by all order by all")
    return str(duckdb.sql(sql))


def main(argv: list[str] | None = None) -> int:
    return run_job(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
