"""`maskray` console script: dispatches `maskray <subcommand> ...` to `jobs.<subcommand>.main`.

Subcommand modules are imported only when run, so `maskray --help` answers without loading
torch or Ray.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module, one-line help). Every module is also runnable as `python -m <module>`.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("jobs.synth", "generate a synthetic georeferenced archive (GeoTIFF + COCO + GeoJSON)"),
    "config": ("jobs.config", "show the resolved configuration (defaults < file < --set)"),
    "model": ("jobs.model", "build, inspect and verify model bundles"),
    "infer": ("jobs.infer", "batch inference: scenes in, instances/ + scenes/ GeoParquet out"),
    "train": ("jobs.train", "train Mask R-CNN with Ray Train (DDP); exports a model bundle"),
    "evaluate": ("jobs.evaluate", "COCO mask/box AP of an inference output against ground truth"),
    "query": ("jobs.query", "SQL (DuckDB) over an output's instances, scenes and runs"),
    "render": ("jobs.render", "PNG of a scene or window with its instance masks (and ground truth)"),
    "report": ("jobs.report", "self-contained HTML report of an output: runs, failures, classes, AP"),
    "export": ("jobs.export", "COCO JSON, GeoJSON/GeoPackage/FlatGeobuf or class GeoTIFFs of an output"),
    "demo": ("jobs.demo", "generate data, train, infer, evaluate: the end-to-end demo"),
}

USAGE = """usage: maskray <subcommand> [options]

Mask R-CNN training and batch inference over satellite and aerial imagery, with Ray.

subcommands:
{rows}

Run `maskray <subcommand> --help` for the options of one. Every subcommand also runs as
`python -m jobs.<subcommand>` (e.g. under `ray job submit -- python -m jobs.infer ...`).
"""


def usage() -> str:
    rows = "\n".join(f"  {name:<9} {text}" for name, (_, text) in SUBCOMMANDS.items())
    return USAGE.format(rows=rows)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from importlib.metadata import version

        print(f"maskray {version('maskray')}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"maskray: error: unknown subcommand {name!r}; choose from: "
              f"{', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
