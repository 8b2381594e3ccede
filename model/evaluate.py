"""COCO metrics (pycocotools `COCOeval`) for instance masks and boxes.

Two entry points share one core, `coco_metrics(gt, results, iou_type)`:
- training's validation (detections per image, gathered from every worker), and
- `evaluate_output`: a batch-inference output (instances + scenes datasets) against ground truth
  given as COCO JSON or as a directory of one GeoJSON per scene, at scene level after stitching.

Frames: everything is in scene pixels. COCO ground truth is used as it is (file names relative to
the input root, matched to `scene_id`); GeoJSON polygons are rasterised in each scene's pixel
grid (its transform from the scenes table), object by object in its own box, never a whole-scene
array per object. Predicted classes are matched to ground-truth categories by NAME.

The metric numbers are pycocotools' own (`model.cocoeval.SparseCOCOeval` is `COCOeval` with a
matching step that skips pairs that cannot match: same results, minutes instead of hours on a
scene of thousands of objects): AP, AP50, AP75, APs, APm, APl are `COCOeval.stats[0:6]`
(-1.0 where undefined, as pycocotools reports) with `maxDets` [1, 10, N], N = every detection of
an image by default (COCO's N = 100 would cap the recall of a scene with 500 objects), and the AP of class k is the mean of
`eval["precision"][:, :, k, area=all, maxDets=100]` over its defined entries (the Detectron2
convention; None when the class has no ground truth). For `segm`, results carry no `bbox`, so
pycocotools takes the area of the MASK for the small / medium / large ranges.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
IOU_TYPES = ("segm", "bbox")


@dataclass
class CocoMetrics:
    """What one evaluation found.

    metrics: {name: value} for METRICS (pycocotools stats; -1.0 = undefined).
    per_class: {class name: AP or None when the class has no ground truth}.
    summary: the table `COCOeval.summarize()` prints (see `summarize`).
    images, gt_instances, detections, max_dets: what was evaluated, and how many detections per
        image counted.
    notes: what was left out and why (one line each).
    """

    iou_type: str
    metrics: dict[str, float]
    per_class: dict[str, float | None]
    summary: str
    images: int
    gt_instances: int
    detections: int
    max_dets: int
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The `--json` object: the six metrics and `per_class`."""
        return {**self.metrics, "per_class": dict(self.per_class)}


@contextlib.contextmanager
def _quiet_pycocotools() -> Iterator[None]:
    """Silence pycocotools' progress prints ("Loading and preparing results...").

    `contextlib.redirect_stdout` is not enough: inside a Ray Train worker `builtins.print` is Ray's
    logger-bound replacement, which logs every print even when stdout is redirected. Shadowing
    `print` in pycocotools' own module globals silences only pycocotools, in every thread.
    """
    import pycocotools.coco
    import pycocotools.cocoeval

    modules = (pycocotools.coco, pycocotools.cocoeval)
    for module in modules:
        module.print = _discard  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for module in modules:
            vars(module).pop("print", None)


def _discard(*args: Any, **kwargs: Any) -> None:
    """A `print` that prints nothing."""


