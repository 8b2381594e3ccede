"""The `maskray` dispatcher and `maskray config show`, called in-process."""

import json
import subprocess
import sys

from jobs import cli
from jobs import config as config_job


def test_help_lists_every_subcommand(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.SUBCOMMANDS:
        assert name in out


def test_unknown_subcommand_is_a_usage_error(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown subcommand 'frobnicate'" in capsys.readouterr().err


def test_every_subcommand_module_has_main():
    import importlib

    for module, _ in cli.SUBCOMMANDS.values():
        assert callable(importlib.import_module(module).main)


def test_config_show_resolves_overrides(capsys, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("tiling:\n  tile_size: 256\n")
    assert config_job.main(["show", "--config", str(path), "--set", "tiling.overlap=16", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["tiling"]["tile_size"] == 256 and shown["tiling"]["overlap"] == 16


def test_config_error_is_one_line_exit_2(capsys):
    assert config_job.main(["show", "--set", "tiling.tile_size=big"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "maskray: error: config key 'tiling.tile_size' must be an int, got 'big' (str)"


def test_python_dash_m_runs_a_job():
    proc = subprocess.run([sys.executable, "-m", "jobs.config", "show", "--set", "tiling.overlap=8"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "overlap: 8" in proc.stdout
