"""`maskray export`: an output as COCO JSON, GeoJSON / GeoPackage / FlatGeobuf or class GeoTIFFs.

    maskray export OUTPUT --format FORMAT --out PATH [--model-id ID] [--scene SCENE_ID ...]
                   [--min-score S] [--per-scene] [--crs CRS] [--gt COCO_JSON] [--window PX]

examples:
    maskray export results/ --format coco-results --out preds.json --gt archive/annotations.json
    maskray export results/ --format coco --out relabel.json --min-score 0.5
    maskray export results/ --format gpkg --out instances.gpkg
    maskray export results/ --format geojson --out wgs84.geojson --crs EPSG:4326
    maskray export results/ --format fgb --per-scene --out fgb/
    maskray export s3://bucket/results --format class-raster --out classes/
    maskray export results/ --format class-raster --scene scenes/a.tif --out a_classes.tif

formats (pixel frames: x right, y down; masks as full-image COCO RLE, counts as str):
  coco-results  a JSON list for pycocotools `COCO.loadRes`: image_id, category_id, score, bbox
                [x, y, w, h], segmentation. With --gt, image and category ids are the ground
                truth's, matched by file name and class name as `maskray evaluate` does (so
                COCOeval on it gives evaluate's numbers; for mask APs/APm/APl drop "bbox"
                before loadRes, which else takes box areas); without, image ids are 1.. over the
                output's sorted scene ids, category_id = class_id, and OUT.images.json (images
                and categories) says which scene each image id is.
  coco          a COCO dataset JSON (images file_name = scene id, categories = model classes,
                annotations with segmentation, area, bbox, iscrowd 0 and the extra field score),
                for relabelling tools. Same image ids as coco-results without --gt.
  geojson, gpkg, fgb
                layer `instances`, one feature per instance: scene_id, instance_id, class_id,
                class_name, score, area_px, model_id, run_id and the mask outline. One merged
                file, or --per-scene one file per scene in the directory --out (names from the
                scene ids, "/" -> "__", listed in index.json). A layer holds one CRS: scenes in
                different CRSs need --crs (reproject) or --per-scene. Without --crs geometries
                are in the scene CRS exactly as stored (GeoJSON then carries a "crs" member);
                --crs EPSG:4326 with geojson writes RFC 7946 (lon/lat, 7 decimals).
  class-raster  per scene a single-band GeoTIFF on the scene's grid (size, transform, CRS):
                class id of the instance covering each pixel, 0 = background, the higher score
                wins where instances overlap. uint8 (uint16 past 255 classes), tiled, deflate;
                written --window px at a time, so a 40 000 px scene never sits in memory.
                --out is a directory (plus index.json), or a .tif file for one --scene.

OUTPUT and --out may be s3:// URIs (storage.* settings / AWS environment); a file appears at --out
only once complete. Scenes with status error are left out (said on stderr). Exit codes: 0 ok,
1 failure, 2 usage errors.
"""

from __future__ import annotations

import argparse
import sys

from jobs._cli import new_parser, run_job
from pipeline.errors import UsageError

FORMATS = ("coco-results", "coco", "geojson", "gpkg", "fgb", "class-raster")
VECTOR = ("geojson", "gpkg", "fgb")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or new_parser("maskray export", __doc__.split("\n\n")[0])
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("output", metavar="OUTPUT", help="output root written by `maskray infer`")
    # --format and --out are checked in run(), so a mistake is one line (exit 2), not argparse's
    # usage block
    parser.add_argument("--format", metavar="FORMAT",
                        help=f"what to write: {', '.join(FORMATS)} (required)")
    parser.add_argument("--out", metavar="PATH",
                        help="file to write, or directory for --per-scene and class-raster "
                             "(required)")
    parser.add_argument("--model-id", metavar="ID",
                        help="the model whose rows to export, when OUTPUT holds several")
    parser.add_argument("--scene", dest="scenes", action="extend", nargs="+", metavar="SCENE_ID",
                        help="export only these scenes (scene ids as in the output; repeatable)")
    parser.add_argument("--min-score", type=float, metavar="S",
                        help="leave out instances scoring below S")
    parser.add_argument("--per-scene", action="store_true",
                        help="geojson/gpkg/fgb: one file per scene in the directory --out")
    parser.add_argument("--crs", metavar="CRS",
                        help="geojson/gpkg/fgb: reproject to CRS (e.g. EPSG:4326); needed to merge "
                             "scenes in different CRSs into one file")
    parser.add_argument("--gt", metavar="COCO_JSON",
                        help="coco-results: take image and category ids from this COCO ground "
                             "truth (matched by file name and class name, like `maskray evaluate`)")
    parser.add_argument("--window", type=int, metavar="PX",
                        help="class-raster: side of the square windows painted at a time "
                             "(default 1024)")
    return parser


def run(args: argparse.Namespace) -> int:
    from pipeline import export

    _check(args)
    src = export.open_source(args.output, args.model_id, args.scenes, args.min_score)
    if args.format == "coco-results":
        written = export.export_coco_results(src, args.out, args.gt)
    elif args.format == "coco":
        written = export.export_coco(src, args.out)
    elif args.format in VECTOR:
        written = export.export_vector(src, args.out, args.format, args.per_scene, args.crs)
    else:
        written = export.export_class_rasters(src, args.out, args.window or export.RASTER_WINDOW)
    for note in written.notes:
        print(f"maskray export: {note}", file=sys.stderr)
    target = written.files[0] if len(written.files) == 1 else args.out
    print(f"maskray export: {written.instances} instance(s) of {written.scenes} scene(s), "
          f"model {src.model_id} -> {target}"
          + (f" ({len(written.files)} files)" if len(written.files) > 1 else ""), file=sys.stderr)
    return 0


def _check(args: argparse.Namespace) -> None:
    """One-line UsageErrors for options that do not fit together."""
    if not args.format:
        raise UsageError(f"--format is required: one of {', '.join(FORMATS)}")
    if args.format not in FORMATS:
        raise UsageError(f"unknown --format {args.format!r}: choose from {', '.join(FORMATS)}")
    if not args.out:
        raise UsageError("--out PATH is required (a file, or a directory for --per-scene and "
                         "class-raster)")
    if args.per_scene and args.format not in VECTOR:
        raise UsageError(f"--per-scene is for geojson, gpkg and fgb (class-raster is always per "
                         f"scene), not {args.format}")
    if args.crs and args.format not in VECTOR:
        raise UsageError(f"--crs is for geojson, gpkg and fgb, not {args.format}")
    if args.gt and args.format != "coco-results":
        raise UsageError(f"--gt is for coco-results, not {args.format}")
    if args.window is not None and args.format != "class-raster":
        raise UsageError(f"--window is for class-raster, not {args.format}")
    if args.window is not None and args.window < 1:
        raise UsageError("--window must be >= 1")
    if args.min_score is not None and not 0.0 <= args.min_score <= 1.0:
        raise UsageError("--min-score must be in [0, 1]")


def main(argv: list[str] | None = None) -> int:
    return run_job(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
