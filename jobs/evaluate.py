"""`maskray evaluate`: COCO metrics of an inference output against ground truth.

    maskray evaluate --pred OUTPUT --gt COCO_JSON|GEOJSON_DIR [--iou-type segm|bbox] [--json]
                     [--max-dets N] [--model-id ID]

Scene level, after stitching: the instances of each scene in OUTPUT (what `maskray infer` wrote)
against the ground truth of that scene, through pycocotools' COCOeval. Ground truth is a COCO
JSON whose file names are relative to the input root (as the output's scene ids are), or a
directory of one GeoJSON per scene (polygons in the scene CRS). Classes match by name.
--json prints one object: AP, AP50, AP75, APs, APm, APl and per_class (class name -> AP).
"""

from __future__ import annotations

import argparse
import json
import sys

from jobs._cli import new_parser, run_job
from pipeline.errors import UsageError


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or new_parser("maskray evaluate", __doc__.split("\n\n")[0])
    parser.add_argument("--pred", required=True, metavar="OUTPUT",
                        help="output root written by `maskray infer`")
    parser.add_argument("--gt", required=True, metavar="COCO_JSON|GEOJSON_DIR",
                        help="ground truth: COCO JSON file or directory of one GeoJSON per scene")
    parser.add_argument("--iou-type", choices=("segm", "bbox"), default="segm",
                        help="mask or box IoU")
    parser.add_argument("--model-id", default=None,
                        help="the model whose rows to evaluate, when OUTPUT holds several")
    parser.add_argument("--max-dets", type=int, default=None, metavar="N",
                        help="detections per scene that count, best first (default: all; COCO's "
                             "own default is 100, which caps recall on scenes with more objects)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object instead of the pycocotools table")
    return parser


def run(args: argparse.Namespace) -> int:
    from model.evaluate import evaluate_output

    if args.max_dets is not None and args.max_dets < 1:
        raise UsageError("--max-dets must be >= 1")
    result = evaluate_output(args.pred, args.gt, args.iou_type, args.model_id, args.max_dets)
    for note in result.notes:
        print(f"maskray evaluate: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_json()))
        return 0
    print(f"{result.iou_type}: {result.images} scene(s), {result.gt_instances} ground-truth "
          f"instance(s), {result.detections} detection(s), up to {result.max_dets} per scene")
    print(result.summary)
    width = max((len(name) for name in result.per_class), default=5)
    print("per-class AP:")
    for name, ap in result.per_class.items():
        print(f"  {name:<{width}}  {'n/a (no ground truth)' if ap is None else f'{ap:.3f}'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_job(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
