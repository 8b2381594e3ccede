"""`maskray query`: SQL (DuckDB) over an inference output's instances, scenes and runs.

    maskray query results/ "select class_name, count(*) as n from instances group by all order by n desc"
    maskray query results/ "select * from scenes where status = 'error'" --format csv --out errors.csv
    maskray query results/ "select run_id, status, counts from runs order by run_id" --format json

Views: `instances` (one row per object instance; px_bbox, bbox covering columns, mask_rle,
geometry as WKB, a `model` partition column), `scenes` (one row per scene and model: status,
error, size, crs, transform) and `runs` (one row per run record). A table prints to the terminal;
--format csv | json | parquet writes to --out (csv and json also to stdout without --out).
"""

from __future__ import annotations

import argparse
import sys

from jobs._cli import new_parser, run_job
from pipeline.errors import UsageError

FORMATS = ("table", "csv", "json", "parquet")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or new_parser("maskray query", __doc__.split("\n\n")[0])
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("output", help="an output directory of `maskray infer`")
    parser.add_argument("sql", help="the query; views: instances, scenes, runs")
    parser.add_argument("--format", choices=FORMATS, default="table",
                        help="how to print or write the result")
    parser.add_argument("--out", metavar="FILE", help="write the result to FILE (csv, json, "
                                                      "parquet; parquet needs it)")
    parser.add_argument("--max-rows", type=int, default=40,
                        help="rows shown by --format table")
    return parser


def run(args: argparse.Namespace) -> int:
    from pipeline.query import connect, run_query

    if args.format == "parquet" and not args.out:
        raise UsageError("--format parquet needs --out FILE")
    if args.out and args.format == "table":
        raise UsageError("--out needs --format csv, json or parquet")
    relation = run_query(connect(args.output), args.sql)
    if args.format == "table":
        relation.show(max_rows=args.max_rows, max_width=200)
    elif args.format == "parquet":
        relation.write_parquet(args.out)
    else:
        _write_rows(relation, args.format, args.out)
    if args.out:
        print(f"maskray query: {len(relation)} row(s) -> {args.out}", file=sys.stderr)
    return 0


def _write_rows(relation, fmt: str, path: str | None) -> None:
    """CSV with a header, or JSON lines (one object per row; dates, blobs and other non-JSON
    values as strings), to `path` or stdout."""
    import csv
    import json

    columns = relation.columns
    out = open(path, "w", newline="") if path else sys.stdout
    try:
        if fmt == "csv":
            writer = csv.writer(out)
            writer.writerow(columns)
            writer.writerows(relation.fetchall())
        else:
            for row in relation.fetchall():
                out.write(json.dumps(dict(zip(columns, row)), default=str) + "\n")
    finally:
        if path:
            out.close()


def main(argv: list[str] | None = None) -> int:
    return run_job(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
