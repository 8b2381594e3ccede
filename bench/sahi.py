"""Benchmark: `maskray infer` against SAHI's sliced prediction and a naive Ray Data baseline.

Same model bundle (default: the demo's trained bundle, `--bundle`), same large synthetic scene
with ground truth (`maskray synth`, one scene of `--size` px, cached in `--workdir`), same tile
size and overlap (the bundle's), same score threshold (the bundle's `box_score_thresh`), and
nothing downloaded. `--contenders` picks which run (default all three). Each runs in a fresh
process, and the RSS of its whole process tree is sampled every `--rss-interval` s:
  maskray: `python -m jobs.infer --model BUNDLE --input ARCHIVE --output FRESH`, on its own local
      Ray cluster, with the defaults a user gets (one actor reserving one CPU, the other left to
      the read tasks; torch threads auto = every CPU, since the reads barely use theirs), and
      again with `--set infer.threads=1` (`--maskray-sets`). The tree includes Ray's daemons
      and workers.
  sahi (`--merges`, default `GREEDYNMM:IOS:0.5`, SAHI's default, and `NMS:IOU:0.5`): this file
      with `--sahi-worker`. It reads the scene whole (SAHI slices an in-memory image), wraps the
      bundle's model (`build_model(paste_masks=True)`, torch's default threads) in
      `TorchVisionDetectionModel`, and calls `get_sliced_prediction` with slices of the tile size,
      overlap ratio overlap / tile size, and `perform_standard_pred=False`. SAHI's default adds
      one more forward over the whole scene, which at 4 096 px is neither sliced inference nor
      affordable. `force_postprocess_type=True` is set because SAHI would otherwise swap its merge
      for NMS below a 0.1 threshold. The predictions' polygons become COCO RLEs.
      `--sahi-precisions fp32,bf16` runs SAHI a second time inside `torch.autocast("cpu",
      torch.bfloat16)`, to compare with maskray's `--maskray-sets infer.cpu_precision=bf16`: the
      bundle's model keeps its box deltas in float32 either way (model/precision.py).
  naive ray example: this file with `--naive-worker`, written the way Ray's "Object Detection
      Batch Inference with PyTorch" example is. It cuts the scene into 8-bit RGB PNG tiles (the
      maskray grid, `pipeline.tiling.grid_windows` with the bundle's tile size and overlap; offsets
      in the file names), as a user would with gdal_retile, then on its own local Ray cluster (all
      CPUs, no dashboard) runs `read_images(TILES, include_paths=True)` -> `map_batches` of a
      callable class (one actor, `num_cpus=1`, batch size 4) whose `__call__` feeds the batch to
      the bundle's model (`build_model(paste_masks=True)`: torchvision's full-tile masks) as a list
      of raw-unit float tensors (under `torch.inference_mode()`, as the others; the example has
      none) and returns per tile the path, boxes, labels, scores and masks thresholded
      (`> mask_threshold`) to (N, tile, tile) uint8 -> `take_all()`: every tile's output in the
      driver at once.
      Torch threads are torch's default in a Ray actor: Ray sets OMP_NUM_THREADS to the actor's
      `num_cpus`, so 1. The driver then shifts each detection into the scene frame as a scene-sized
      COCO RLE (built from the tile's runs: the RLE pycocotools makes of the mask pasted into a
      zero scene array, without that array) and keeps every one: no merge, so objects on the
      overlaps are found once per tile that sees them. The worker reports the cut, ray.init,
      read + predict + take_all and encode seconds, and the megabytes of masks taken.
All are scored by the same `model.evaluate.coco_metrics` (scene level, every detection counts)
against the scene's COCO ground truth. Wall time is the process's, start to exit, model load
included (and, for the naive run, the tile cut). Ratios are contender / first maskray run: above
1 means maskray is faster or smaller.

SAHI 0.12.8 workarounds (both in `_SafeDetectionModel`):
- a detection whose thresholded mask yields no polygon of at least 3 points raises
  `ValueError("Invalid segmentation mask.")` and aborts the whole call, so such detections are
  dropped first;
- slices are scaled to [0, 1] when their maximum is above 1, so the model's normalisation is
  divided by 255 to see the same numbers as in maskray.

    pip install -e '.[bench]'        # sahi==0.12.8 (and py-spy for bench/profile.py)
    python bench/sahi.py --bundle DEMO_OUT/train-run/bundle    # ~20 min on 2 cores at 4 096 px (all contenders)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

_HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(_HERE)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

DEFAULT_MERGES = ("GREEDYNMM:IOS:0.5", "NMS:IOU:0.5")
CONTENDERS = ("maskray", "sahi", "naive")


def ensure_scene(workdir: Path, size: int, seed: int) -> Path:
    from pipeline.synth import SynthConfig, generate_archive

    path = workdir / f"scene-{size}-{seed}"
    if not (path / "synth.json").exists():
        shutil.rmtree(path, ignore_errors=True)
        start = time.perf_counter()
        summary = generate_archive(path, SynthConfig(scenes=1, size=size, seed=seed))
        print(f"setup: {summary.line()} ({time.perf_counter() - start:.0f} s)", flush=True)
    return path


# ----------------------------------------------------------------------------- SAHI worker


def sahi_worker(args: argparse.Namespace) -> int:
    """Run SAHI once over the scene; write COCO results and SAHI's own durations as JSON."""
    import numpy as np
    import rasterio
    import torch
    from pycocotools import mask as mask_utils
    from sahi.models.torchvision import TorchVisionDetectionModel
    from sahi.predict import get_sliced_prediction
    from sahi.utils.cv import get_coco_segmentation_from_bool_mask

    from model.bundle import load_bundle

    class _SafeDetectionModel(TorchVisionDetectionModel):
        def _create_object_prediction_list_from_original_predictions(
                self, shift_amount_list=[[0, 0]], full_shape_list=None):  # noqa: B006 - SAHI's
            cleaned = []
            for p in self._original_predictions:
                if p.get("masks") is not None and len(p["scores"]):
                    keep = p["scores"] > self.confidence_threshold
                    masks = (p["masks"] > self.mask_threshold).cpu().numpy()
                    for i in torch.nonzero(keep).flatten().tolist():
                        if not get_coco_segmentation_from_bool_mask(masks[i]):
                            keep[i] = False
                    p = {k: v[keep] for k, v in p.items()}
                cleaned.append(p)
            self._original_predictions = cleaned
            super()._create_object_prediction_list_from_original_predictions(
                shift_amount_list, full_shape_list)

    start = time.perf_counter()
    bundle = load_bundle(args.bundle)
    model = bundle.build_model(device="cpu", paste_masks=True)
    model.transform.image_mean = [m / 255 for m in model.transform.image_mean]
    model.transform.image_std = [s / 255 for s in model.transform.image_std]
    names = {str(i + 1): name for i, name in enumerate(bundle.model.classes)}
    detector = _SafeDetectionModel(model=model, device="cpu",
                                   confidence_threshold=bundle.model.box_score_thresh,
                                   mask_threshold=bundle.model.mask_threshold,
                                   category_mapping=names, load_at_init=True, image_size=None)
    with rasterio.open(args.scene) as src:
        image = np.moveaxis(src.read(list(bundle.model.bands)), 0, -1)  # (H, W, 3) RGB
    kind, metric, threshold = args.merge.split(":")
    tile, overlap = bundle.tile_size, bundle.overlap
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                 enabled=args.precision == "bf16"):
        result = get_sliced_prediction(
            image, detector, slice_height=tile, slice_width=tile,
            overlap_height_ratio=overlap / tile, overlap_width_ratio=overlap / tile,
            perform_standard_pred=False, postprocess_type=kind,
            postprocess_match_metric=metric, postprocess_match_threshold=float(threshold),
            postprocess_class_agnostic=False, force_postprocess_type=True, verbose=0)
    height, width = image.shape[:2]
    results = []
    for p in result.object_prediction_list:
        polygons = [poly for poly in p.mask.segmentation if len(poly) >= 6]
        if not polygons:
            continue
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
        rle["counts"] = rle["counts"].decode("ascii")
        results.append({"image_id": args.image_id, "category_id": int(p.category.id),
                        "score": float(p.score.value), "segmentation": rle})
    Path(args.results).write_text(json.dumps({
        "results": results, "durations": result.durations_in_seconds,
        "seconds": time.perf_counter() - start}))
    return 0


