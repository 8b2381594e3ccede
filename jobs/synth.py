"""`maskray synth`: generate a synthetic aerial archive (or a chip training set) with exact labels.

    maskray synth --out data/synth --scenes 4 --size 4096 --seed 7
    maskray synth --out data/chips --chips --count 500 --chip-size 256 --seed 7
    python -m jobs.synth --out data/synth --size 20000 --dtype uint16 --bands 4
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from jobs._cli import new_parser, run_job
from pipeline.errors import UsageError

log = logging.getLogger("maskray.synth")

EPILOG = """\
outputs (DIR):
  scenes/scene_NNNN.tif       tiled GeoTIFF, CRS and transform set (default UTM 33N, 0.5 m)
  labels/scene_NNNN.geojson   one polygon per instance, in the scene CRS
  annotations.json            COCO: compressed RLE masks, file_name relative to DIR
  synth.json                  the options used
  with --chips: images/chip_NNNNN.png (.tif for uint16 or more than 3 bands) + annotations.json

classes (category ids 1..4): building, vehicle, ship, tree.
Same seed and options give byte-identical files. Scenes are written window by window, so a
20 000 px scene needs about as much memory as a 2 000 px one.
"""


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or new_parser("maskray synth", "Generate a synthetic georeferenced aerial "
                                  "archive (GeoTIFF scenes, COCO RLE and GeoJSON labels) or a "
                                  "chip training set.")
    parser.epilog = EPILOG
    parser.formatter_class = _Formatter
    parser.add_argument("--out", required=True, type=Path, metavar="DIR",
                        default=argparse.SUPPRESS, help="output directory")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a directory that is not empty")
    parser.add_argument("--seed", type=int, default=0, help="random seed: decides everything")
    parser.add_argument("--scenes", type=int, default=2, help="number of scenes")
    parser.add_argument("--size", type=_size, default="2048",
                        help="scene side in pixels, or WIDTHxHEIGHT")
    parser.add_argument("--dtype", choices=("uint8", "uint16"), default="uint8",
                        help="uint8 display values, or uint16 reflectance x 10000")
    parser.add_argument("--bands", type=int, default=3, help="3 (RGB) or more: NIR, SWIR...")
    parser.add_argument("--pixel-size", type=float, default=0.5, help="metres per pixel")
    parser.add_argument("--crs", default="EPSG:32633", help="projected CRS in metres")
    parser.add_argument("--density", type=float, default=1.0,
                        help="object density multiplier (1.0: a busy town)")
    parser.add_argument("--classes", type=_names, default="building,vehicle,ship,tree",
                        help="classes to generate, comma-separated; category ids are 1..K in "
                             "the order given")
    parser.add_argument("--compress", choices=("deflate", "none"), default="deflate",
                        help="GeoTIFF compression")
    parser.add_argument("--window", type=int, default=512,
                        help="render window and GeoTIFF tile size in pixels")
    chips = parser.add_argument_group("chips mode")
    chips.add_argument("--chips", action="store_true",
                       help="write a training set of small images instead of scenes")
    chips.add_argument("--count", type=int, default=64, help="number of chips")
    chips.add_argument("--chip-size", type=int, default=256, help="chip side in pixels")
    chips.add_argument("--empty-fraction", type=float, default=0.1,
                       help="share of chips with no objects")
    return parser


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the help, and the epilog kept as written."""


def _size(text: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected PX or WIDTHxHEIGHT, got {text!r}") from None
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise argparse.ArgumentTypeError(f"expected PX or WIDTHxHEIGHT, got {text!r}")


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def run(args: argparse.Namespace) -> int:
    from pipeline.synth import (CLASS_NAMES, ChipsConfig, SynthConfig, generate_archive,
                                generate_chips)

    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise UsageError(f"--out {out} is not empty (pass --overwrite to write into it)")
    common = dict(seed=args.seed, dtype=args.dtype, bands=args.bands,
                  pixel_size=args.pixel_size, crs=args.crs, density=args.density,
                  classes=args.classes or CLASS_NAMES)
    if args.chips:
        cfg = ChipsConfig(count=args.count, chip_size=args.chip_size,
                          empty_fraction=args.empty_fraction, **common)
        cfg.validate()  # before anything is written
        log.info("options: %s", cfg)
        summary = generate_chips(out, cfg)
        print(summary.line("chips"))
    else:
        size = args.size[0] if args.size[0] == args.size[1] else args.size
        cfg = SynthConfig(scenes=args.scenes, size=size, compress=args.compress,
                          window=args.window, **common)
        cfg.validate()
        log.info("options: %s", cfg)
        summary = generate_archive(out, cfg)
        print(summary.line("scenes"))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_job(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
