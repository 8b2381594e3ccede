"""`maskray render`: a PNG of one scene with the output's instance masks drawn on it.

    maskray render results/ --scene scenes/scene_0000.tif --out scene.png
    maskray render results/ --scene scenes/scene_0000.tif --window 512,512,1024,1024 --out crop.png
    maskray render results/ --scene big.tif --max-side 1600 --min-score 0.5 --out overview.png
    maskray render results/ --scene scenes/scene_0000.tif --window 0,0,400,400 \\
        --gt data/annotations.json --out compare.png     # ground truth left, predictions right

Masks are filled in per-class colours (Okabe-Ito, colour-blind safe) and outlined; boxes carry a
"class score" caption (by default where they can be read: at >= 1/2 native resolution, for at
most 60 instances). The whole scene, or a --window of it, is drawn at native size or scaled down
so its longer side is --max-side: a 40 000 px scene is read decimated, never whole. Only the
instances whose box meets the window are read. Scene ids are paths relative to the input root (see `maskray query OUTPUT "select
scene_id from scenes"`); the scenes are found under --input, default the input of the output's
latest run.
"""

from __future__ import annotations

import argparse
import sys

from jobs._cli import new_parser, run_job
from pipeline.errors import UsageError


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    from pipeline.render import DEFAULT_MAX_SIDE, STRETCHES

    parser = parser or new_parser("maskray render", __doc__.split("\n\n")[0])
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("output", help="an output root of `maskray infer`")
    parser.add_argument("--scene", required=True, metavar="ID", help="scene id to draw")
    parser.add_argument("--out", required=True, metavar="PNG", help="picture to write")
    parser.add_argument("--input", metavar="ROOT",
                        help="where the scenes are (default: the input of the latest run)")
    parser.add_argument("--model-id", metavar="ID",
                        help="the model whose instances to draw, when the output holds several")
    parser.add_argument("--window", metavar="X0,Y0,X1,Y1",
                        help="part of the scene to draw, scene pixels, half-open "
                             "(default: the whole scene)")
    parser.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE, metavar="N",
                        help="longest side of the picture; larger views are down-sampled")
    parser.add_argument("--labels", action=argparse.BooleanOptionalAction, default=None,
                        help="boxes and 'class score' captions (default: when the view is at "
                             ">= 1/2 native resolution and holds at most 60 instances)")
    parser.add_argument("--min-score", type=float, default=0.0, metavar="S",
                        help="draw only instances scoring at least S")
    parser.add_argument("--gt", metavar="COCO_JSON|GEOJSON_DIR",
                        help="ground truth: drawn in a panel left of the predictions")
    parser.add_argument("--bands", metavar="B,B,B",
                        help="1-based bands shown as RGB, or one band as grey (default: the "
                             "model's bands, else 1,2,3)")
    parser.add_argument("--stretch", choices=STRETCHES, default="auto",
                        help="auto: uint8 as stored, other types 2-98 %% per band")
    parser.add_argument("--alpha", type=float, default=0.45, help="opacity of the mask fill")
    return parser


def run(args: argparse.Namespace) -> int:
    from pipeline.render import parse_window, render_scene

    if not 0.0 <= args.alpha <= 1.0:
        raise UsageError(f"--alpha must be in [0, 1], got {args.alpha}")
    result = render_scene(
        args.output, args.scene, args.out, input_root=args.input, model_id=args.model_id,
        window=parse_window(args.window) if args.window else None, max_side=args.max_side,
        labels=args.labels, min_score=args.min_score, gt=args.gt,
        bands=_bands(args.bands) if args.bands else None, stretch=args.stretch, alpha=args.alpha)
    v = result.view
    scale = f", scale 1:{1 / v.sx:.3g}" if v.sx < 1 else ""
    truth = f", {result.gt_objects} ground-truth object(s)" if result.gt_objects is not None else ""
    print(f"maskray render: {args.scene} window {v.x0},{v.y0},{v.x1},{v.y1}{scale}: "
          f"{result.instances.num_rows} instance(s){truth} -> {result.path} "
          f"({result.size[0]} x {result.size[1]} px)")
    return 0


def _bands(text: str) -> list[int]:
    try:
        return [int(b) for b in text.split(",")]
    except ValueError:
        raise UsageError(f"--bands must be comma-separated band numbers, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    return run_job(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