# ----------------------------------------------------------------------------- naive Ray worker

NAIVE_BATCH_SIZE = 4  # the example's batch_size
_TILE_NAME = re.compile(r"tile_x(\d+)_y(\d+)\.png$")


class _NaiveModel:
    """The example's callable class: the model is built once per actor in `__init__`; `__call__`
    feeds the batch's images to it as a list and returns its outputs, masks full tile size."""

    def __init__(self, bundle_path: str):
        from model.bundle import load_bundle

        bundle = load_bundle(bundle_path)
        self.model = bundle.build_model(device="cpu", paste_masks=True)
        self.mask_threshold = bundle.model.mask_threshold

    def __call__(self, batch: dict) -> dict:
        import numpy as np
        import torch

        # Raw 0-255 values, as maskray feeds them: the transform normalises in raw units.
        inputs = [torch.from_numpy(img).permute(2, 0, 1).float() for img in batch["image"]]
        with torch.inference_mode():  # as the other contenders (the example has no such guard)
            outputs = self.model(inputs)
        return {
            "path": batch["path"],
            "boxes": [o["boxes"].numpy() for o in outputs],
            "labels": [o["labels"].numpy() for o in outputs],
            "scores": [o["scores"].numpy() for o in outputs],
            # (N, 1, T, T) probabilities -> (N, T, T) 0/1, `>` as in pipeline.masks and SAHI.
            "masks": [(o["masks"][:, 0] > self.mask_threshold).numpy().astype(np.uint8)
                      for o in outputs],
            "torch_threads": np.full(len(outputs), torch.get_num_threads()),
        }


