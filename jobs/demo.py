"""`maskray demo`: the whole pipeline on an archive it generates itself (no network, local Ray).

    1. synth   a georeferenced archive (GeoTIFF scenes, COCO + GeoJSON ground truth)
    2. infer   --predictor labels: the ground truth replayed through tiling -> stitching ->
               GeoParquet, then checked: every object back exactly once, mask IoU >= 0.98,
               and `maskray evaluate` against the GeoJSON footprints
    3. infer   --model: a random-weight Mask R-CNN bundle through the actor pool (until the
               training issue lands this shows the model path and its throughput, not accuracy)
    4. DuckDB  instances per class per scene, straight from the Parquet files
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from jobs._cli import new_parser, run_job

log = logging.getLogger("maskray.demo")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or new_parser("maskray demo", __doc__.split("\n\n")[0])
    parser.add_argument("--out", default="demo-out", help="directory for everything the demo writes")
    parser.add_argument("--scenes", type=int, default=3, help="synthetic scenes to generate")
    parser.add_argument("--size", type=int, default=1536, help="scene side in pixels")
    parser.add_argument("--seed", type=int, default=7, help="generator seed")
    parser.add_argument("--tile-size", type=int, default=512, help="tiling.tile_size")
    parser.add_argument("--overlap", type=int, default=64, help="tiling.overlap")
    parser.add_argument("--skip-model", action="store_true", help="skip step 3 (the model run)")
    return parser


def run(args: argparse.Namespace) -> int:
    from jobs import infer as infer_job
    from jobs import model as model_job
    from pipeline.synth import SynthConfig, generate_archive

    out = Path(args.out)
    tiling = ["--set", f"tiling.tile_size={args.tile_size}", "--set", f"tiling.overlap={args.overlap}"]
    archive = out / "archive"
    start = time.perf_counter()
    if not (archive / "annotations.json").exists():
        summary = generate_archive(archive, SynthConfig(scenes=args.scenes, size=args.size,
                                                        seed=args.seed))
        print(f"[1/4] synth: {summary}")
    else:
        print(f"[1/4] synth: reusing {archive}")
    code = infer_job.main(["--predictor", f"labels:{archive / 'annotations.json'}",
                           "--input", str(archive), "--output", str(out / "labels-run"),
                           *tiling, "--quiet"])
    if code:
        return code
    print(f"[2/4] labels replay check: {_check_replay(archive, out / 'labels-run')}")
    print(f"      evaluate against the GeoJSON footprints: {_evaluate(archive, out / 'labels-run')}")
    if not args.skip_model:
        bundle = out / "random-resnet18"
        if not bundle.exists():
            model_job.main(["init", "--out", str(bundle), "--quiet", "--seed", "0",
                            "--set", "model.backbone=resnet18_fpn",
                            "--set", "model.classes=[building, vehicle, ship, tree]",
                            "--set", f"model.min_size={args.tile_size}",
                            "--set", f"model.max_size={args.tile_size}", *tiling])
        first = sorted((archive / "scenes").glob("*.tif"))[:1]
        code = infer_job.main(["--model", str(bundle), "--input", str(first[0]),
                               "--output", str(out / "model-run"), *tiling, "--quiet"])
        print(f"[3/4] model run (random weights: a throughput check, not accuracy) exit {code}")
    print("[4/4] DuckDB: instances per class per scene (labels run)")
    print(_duckdb_summary(out / "labels-run"))
    pictures = _overlays(archive, out / "labels-run", out / "overlays")
    print(f"overlays (scene with its instance masks): {', '.join(pictures)}")
    print(f"demo finished in {time.perf_counter() - start:.0f} s; outputs under {out}/")
    return 0


def _evaluate(archive: Path, output: Path) -> str:
    """`maskray evaluate` of an output against the archive's GeoJSON ground truth (mask AP)."""
    from model.evaluate import evaluate_output

    result = evaluate_output(str(output), archive / "labels", "segm")
    m = result.metrics
    return (f"mask AP {m['AP']:.3f}, AP50 {m['AP50']:.3f}, AP75 {m['AP75']:.3f} over "
            f"{result.images} scenes (`maskray evaluate --pred {output} --gt {archive / 'labels'}`)")


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
