"""`maskray report`: a self-contained HTML page about an inference output.

    maskray report results/ --out report/
    maskray report results/ --out report/ --gt data/annotations.json --samples 9
    maskray report s3://bucket/results --model-id m-3f2a9c1e --out report/

Writes DIR/index.html: runs (status, duration, scenes/s, tiles/s), scenes processed and failed
with the reasons, instances per class, score and area histograms, commits over time, sample
overlays (the scenes with the most instances, whole and their densest window), and with --gt
the COCO mask metrics (the numbers `maskray evaluate` prints) and per-class precision / recall
curves. Everything is embedded (PNG / JPEG data URIs, inline CSS): the page opens offline
and can be mailed or archived as one file.
"""

from __future__ import annotations

import argparse
import sys

from jobs._cli import new_parser, run_job
from pipeline.errors import UsageError


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or new_parser("maskray report", __doc__.split("\n\n")[0])
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("output", help="an output root of `maskray infer`")
    parser.add_argument("--out", required=True, metavar="DIR", help="directory for index.html")
    parser.add_argument("--model-id", metavar="ID",
                        help="the model to report on, when the output holds several")
    parser.add_argument("--gt", metavar="COCO_JSON|GEOJSON_DIR",
                        help="ground truth: adds COCO metrics and precision / recall curves")
    parser.add_argument("--samples", type=int, default=6, metavar="N",
                        help="scenes shown as overlays (0: none)")
    parser.add_argument("--input", metavar="ROOT",
                        help="where the scenes are, for the overlays (default: the input of "
                             "the latest run)")
    return parser


def run(args: argparse.Namespace) -> int:
    from pipeline.report import build_report

    if args.samples < 0:
        raise UsageError(f"--samples must be >= 0, got {args.samples}")
    report = build_report(args.output, args.out, model_id=args.model_id, gt=args.gt,
                          samples=args.samples, input_root=args.input)
    for note in report.notes:
        print(f"maskray report: {note}", file=sys.stderr)
    metrics = report.metrics.get("segm")
    accuracy = f"; mask AP {metrics.metrics['AP']:.3f}" if metrics is not None else ""
    print(f"maskray report: {report.scenes_ok} scene(s) ok, {report.scenes_error} failed, "
          f"{report.instances} instance(s), {report.samples} sample(s){accuracy} -> {report.path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_job(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