def naive_worker(args: argparse.Namespace) -> int:
    """Cut the scene into PNG tiles, run Ray's batch-inference example over them, and write every
    detection as a scene-frame COCO result (no merge across seams) with the stage times as JSON."""
    import logging

    import numpy as np
    import rasterio
    import ray
    from PIL import Image
    from rasterio.windows import Window

    from model.bundle import load_bundle
    from pipeline import rle
    from pipeline.tiling import grid_windows

    start = time.perf_counter()
    bundle = load_bundle(args.bundle, verify=False)  # the actor's build_model verifies
    bands, tile = list(bundle.model.bands), bundle.tile_size
    tiles_dir = Path(args.tiles)
    shutil.rmtree(tiles_dir, ignore_errors=True)
    tiles_dir.mkdir(parents=True)
    # What gdal_retile would do: one 8-bit RGB PNG per window, its offsets in the file name.
    with rasterio.open(args.scene) as src:
        height, width = src.height, src.width
        if len(bands) != 3 or any(src.dtypes[b - 1] != "uint8" for b in bands):
            raise SystemExit("the naive contender cuts PNG tiles: it needs 3 uint8 bands")
        for t in grid_windows(width, height, tile, bundle.overlap):
            w, h = min(t.x1, width) - t.x0, min(t.y1, height) - t.y0
            pixels = np.moveaxis(src.read(bands, window=Window(t.x0, t.y0, w, h)), 0, -1)
            # A scene side shorter than a tile: pad as maskray's reader does.
            pixels = np.pad(pixels, ((0, tile - h), (0, tile - w), (0, 0)))
            Image.fromarray(pixels).save(tiles_dir / f"tile_x{t.x0}_y{t.y0}.png")
    cut_s = time.perf_counter() - start

    started = time.perf_counter()
    # Same local cluster as `maskray infer` gets (all CPUs, no dashboard); quiet Ray Data logs.
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
             configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    init_s = time.perf_counter() - started

    started = time.perf_counter()
    ds = ray.data.read_images(str(tiles_dir), include_paths=True)
    # One actor: the example's `concurrency=1`, spelled as Ray >= 2.51 wants it.
    ds = ds.map_batches(_NaiveModel, fn_constructor_args=(args.bundle,),
                        compute=ray.data.ActorPoolStrategy(size=1),
                        batch_size=NAIVE_BATCH_SIZE, num_cpus=1)
    rows = ds.take_all()  # every tile's outputs, full-tile masks included, in the driver
    predict_s = time.perf_counter() - started
    masks_mib = sum(r["masks"].nbytes for r in rows) / 1024 ** 2

    started = time.perf_counter()
    results, empty = [], 0
    for row in rows:
        x0, y0 = (int(v) for v in _TILE_NAME.search(row["path"]).groups())
        for label, score, mask in zip(row["labels"], row["scores"], row["masks"]):
            # The same RLE as pycocotools' encode of the mask pasted at (x0, y0) into a zero
            # scene-sized Fortran array, built from the tile's runs (O(tile), not O(scene)).
            scene_rle = rle.to_full_image(rle.encode(mask), x0, y0, height, width)
            scene_rle["counts"] = scene_rle["counts"].decode("ascii")
            empty += not mask.any()
            results.append({"image_id": args.image_id, "category_id": int(label),
                            "score": float(score), "segmentation": scene_rle})
    encode_s = time.perf_counter() - started
    Path(args.results).write_text(json.dumps({
        "results": results, "seconds": time.perf_counter() - start, "cut_s": cut_s,
        "init_s": init_s, "predict_s": predict_s, "encode_s": encode_s,
        "tiles": len(rows), "empty_masks": empty, "masks_mib": masks_mib,
        "torch_threads": sorted({int(r["torch_threads"]) for r in rows})}))
    return 0


