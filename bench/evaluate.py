"""Benchmark: scene-level COCO evaluation with pycocotools' `COCOeval` against `SparseCOCOeval`.

One inference output and its COCO ground truth (what `maskray evaluate --pred OUT --gt GT`
reads), the same results and parameters handed to both evaluators in this process, one after the
other: evaluate + accumulate timed, the twelve stats compared (they must be equal).

    python bench/evaluate.py --pred OUT --gt ARCHIVE/annotations.json [--iou-type segm]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
from collections import Counter

_HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(_HERE)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pred", required=True, help="a maskray output")
    parser.add_argument("--gt", required=True, help="COCO JSON ground truth")
    parser.add_argument("--iou-type", default="segm", choices=["segm", "bbox"])
    args = parser.parse_args(argv)

    import numpy as np
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from model.cocoeval import SparseCOCOeval
    from model.evaluate import (_result_for, _with_defaults, load_ground_truth, match_classes,
                                match_scenes, output_results, summarize)
    from pipeline.dataset import read_instances, read_scenes

    scenes = read_scenes(args.pred)
    instances = read_instances(args.pred)
    gt = load_ground_truth(args.gt, scenes)
    image_of, _ = match_scenes(gt["images"], scenes.column("scene_id").to_pylist())
    category_of, _ = match_classes(gt.get("categories", []),
                                   set(instances.column("class_name").to_pylist()))
    results = [_result_for(r, args.iou_type)
               for r in output_results(instances, scenes, image_of, category_of)]
    max_dets = max([100, *Counter(r["image_id"] for r in results).values()])
    images = sorted(set(image_of.values()))
    print(f"{len(images)} scene(s), {len(gt['annotations'])} objects, {len(results)} detections, "
          f"maxDets {max_dets}, {args.iou_type}", flush=True)

    timings, stats = {}, {}
    for cls in (SparseCOCOeval, COCOeval):
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO()
            coco_gt.dataset = _with_defaults(gt)
            coco_gt.createIndex()
            # loadRes writes bbox and area into the dicts it gets: each evaluator gets copies
            evaluator = cls(coco_gt, coco_gt.loadRes([dict(r) for r in results]), args.iou_type)
            evaluator.params.imgIds = images
            evaluator.params.maxDets = [1, 10, int(max_dets)]
            start = time.perf_counter()
            evaluator.evaluate()
            evaluator.accumulate()
            timings[cls.__name__] = time.perf_counter() - start
        # maskray's summary (every detection counts; pycocotools' own reports -1 past 100)
        stats[cls.__name__] = np.asarray(summarize(evaluator)[0])
        print(f"  {cls.__name__:<15} {timings[cls.__name__]:8.2f} s  "
              f"AP {stats[cls.__name__][0]:.4f}", flush=True)
    same = np.array_equal(stats["COCOeval"], stats["SparseCOCOeval"])
    print(f"\n| evaluator | evaluate + accumulate s |\n| --- | --- |\n"
          f"| pycocotools COCOeval | {timings['COCOeval']:.2f} |\n"
          f"| SparseCOCOeval | {timings['SparseCOCOeval']:.2f} |\n"
          f"speed-up {timings['COCOeval'] / timings['SparseCOCOeval']:.1f}x; "
          f"stats identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
