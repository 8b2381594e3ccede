"""`maskray config show`: print the resolved configuration (defaults < --config file < --set)."""

from __future__ import annotations

import argparse
import json
import sys

from jobs._cli import new_parser, run_job
from pipeline.config import add_config_arguments, config_from_args, config_hash, config_to_dict, dump_yaml


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or new_parser("maskray config", __doc__)
    sub = parser.add_subparsers(dest="action", required=True, metavar="{show}")
    show = sub.add_parser("show", help="print the resolved config as YAML (or JSON)",
                          description="Print the resolved config: defaults, then --config, then --set.")
    add_config_arguments(show)
    show.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    return parser


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.json:
        print(json.dumps(config_to_dict(cfg), indent=2))
    else:
        print(f"# resolved config, sha256 {config_hash(cfg)[:16]}")
        print(dump_yaml(cfg), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_job(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