# ----------------------------------------------------------------------------- driver


def _score(gt: dict, results: list[dict]) -> dict:
    from model.evaluate import coco_metrics

    metrics = coco_metrics(gt, results, "segm").metrics
    return {"AP": metrics["AP"], "AP50": metrics["AP50"], "detections": len(results)}


def run(args: argparse.Namespace) -> int:
    from model.bundle import load_bundle
    from model.evaluate import evaluate_output

    from bench import pipeline as bench
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    archive = ensure_scene(workdir, args.size, args.seed)
    gt = json.loads((archive / "annotations.json").read_text())
    scene = archive / gt["images"][0]["file_name"]
    bundle = load_bundle(args.bundle)
    # SAHI's and the naive run's category ids are the model's labels; ground truth ids may
    # differ: map by name.
    gt_id = {c["name"]: c["id"] for c in gt["categories"]}
    label_to_gt = {i + 1: gt_id[name] for i, name in enumerate(bundle.model.classes)
                   if name in gt_id}
    print(f"scene {scene.name}: {args.size} px, {len(gt['annotations'])} objects; bundle "
          f"{bundle.model_id} ({bundle.model.backbone}), tile {bundle.tile_size} overlap "
          f"{bundle.overlap}, score >= {bundle.model.box_score_thresh}; {os.cpu_count()} CPUs",
          flush=True)

    def worker(name: str, *flags: str) -> tuple[dict, dict, dict]:
        """Run this file in one of its worker modes, measured; (RSS record, its JSON, score)."""
        results_path = workdir / f"{name}.json"
        measured = bench.measure_tree_rss(
            [sys.executable, os.path.abspath(__file__), *flags, "--bundle", args.bundle,
             "--scene", str(scene), "--image-id", str(gt["images"][0]["id"]),
             "--results", str(results_path)],
            workdir / f"{name}.log", args.rss_interval, args.timeout)
        if measured["returncode"] != 0:
            raise SystemExit(f"{flags[0]} failed: see {workdir / f'{name}.log'}")
        found = json.loads(results_path.read_text())
        results = [{**r, "category_id": label_to_gt[r["category_id"]]}
                   for r in found["results"] if r["category_id"] in label_to_gt]
        return measured, found, _score(gt, results)

    rows = []
    for rep in range(args.reps):
        for k, setting in enumerate(args.maskray_sets if "maskray" in args.contenders else ()):
            out = workdir / f"maskray-out-{rep}-{k}"
            shutil.rmtree(out, ignore_errors=True)
            extra = ["--set", setting] if setting else []
            measured = bench.measure_tree_rss(
                [sys.executable, "-m", "jobs.infer", "--model", args.bundle, "--input",
                 str(archive), "--output", str(out), "--quiet", *extra],
                workdir / f"maskray-{rep}-{k}.log", args.rss_interval, args.timeout)
            if measured["returncode"] != 0:
                raise SystemExit(f"maskray infer failed: see {workdir / f'maskray-{rep}-{k}.log'}")
            metrics = evaluate_output(str(out), archive / "annotations.json").metrics
            rows.append((f"maskray infer {setting}".strip(), rep, measured,
                         {"AP": metrics["AP"], "AP50": metrics["AP50"],
                          "detections": len(_instances(out))}))
            _print_row(rows[-1])
        for merge in args.merges if "sahi" in args.contenders else ():
            for precision in args.sahi_precisions:
                suffix = "" if precision == "fp32" else f" {precision}"
                measured, found, score = worker(
                    f"sahi-{merge.replace(':', '-')}-{precision}-{rep}", "--sahi-worker",
                    "--merge", merge, "--precision", precision)
                rows.append((f"sahi {merge}{suffix}", rep, measured, score))
                _print_row(rows[-1])
        if "naive" in args.contenders:
            measured, found, score = worker(f"naive-{rep}", "--naive-worker", "--tiles",
                                            str(workdir / "naive-tiles"))
            rows.append(("naive ray example", rep, measured, score))
            _print_row(rows[-1])
            print(f"    cut {found['cut_s']:.1f} s, ray.init {found['init_s']:.1f} s, "
                  f"read + predict + take_all {found['predict_s']:.1f} s, "
                  f"encode {found['encode_s']:.1f} s; "
                  f"{found['tiles']} tiles, {found['masks_mib']:.0f} MiB of masks taken, "
                  f"{found['empty_masks']} empty masks, torch threads {found['torch_threads']}",
                  flush=True)
    _print_table(rows)
    return 0


