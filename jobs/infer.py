"""`maskray infer`: batch inference over an archive -> instances/ + scenes/ GeoParquet + run record.

    maskray infer --model BUNDLE --input DIR_OR_GLOB_OR_LIST --output DIR [--config F] [--set k=v]
    maskray infer --predictor labels:COCO_JSON_OR_GEOJSON_DIR --input ... --output ...

Re-running the same command does no work; scenes added or replaced since are the only ones
processed, so a scheduler can simply run it again (two runs at once: one works, one exits 0).
Inputs, outputs and bundles may be s3:// URIs (storage.* config keys, credentials from the
environment or the AWS credential chain).
Exit codes: 0 ok; 1 when the share of failed scenes exceeds --max-error-rate (after every
processable scene was processed and committed); 2 usage errors.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from jobs._cli import add_ray_arguments, init_ray, new_parser, run_job
from pipeline.config import add_config_arguments, config_from_args, section_given
from pipeline.errors import UsageError

log = logging.getLogger("maskray")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or new_parser("maskray infer", __doc__.split("\n\n")[0])
    parser.add_argument("--model", metavar="BUNDLE",
                        help="model bundle directory (see `maskray model info`); its tile size "
                             "and overlap apply unless tiling.* is set")
    parser.add_argument("--predictor", metavar="labels:PATH",
                        help="replay labels instead of a model: labels:COCO_JSON or labels:GEOJSON_DIR")
    parser.add_argument("--input", required=True, metavar="URI",
                        help="directory, glob, or .txt list of GeoTIFF/COG/PNG/JPEG scenes")
    parser.add_argument("--output", required=True, metavar="URI", help="output root")
    parser.add_argument("--run-id", default=os.environ.get("MASKRAY_RUN_ID"), metavar="ID",
                        help="id of this run's record, e.g. the Ray Jobs submission id "
                             "(default: $MASKRAY_RUN_ID, else a new time-ordered id)")
    parser.add_argument("--max-error-rate", type=float, default=None, metavar="R",
                        help="fail (exit 1) only when more than this share of scenes failed "
                             "(default: infer.max_error_rate, 0)")
    add_ray_arguments(parser)
    add_config_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from pipeline import storage
    from pipeline.infer import bundle_tiling, labels_source, model_source, run_inference
    from pipeline.lease import LeaseHeld

    cfg = config_from_args(args)
    storage.configure(cfg.storage)
    for uri in (args.input, args.output, args.model or ""):
        storage.check_uri(uri)
    max_error_rate = cfg.infer.max_error_rate if args.max_error_rate is None else args.max_error_rate
    if bool(args.model) == bool(args.predictor):
        raise UsageError("give exactly one of --model BUNDLE or --predictor labels:PATH")
    if args.predictor:
        kind, _, path = args.predictor.partition(":")
        if kind != "labels" or not path:
            raise UsageError(f"--predictor must be labels:PATH, got {args.predictor!r}")
        source = labels_source(path, _input_root(args.input))
    else:
        if not section_given(args, "tiling"):  # the bundle's tile policy, unless overridden
            cfg = bundle_tiling(args.model, cfg)
        source = model_source(args.model, cfg)
    try:
        summary = run_inference(source, args.input, args.output, cfg,
                                connect=lambda: init_ray(args.address), run_id=args.run_id)
    except LeaseHeld as held:
        print(f"maskray infer: {held}", file=sys.stderr)
        return 0
    print(summary.line())
    for scene_id, error_type, message in summary.errors[:20]:
        print(f"  error {scene_id}: {error_type}: {message}")
    if summary.error_rate > max_error_rate:
        print(f"maskray: error: {summary.scenes_error} scene(s) failed "
              f"({summary.error_rate:.1%} > --max-error-rate {max_error_rate:.1%})", file=sys.stderr)
        return 1
    return 0


def _input_root(input_uri: str) -> str:
    """The directory scene ids are relative to (pipeline/scenes.py): the directory itself, a
    glob's leading non-wildcard part, or the folder of a list file or single image."""
    path = input_uri[len("file://"):] if input_uri.startswith("file://") else input_uri
    if set("*?[") & set(path):
        parts = Path(path).parts
        cut = next(i for i, part in enumerate(parts) if set("*?[") & set(part))
        return str(Path(*parts[:cut])) if cut else "."
    return path if os.path.isdir(path) else os.path.dirname(path) or "."


def main(argv: list[str] | None = None) -> int:
    return run_job(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
