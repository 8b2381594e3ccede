"""Ground truth: COCO metrics and precision / recall curves of an output (`Evaluation`)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

KIND = {"segm": "mask", "bbox": "box"}


# ---- ground truth: COCO metrics and precision / recall curves ---------------------------------

@dataclass
class Evaluation:
    """One COCOeval of the output. metrics: as `maskray evaluate` reports them; recall: the
    (R,) recall grid; iou: the (T,) IoU thresholds; precision: class name -> (T, R) precision at
    each recall (all areas, the last maxDets; -1 where undefined)."""

    metrics: Any
    recall: np.ndarray
    iou: np.ndarray
    precision: dict[str, np.ndarray]


def evaluate_with_curves(output: str, gt: str, model_id: str,
                         iou_types: Sequence[str] = ("segm",)) -> list[Evaluation]:
    """`model.evaluate.evaluate_output` for each IoU type, keeping COCOeval's precision arrays
    for the curves. Ground truth and results are built once, through the same functions, so the
    numbers equal `maskray evaluate`'s (tests check it)."""
    from model.evaluate import (load_ground_truth, match_classes, match_scenes,
                                output_results)
    from pipeline.dataset import read_instances, read_scenes
    from pipeline.errors import MaskrayError

    scenes = read_scenes(output, model_id)
    instances = read_instances(output, model_id)
    truth = load_ground_truth(gt, scenes)
    image_of, notes = match_scenes(truth["images"], scenes.column("scene_id").to_pylist())
    if not image_of:
        raise MaskrayError(f"no scene of {output} is in the ground truth {gt} "
                           "(file names must be relative to the input root)")
    category_of, class_notes = match_classes(truth.get("categories", []),
                                             set(instances.column("class_name").to_pylist()))
    results = output_results(instances, scenes, image_of, category_of)
    image_ids = sorted(set(image_of.values()))
    out = []
    for iou_type in iou_types:
        ev = _coco_eval(truth, results, iou_type, image_ids)
        ev.metrics.notes = notes + class_notes
        out.append(ev)
    return out


def _coco_eval(truth: dict, results: list[dict], iou_type: str, image_ids: list) -> Evaluation:
    """`model.evaluate.coco_metrics`, step for step, keeping the evaluator's precision array."""
    import contextlib
    from collections import Counter

    from pycocotools.coco import COCO
    from model.cocoeval import SparseCOCOeval

    # The private helpers are the ones coco_metrics uses: same defaults, same numbers.
    from model.evaluate import METRICS, CocoMetrics, _result_for, _with_defaults, summarize

    results = [_result_for(r, iou_type) for r in results]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt = COCO()
        coco_gt.dataset = _with_defaults(truth)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(list(results)) if results else COCO()
        evaluator = SparseCOCOeval(coco_gt, coco_dt, iou_type)
        evaluator.params.imgIds = list(image_ids)
        max_dets = max([100, *Counter(r["image_id"] for r in results).values()])
        evaluator.params.maxDets = [1, 10, int(max_dets)]
        evaluator.evaluate()
        evaluator.accumulate()
    stats, summary = summarize(evaluator)
    names = {c["id"]: c["name"] for c in coco_gt.dataset["categories"]}
    precision = evaluator.eval["precision"]  # (iou T, recall R, class K, area A, max dets M)
    per_class, curves = {}, {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        p = precision[:, :, k, 0, -1]
        per_class[names[cat_id]] = float(np.mean(p[p > -1])) if (p > -1).any() else None
        curves[names[cat_id]] = p
    evaluated = set(evaluator.params.imgIds)
    metrics = CocoMetrics(
        iou_type=iou_type, metrics=dict(zip(METRICS, stats[:6])), per_class=per_class,
        summary=summary, images=len(evaluated),
        gt_instances=sum(1 for a in coco_gt.dataset["annotations"] if a["image_id"] in evaluated),
        detections=sum(1 for r in results if r["image_id"] in evaluated), max_dets=max_dets)
    return Evaluation(metrics, np.asarray(evaluator.params.recThrs),
                      np.asarray(evaluator.params.iouThrs), curves)