def _instances(out: Path):
    from pipeline.dataset import read_instances

    return read_instances(str(out), columns=["scene_id"]).column("scene_id").to_pylist()


def _print_row(row) -> None:
    name, rep, m, s = row
    print(f"  rep {rep} {name:<30} wall {m['wall_s']:7.1f} s  peak RSS {m['peak_mib']:7.0f} MiB "
          f"(PSS {m['peak_pss_mib']:6.0f})  AP {s['AP']:.4f}  AP50 {s['AP50']:.4f}  "
          f"detections {s['detections']}", flush=True)


def _print_table(rows) -> None:
    import statistics

    names = list(dict.fromkeys(r[0] for r in rows))
    med = {}
    for name in names:
        mine = [r for r in rows if r[0] == name]
        med[name] = {
            "wall": statistics.median(r[2]["wall_s"] for r in mine),
            "rss": statistics.median(r[2]["peak_mib"] for r in mine),
            "pss": statistics.median(r[2]["peak_pss_mib"] for r in mine),
            "AP": mine[0][3]["AP"], "AP50": mine[0][3]["AP50"],
            "detections": mine[0][3]["detections"]}
    # Ratios against the first maskray run, when there is one.
    ours = next((med[name] for name in names if name.startswith("maskray")), None)
    print("\n| method | wall s | peak RSS MiB | peak PSS MiB | mask AP | mask AP50 | detections "
          "| wall vs maskray | RSS vs maskray |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in names:
        m = med[name]
        ratios = (f"{m['wall'] / ours['wall']:.2f}x | {m['rss'] / ours['rss']:.2f}x" if ours
                  else "- | -")
        print(f"| {name} | {m['wall']:.1f} | {m['rss']:.0f} | {m['pss']:.0f} | {m['AP']:.4f} | "
              f"{m['AP50']:.4f} | {m['detections']} | {ratios} |")


def _contenders(text: str) -> list[str]:
    names = [n for n in text.split(",") if n]
    unknown = sorted(set(names) - set(CONTENDERS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"contenders are {', '.join(CONTENDERS)}, got {text!r}")
    return names


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--bundle", required=True, help="model bundle (e.g. the demo's)")
    parser.add_argument("--size", type=int, default=4096, help="scene side, px")
    parser.add_argument("--seed", type=int, default=5, help="synthetic scene seed")
    parser.add_argument("--merges", type=lambda s: s.split(","), default=list(DEFAULT_MERGES),
                        help="SAHI postprocess settings, TYPE:METRIC:THRESHOLD, comma-separated")
    parser.add_argument("--sahi-precisions", type=lambda s: s.split(","), default=["fp32"],
                        help="SAHI runs per merge: fp32 and/or bf16 (under CPU bf16 autocast)")
    parser.add_argument("--maskray-sets", type=lambda s: s.split(","),
                        default=["", "infer.threads=1"],
                        help="maskray runs: one per entry, each with that `--set` (empty: defaults)")
    parser.add_argument("--contenders", type=_contenders, default=list(CONTENDERS),
                        help=f"which to run, comma-separated, of {','.join(CONTENDERS)}")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--workdir", default=os.path.join(ROOT, ".bench", "sahi"))
    parser.add_argument("--rss-interval", type=float, default=0.2)
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--sahi-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--naive-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tiles", help=argparse.SUPPRESS)
    parser.add_argument("--scene", help=argparse.SUPPRESS)
    parser.add_argument("--merge", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--image-id", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--results", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if set(args.sahi_precisions) - {"fp32", "bf16"} or not args.sahi_precisions:
        parser.error(f"--sahi-precisions takes fp32 and/or bf16, got {args.sahi_precisions}")
    if args.sahi_worker:
        return sahi_worker(args)
    return naive_worker(args) if args.naive_worker else run(args)


if __name__ == "__main__":
    sys.exit(main())
