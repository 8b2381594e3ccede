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