def coco_metrics(gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]],
                 iou_type: str = "segm", image_ids: Sequence[Any] | None = None,
                 max_dets: int | None = None) -> CocoMetrics:
    """Run COCOeval on a COCO ground-truth dataset dict and a list of COCO results.

    gt: {"images", "annotations", "categories"} (polygons, uncompressed or compressed RLE).
    results: [{"image_id", "category_id", "score", "segmentation" | "bbox"}]; for `segm` a
        `bbox` key is dropped (see the module docstring).
    image_ids: the images to evaluate (default every ground-truth image); an image with no
        detection counts, with all its objects missed.
    max_dets: detections per image that count, best score first (pycocotools' last `maxDets`,
        which every reported AP uses). None = all of them (at least 100): a scene holds hundreds
        or thousands of objects, and COCO's 100 would cap recall, not measure the model.
    """
    from pycocotools.coco import COCO

    from model.cocoeval import SparseCOCOeval

    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    results = [_result_for(r, iou_type) for r in results]
    with _quiet_pycocotools():
        coco_gt = COCO()
        coco_gt.dataset = _with_defaults(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(list(results)) if results else COCO()
        evaluator = SparseCOCOeval(coco_gt, coco_dt, iou_type)  # COCOeval's numbers, fast
        if image_ids is not None:
            evaluator.params.imgIds = list(image_ids)
        if max_dets is None:
            per_image = Counter(r["image_id"] for r in results)
            max_dets = max([100, *per_image.values()])
        evaluator.params.maxDets = [1, 10, int(max_dets)]
        evaluator.evaluate()
        evaluator.accumulate()
    stats, summary = summarize(evaluator)
    names = {c["id"]: c["name"] for c in coco_gt.dataset["categories"]}
    precision = evaluator.eval["precision"]  # (iou, recall, class, area, max dets)
    per_class = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        per_class[names[cat_id]] = float(np.mean(p)) if p.size else None
    evaluated = set(evaluator.params.imgIds)
    return CocoMetrics(
        iou_type=iou_type, metrics=dict(zip(METRICS, stats[:6])), per_class=per_class,
        summary=summary, images=len(evaluated),
        gt_instances=sum(1 for a in coco_gt.dataset["annotations"] if a["image_id"] in evaluated),
        detections=sum(1 for r in results if r["image_id"] in evaluated), max_dets=max_dets)


# (AP?, IoU threshold, area range, index into maxDets): the twelve lines of COCOeval.summarize
_SUMMARY = [(True, None, "all", -1), (True, 0.5, "all", -1), (True, 0.75, "all", -1),
            (True, None, "small", -1), (True, None, "medium", -1), (True, None, "large", -1),
            (False, None, "all", 0), (False, None, "all", 1), (False, None, "all", -1),
            (False, None, "small", -1), (False, None, "medium", -1), (False, None, "large", -1)]


def summarize(evaluator) -> tuple[list[float], str]:
    """`COCOeval.summarize()` for bbox / segm, computed the same way from `evaluator.eval`, but
    at the LAST maxDets for every line: pycocotools hard-codes 100 in its first AP line and
    reports -1 for any other maxDets. With maxDets [1, 10, 100] the twelve numbers equal
    `evaluator.stats` exactly. Returns (the twelve numbers, the table as text)."""
    p = evaluator.params
    stats, lines = [], []
    for is_ap, iou, area, m in _SUMMARY:
        s = evaluator.eval["precision" if is_ap else "recall"]  # (T, R, K, A, M) / (T, K, A, M)
        if iou is not None:
            s = s[np.where(iou == p.iouThrs)[0]]
        s = s[..., p.areaRngLbl.index(area), m]
        value = float(np.mean(s[s > -1])) if (s > -1).any() else -1.0
        stats.append(value)
        name = "Average Precision  (AP)" if is_ap else "Average Recall     (AR)"
        iou_text = f"{p.iouThrs[0]:0.2f}:{p.iouThrs[-1]:0.2f}" if iou is None else f"{iou:0.2f}"
        lines.append(f" {name} @[ IoU={iou_text:<9} | area={area:>6s} | "
                     f"maxDets={p.maxDets[m]:>3d} ] = {value:0.3f}")
    return stats, "\n".join(lines)


def _result_for(result: Mapping[str, Any], iou_type: str) -> dict[str, Any]:
    out = dict(result)
    if iou_type == "segm":
        out.pop("bbox", None)
    else:
        out.pop("segmentation", None)
    return out


def _with_defaults(gt: Mapping[str, Any]) -> dict[str, Any]:
    """pycocotools needs `iscrowd` and `area` on every annotation; fill what a file left out."""
    from pycocotools import mask as mask_utils

    from pipeline.labels import coco_rle

    images = {img["id"]: img for img in gt["images"]}
    annotations = []
    for ann in gt["annotations"]:
        ann = dict(ann)
        ann.setdefault("iscrowd", 0)
        seg = ann.get("segmentation")
        if isinstance(seg, list) and seg and not isinstance(seg[0], list):
            ann["segmentation"] = [seg]  # solaris writes one polygon as a flat list of numbers
        if "area" not in ann or "bbox" not in ann:
            img = images[ann["image_id"]]
            full = coco_rle(seg, img["height"], img["width"])
            if full is None:
                ann.setdefault("area", 0.0)
                ann.setdefault("bbox", [0.0, 0.0, 0.0, 0.0])
            else:
                ann.setdefault("area", float(mask_utils.area(full)))
                ann.setdefault("bbox", [float(v) for v in mask_utils.toBbox(full)])
        annotations.append(ann)
    return {**gt, "annotations": annotations, "categories": list(gt.get("categories", []))}


# ---- an inference output against ground truth -----------------------------------------------

def load_ground_truth(gt_path: str | Path, scenes) -> dict[str, Any]:
    """A COCO dataset dict from a COCO JSON file, or built from a directory of per-scene GeoJSON
    (rasterised on each scene's grid from the `scenes` table). UsageError when the path does not
    exist; MaskrayError when the file is not a COCO dataset."""
    from pipeline.errors import MaskrayError, UsageError

    gt_path = Path(gt_path)
    if gt_path.is_dir():
        return gt_from_geojson_dir(gt_path, scenes)
    if not gt_path.is_file():
        raise UsageError(f"ground truth not found: {gt_path}")
    try:
        gt = json.loads(gt_path.read_text())
    except ValueError as exc:
        raise MaskrayError(f"cannot read COCO ground truth {gt_path}: {exc}") from exc
    if not isinstance(gt, dict) or not {"images", "annotations"} <= gt.keys():
        raise MaskrayError(f"{gt_path}: not a COCO dataset (needs 'images' and 'annotations')")
    return gt


def evaluate_output(pred_root: str, gt_path: str | Path, iou_type: str = "segm",
                    model_id: str | None = None, max_dets: int | None = None) -> CocoMetrics:
    """Scene-level COCO metrics of the output at `pred_root` against `gt_path`.

    gt_path: a COCO JSON file (file names relative to the input root the output was made from)
        or a directory of one GeoJSON per scene (polygons in the scene CRS).
    model_id: which model's rows, when the output holds more than one.
    max_dets: see `coco_metrics` (default: every detection of a scene counts).
    Evaluated scenes: the ground-truth scenes the output lists (status ok or error; an errored
    scene counts with no detections). Ground-truth scenes missing from the output are left out
    and named in `notes`.
    """
    from pipeline.dataset import read_instances, read_scenes
    from pipeline.errors import MaskrayError, UsageError

    scenes = read_scenes(pred_root, model_id)
    if scenes.num_rows == 0:
        raise UsageError(f"no scenes in {pred_root}: not a maskray output, or nothing committed")
    models = sorted(set(scenes.column("model_id").to_pylist()))
    if len(models) > 1:
        raise UsageError(f"{pred_root} holds {len(models)} models ({', '.join(models)}): "
                         "pick one with --model-id")
    instances = read_instances(pred_root, models[0])
    gt = load_ground_truth(gt_path, scenes)
    image_of, notes = match_scenes(gt["images"], scenes.column("scene_id").to_pylist())
    if not image_of:
        raise MaskrayError(f"no scene of {pred_root} is in the ground truth {gt_path} "
                           "(file names must be relative to the input root)")
    category_of, class_notes = match_classes(gt.get("categories", []),
                                             set(instances.column("class_name").to_pylist()))
    notes += class_notes
    results = output_results(instances, scenes, image_of, category_of)
    metrics = coco_metrics(gt, results, iou_type, image_ids=sorted(set(image_of.values())),
                           max_dets=max_dets)
    metrics.notes = notes
    return metrics


def match_scenes(images: Sequence[Mapping[str, Any]], scene_ids: Sequence[str]
                 ) -> tuple[dict[str, Any], list[str]]:
    """{scene_id: COCO image id} for the output's scenes found in the ground truth: by file name
    relative to the input root, else by bare file name where that is unique on both sides."""
    by_name = {_norm(img["file_name"]): img["id"] for img in images}
    image_of = {s: by_name[_norm(s)] for s in scene_ids if _norm(s) in by_name}
    rest = [s for s in scene_ids if s not in image_of]
    if rest:
        base_gt = _unique_by(by_name, lambda n: PurePosixPath(n).name)
        base_out = _unique_by({s: s for s in scene_ids}, lambda n: PurePosixPath(n).name)
        for s in rest:
            name = PurePosixPath(_norm(s)).name
            if name in base_gt and name in base_out:
                image_of[s] = base_gt[name]
    notes = []
    missing_gt = len(images) - len(set(image_of.values()))
    if missing_gt:
        notes.append(f"{missing_gt} ground-truth scene(s) are not in the output and are left out")
    if len(scene_ids) - len(image_of):
        notes.append(f"{len(scene_ids) - len(image_of)} output scene(s) have no ground truth "
                     "and are left out")
    return image_of, notes


def _norm(name: str) -> str:
    return PurePosixPath(str(name).replace("\\", "/")).as_posix().removeprefix("./")


def _unique_by(items: Mapping[str, Any], key) -> dict[str, Any]:
    seen: dict[str, list[Any]] = {}
    for name, value in items.items():
        seen.setdefault(key(_norm(name)), []).append(value)
    return {k: v[0] for k, v in seen.items() if len(v) == 1}


def match_classes(categories: Sequence[Mapping[str, Any]], class_names: set[str]
                  ) -> tuple[dict[str, int], list[str]]:
    """{predicted class name: ground-truth category id}, by name. Raises when no class is shared
    (a model for other classes: every AP would be 0 and say nothing)."""
    from pipeline.errors import MaskrayError

    ids = {str(c["name"]): int(c["id"]) for c in categories}
    category_of = {name: ids[name] for name in class_names if name in ids}
    if class_names and not category_of:
        raise MaskrayError(f"no predicted class ({', '.join(sorted(class_names))}) is a "
                           f"ground-truth category ({', '.join(sorted(ids))})")
    notes = [f"detections of class {name!r} are left out: not a ground-truth category"
             for name in sorted(class_names - category_of.keys())]
    return category_of, notes


def output_results(instances, scenes, image_of: Mapping[str, Any],
                   category_of: Mapping[str, int]) -> list[dict[str, Any]]:
    """COCO results for the instance rows of matched scenes and classes (full-scene RLE)."""
    import pyarrow.compute as pc

    from pipeline.dataset import to_coco_results

    keep = pc.and_(pc.is_in(instances.column("scene_id"), value_set=_array(list(image_of))),
                   pc.is_in(instances.column("class_name"), value_set=_array(list(category_of))))
    rows = instances.filter(keep)
    names = rows.column("class_name").to_pylist()
    results = to_coco_results(rows, scenes, image_ids=image_of)
    for result, name in zip(results, names):
        result["category_id"] = category_of[name]
    return results


def _array(values: list[str]):
    import pyarrow as pa

    return pa.array(values, type=pa.string())


def gt_from_geojson_dir(path: Path, scenes) -> dict[str, Any]:
    """A COCO ground-truth dict from one GeoJSON per scene, rasterised in each scene's grid.

    scenes: the output's scenes table (scene_id, width, height, transform). Scenes without a
    size (failed before their header was read) get an image entry with no annotations.
    """
    from affine import Affine

    from pipeline.labels import UNUSED, detections_for_tile, load_labels
    from pipeline.rle import counts_to_str, to_full_image
    from pipeline.tiling import Tile

    rows = scenes.select(["scene_id", "width", "height", "transform"]).to_pylist()
    labels = load_labels(path, scene_ids=[r["scene_id"] for r in rows])
    class_names = next(iter(labels.values())).class_names if labels else ()
    images, annotations = [], []
    for image_id, row in enumerate(rows, start=1):
        width, height = row["width"] or 0, row["height"] or 0
        images.append({"id": image_id, "file_name": row["scene_id"], "width": width,
                       "height": height})
        scene_labels = labels.get(row["scene_id"])
        if scene_labels is None or not width or not height:
            continue
        # the scenes table stores GDAL GeoTransform order (c, a, b, f, d, e)
        transform = Affine.from_gdal(*row["transform"][:6]) if row["transform"] else None
        whole = Tile(0, 0, 0, 0, width, height, 0, 0, width, height)
        for det in detections_for_tile(scene_labels, whole, transform, width, height):
            full = to_full_image(det.rle, det.x0, det.y0, height, width)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": det.class_id,
                "segmentation": {"size": [height, width], "counts": counts_to_str(full["counts"])},
                "area": _area(det.rle),
                "bbox": [det.x0, det.y0, det.x1 - det.x0, det.y1 - det.y0], "iscrowd": 0})
    categories = [{"id": i, "name": name} for i, name in enumerate(class_names)
                  if i > 0 and name != UNUSED]
    return {"images": images, "annotations": annotations, "categories": categories}


def _area(rle: Mapping[str, Any]) -> float:
    from pycocotools import mask as mask_utils

    return float(mask_utils.area(rle))
