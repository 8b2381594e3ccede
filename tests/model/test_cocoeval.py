"""SparseCOCOeval gives pycocotools' per-image results exactly, including its tie and crowd rules."""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from model.cocoeval import SparseCOCOeval


def _rle(x0: int, y0: int, w: int, h: int, size: int = 96) -> dict:
    m = np.zeros((size, size), np.uint8, order="F")
    m[y0:y0 + h, x0:x0 + w] = 1
    rle = mask_utils.encode(m)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _dataset(seed: int):
    """3 images, 2 classes; duplicate objects (equal IoU ties), crowds, ignore flags, every area
    range, detections that overlap several objects, and images with only one side."""
    rng = np.random.default_rng(seed)
    images = [{"id": i, "width": 96, "height": 96, "file_name": f"{i}.png"} for i in (1, 2, 3)]
    anns, results = [], []
    for image in (1, 2):
        for _ in range(40):
            x, y = rng.integers(0, 80, 2)
            w, h = rng.integers(2, 40, 2)
            box = (int(x), int(y), int(min(w, 96 - x)), int(min(h, 96 - y)))
            ann = {"id": len(anns) + 1, "image_id": image, "category_id": int(rng.integers(1, 3)),
                   "segmentation": _rle(*box), "area": float(box[2] * box[3]),
                   "bbox": list(map(float, box)), "iscrowd": int(rng.random() < 0.1)}
            if rng.random() < 0.1:
                ann["ignore"] = 1
            anns.append(ann)
            if rng.random() < 0.2:  # an identical twin: equal IoU with any detection
                anns.append({**ann, "id": len(anns) + 1})
            for _ in range(int(rng.integers(0, 3))):  # detections near it
                dx, dy = rng.integers(-4, 5, 2)
                dbox = (int(np.clip(box[0] + dx, 0, 90)), int(np.clip(box[1] + dy, 0, 90)),
                        box[2], box[3])
                results.append({"image_id": image, "category_id": ann["category_id"],
                                "segmentation": _rle(*dbox), "score": float(rng.random())})
    for _ in range(15):  # false positives, including on image 3, which has no ground truth
        x, y = rng.integers(0, 80, 2)
        results.append({"image_id": int(rng.integers(1, 4)), "category_id": int(rng.integers(1, 3)),
                        "segmentation": _rle(int(x), int(y), 10, 10), "score": float(rng.random())})
    return {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}, results


def _evaluate(cls, gt: dict, results: list, max_dets: list[int]):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        evaluator = cls(coco, coco.loadRes(copy.deepcopy(results)), "segm")
        evaluator.params.maxDets = max_dets
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("max_dets", [[1, 10, 100], [1, 5, 20]])
def test_sparse_evaluation_equals_pycocotools(seed, max_dets):
    gt, results = _dataset(seed)
    slow, fast = _evaluate(COCOeval, gt, results, max_dets), _evaluate(SparseCOCOeval, gt,
                                                                       results, max_dets)
    assert len(slow.evalImgs) == len(fast.evalImgs)
    for a, b in zip(slow.evalImgs, fast.evalImgs):
        if a is None or b is None:
            assert a is b
            continue
        assert a.keys() == b.keys()
        for key in a:
            assert np.array_equal(np.asarray(a[key]), np.asarray(b[key])), key
    assert np.array_equal(slow.stats, fast.stats)
    assert np.array_equal(slow.eval["precision"], fast.eval["precision"])
    assert any(e is not None and (e["dtMatches"] > 0).any() for e in fast.evalImgs)


def test_coco_metrics_prints_nothing_even_through_a_patched_print(monkeypatch, capsys):
    """Ray Train workers replace `builtins.print` with one that logs every call, which
    redirect_stdout does not reach: pycocotools' progress lines must not get there either."""
    import builtins

    import pycocotools.coco
    import pycocotools.cocoeval

    from model.evaluate import coco_metrics

    gt, dt = _dataset(5)
    calls = []
    monkeypatch.setattr(builtins, "print", lambda *args, **kwargs: calls.append(args))
    metrics = coco_metrics(gt, dt, "segm")
    assert 0.0 < metrics.metrics["AP"] <= 1.0
    assert calls == [] and capsys.readouterr().out == ""
    # the silence is scoped: pycocotools prints again afterwards
    assert "print" not in vars(pycocotools.coco) and "print" not in vars(pycocotools.cocoeval)
