"""Entry points: `maskray <subcommand>` and `python -m jobs.<subcommand>`. Only these modules and the
Ray Data graph import `ray`."""
