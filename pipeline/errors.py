"""Exceptions users see as one line. The CLI maps them to exit codes (DESIGN.md: 2 usage, 1 failure)."""


class MaskrayError(Exception):
    """A failure explained in one line; the CLI prints it without a traceback (exit code 1)."""

    exit_code = 1


class UsageError(MaskrayError):
    """Bad command-line arguments or configuration (exit code 2)."""

    exit_code = 2


class ConfigError(UsageError):
    """An unknown config key, a value of the wrong type, or an unreadable config file."""


class BundleError(MaskrayError):
    """A model bundle that is missing a file, fails its checksum or does not match its config."""


def find_cause(exc: BaseException, kind: type) -> BaseException | None:
    """The first exception of `kind` in `exc`'s chain (__cause__, __context__, and the `cause`
    Ray's task errors carry), or None."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, kind):
            return e
        stack += [c for c in (e.__cause__, e.__context__, getattr(e, "cause", None))
                  if isinstance(c, BaseException)]
    return None
