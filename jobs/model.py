"""`maskray model`: inspect, verify and create model bundles.

    maskray model info BUNDLE [--json]      architecture, classes, bands, normalisation, tiling,
                                            sha256, model id, parameter count
    maskray model verify BUNDLE             exit 0 when the bundle loads strictly, 1 with the reason
    maskray model init --out DIR [--config FILE] [--set model.backbone=resnet18_fpn ...] [--seed N]
                                            a bundle of random (or backbone-initialised) weights,
                                            for demos and tests before any training
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from jobs._cli import new_parser, run_job


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or new_parser("maskray model", "Inspect, verify and create model bundles.")
    # Subcommands accept --debug / --quiet too; SUPPRESS keeps them from resetting a value given
    # before the subcommand name.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks and debug logging")
    common.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="only warnings and errors")
    sub = parser.add_subparsers(dest="action", required=True, metavar="{info,verify,init}")

    info = sub.add_parser("info", parents=[common], help="describe a bundle",
                          description="Describe a bundle (verifies its weights on the way).")
    info.add_argument("bundle", help="bundle directory (local path or URI)")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")

    verify = sub.add_parser("verify", parents=[common], help="check a bundle's files and weights",
                            description="Check bundle.json, the weights' sha256, class and band "
                                        "counts, and load every tensor strictly.")
    verify.add_argument("bundle", help="bundle directory (local path or URI)")

    init = sub.add_parser("init", parents=[common], help="write a random-weights bundle",
                          description="Write a bundle with freshly initialised weights built "
                                      "from the config (model.* and tiling.* keys).")
    from pipeline.config import add_config_arguments

    add_config_arguments(init)
    init.add_argument("--out", required=True, help="bundle directory to create (path or URI)")
    init.add_argument("--seed", type=int, default=0, help="torch seed for the initial weights")
    init.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.action == "info":
        return run_info(args.bundle, args.json)
    if args.action == "verify":
        return run_verify(args.bundle)
    if args.action == "init":
        return run_init(args)
    raise ValueError(f"unknown action {args.action!r}; choose from: info, verify, init")


def run_info(path: str, as_json: bool) -> int:
    from model.build import count_parameters
    from model.bundle import load_bundle

    bundle = load_bundle(path, verify=False)
    # build_model checks the sha256, class and band counts and loads strictly: info verifies.
    total, trainable = count_parameters(bundle.build_model())
    info = describe(bundle, total, trainable)
    if as_json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in _text_rows(info):
        print(f"{key:<14}{value}")
    return 0


def run_verify(path: str) -> int:
    from model.bundle import verify_bundle

    bundle = verify_bundle(path)
    print(f"ok: {path} (model id {bundle.model_id}, {bundle.model.backbone}, "
          f"{len(bundle.model.classes)} classes, {len(bundle.model.bands)} bands)")
    return 0


def run_init(args: argparse.Namespace) -> int:
    import torch

    from model.build import build_maskrcnn
    from model.bundle import save_bundle
    from pipeline.config import config_from_args

    cfg = config_from_args(args)
    torch.manual_seed(args.seed)
    model = build_maskrcnn(cfg.model)
    training = {"kind": "init", "seed": args.seed,
                "backbone_weights": cfg.model.backbone_weights}
    bundle = save_bundle(args.out, model, cfg.model, cfg.tiling.tile_size, cfg.tiling.overlap,
                         training=training, overwrite=args.overwrite)
    print(f"wrote bundle {args.out} (model id {bundle.model_id}, {cfg.model.backbone}, "
          f"untrained)")
    return 0


def describe(bundle: Any, parameters: int, trainable: int) -> dict[str, Any]:
    """The facts `model info` shows, as a JSON-ready dict."""
    cfg = bundle.model
    mean, std = cfg.normalization()
    return {
        "path": bundle.path,
        "model_id": bundle.model_id,
        "sha256": bundle.sha256,
        "architecture": "maskrcnn",
        "backbone": cfg.backbone,
        "classes": {str(i + 1): name for i, name in enumerate(cfg.classes)},
        "bands": list(cfg.bands),
        "normalization": {"mean": list(mean), "std": list(std), "units": "raw pixel values"},
        "resize": ({"min_size": cfg.min_size, "max_size": cfg.max_size} if cfg.resize else None),
        "tiling": {"tile_size": bundle.tile_size, "overlap": bundle.overlap},
        "anchors": {"sizes": list(cfg.anchor_sizes), "scales": list(cfg.anchor_scales),
                    "aspect_ratios": list(cfg.aspect_ratios)},
        "heads": {"fpn_channels": cfg.fpn_channels, "box_head_size": cfg.box_head_size,
                  "mask_head_layers": list(cfg.mask_head_layers), "norm": cfg.head_norm},
        "thresholds": {"box_score": cfg.box_score_thresh, "box_nms": cfg.box_nms_thresh,
                       "detections_per_img": cfg.box_detections_per_img,
                       "mask": cfg.mask_threshold},
        "parameters": parameters,
        "trainable_parameters": trainable,
        "created": bundle.created,
        "software": bundle.metadata.get("software"),
        "training": bundle.training,
        "metrics": bundle.metrics,
    }


def _text_rows(info: dict[str, Any]) -> list[tuple[str, str]]:
    resize = info["resize"]
    norm = info["normalization"]
    thr = info["thresholds"]
    rows = [
        ("bundle", info["path"]),
        ("model id", info["model_id"]),
        ("sha256", info["sha256"]),
        ("architecture", f"Mask R-CNN, backbone {info['backbone']}"),
        ("classes", ", ".join(f"{i}={name}" for i, name in info["classes"].items())
         + " (0=background)"),
        ("bands", ", ".join(str(b) for b in info["bands"])),
        ("normalization", f"mean {norm['mean']} std {norm['std']} ({norm['units']})"),
        ("resize", f"min_size {resize['min_size']}, max_size {resize['max_size']}"
         if resize else "none (images keep their native size)"),
        ("tiling", f"tile_size {info['tiling']['tile_size']} px, "
                   f"overlap {info['tiling']['overlap']} px"),
        ("anchors", f"sizes {info['anchors']['sizes']} x scales {info['anchors']['scales']}, "
                    f"aspect ratios {info['anchors']['aspect_ratios']}"),
        ("heads", f"FPN {info['heads']['fpn_channels']} channels, box head "
                  f"{info['heads']['box_head_size']}, mask head convs "
                  f"{info['heads']['mask_head_layers']}, norm {info['heads']['norm']}"),
        ("thresholds", f"box score {thr['box_score']}, box NMS {thr['box_nms']}, "
                       f"{thr['detections_per_img']} detections/image, mask {thr['mask']}"),
        ("parameters", f"{info['parameters']:,} ({info['trainable_parameters']:,} trainable)"),
        ("created", info["created"]),
    ]
    for key in ("training", "metrics"):
        if info[key]:
            rows.append((key, json.dumps(info[key], sort_keys=True)))
    return rows


def main(argv: list[str] | None = None) -> int:
    return run_job(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
