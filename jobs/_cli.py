"""Shared plumbing for every job: logging, `--debug`, and turning exceptions into exit codes.

Every job module `jobs/<name>.py` defines
    build_parser(parser=None) -> argparse.ArgumentParser   # adds its arguments
    run(args) -> int                                        # does the work, returns an exit code
    main(argv=None) -> int                                  # = run_job(build_parser, run, argv)
so it runs as `python -m jobs.<name>` and as `maskray <name>`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable

from pipeline.errors import MaskrayError

log = logging.getLogger("maskray")

ParserBuilder = Callable[..., argparse.ArgumentParser]
Runner = Callable[[argparse.Namespace], int]


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """`--debug` (tracebacks, debug logging) and `--quiet`, accepted by every subcommand."""
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    parser.add_argument("--quiet", action="store_true", help="only warnings and errors")


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """`--address`: the Ray cluster a job connects to."""
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                        help="Ray cluster address (default: $RAY_ADDRESS, else a local cluster)")


def init_ray(address: str | None, log_to_driver: bool = False, dashboard: bool = False) -> None:
    """Connect to `address`, or start a local cluster; no-op when Ray is already initialised
    (tests share one cluster). `log_to_driver`: show the workers' prints (training progress).
    `dashboard`: a local cluster also starts the dashboard (on 127.0.0.1), whose state API
    Ray Train's placement-group cleaner polls; without it the cleaner warns every few seconds
    and never exits."""
    import ray

    if ray.is_initialized():
        return
    ray.init(address=address or "local", include_dashboard=dashboard, dashboard_host="127.0.0.1",
             configure_logging=False, log_to_driver=log_to_driver)


def setup_logging(debug: bool = False, quiet: bool = False) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", force=True)
    # AWS clients log every credential lookup and retry at INFO, and at DEBUG each signed
    # request with its Authorization header (the access key id): never past WARNING, even with
    # --debug, so no log carries a credential (tests/reliability/test_secrets.py).
    for name in ("botocore", "aiobotocore", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("s3fs").setLevel(logging.DEBUG if debug else logging.WARNING)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks; appends "(default: X)" only where X says something
    (not for flags, unset options or empty lists)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        if action.option_strings and action.nargs != 0:
            text += " (default: %(default)s)"
        return text


def new_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=HelpFormatter)
    add_common_arguments(parser)
    return parser


def run_job(build_parser: ParserBuilder, run: Runner, argv: list[str] | None = None) -> int:
    """Parse `argv`, run the job, map errors to exit codes: MaskrayError -> its code, one line on
    stderr; any other exception -> 1 with a one-line summary (traceback only with --debug)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return invoke(run, args)


def invoke(run: Runner, args: argparse.Namespace) -> int:
    debug = getattr(args, "debug", False)
    setup_logging(debug, getattr(args, "quiet", False))
    try:
        return int(run(args) or 0)
    except MaskrayError as exc:
        if debug:
            log.exception("failed")
        print(f"maskray: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("maskray: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence for a user-facing CLI
        if debug:
            log.exception("failed")
        print(f"maskray: error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1
