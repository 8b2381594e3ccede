"""Config: defaults < YAML file < --set overrides; unknown keys and wrong types name the key."""

import pytest

from pipeline.config import Config, config_from_dict, config_hash, config_to_dict, load_config
from pipeline.errors import ConfigError


def test_defaults_round_trip_through_dict():
    cfg = load_config()
    assert cfg == Config()
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("tiling:\n  tile_size: 256\n  overlap: 32\nmodel:\n  backbone: resnet18_fpn\n")
    cfg = load_config(path, ["tiling.overlap=64", "model.anchor_sizes=[16, 32, 64, 128, 256]",
                             "infer.actor_cpus=0.5"])
    assert cfg.tiling.tile_size == 256
    assert cfg.tiling.overlap == 64  # --set beats the file
    assert cfg.model.backbone == "resnet18_fpn"
    assert cfg.model.anchor_sizes == (16, 32, 64, 128, 256)
    assert cfg.infer.actor_cpus == 0.5


def test_int_is_accepted_for_float_but_not_bool_for_int():
    assert load_config(overrides=["infer.actor_cpus=1"]).infer.actor_cpus == 1.0
    with pytest.raises(ConfigError, match=r"'tiling.tile_size' must be an int, got True"):
        load_config(overrides=["tiling.tile_size=true"])


@pytest.mark.parametrize("override, message", [
    ("tiling.tile_sise=3", r"unknown config key 'tiling.tile_sise' \(tiling has: tile_size, overlap"),
    ("nosuch.key=1", r"unknown config key 'nosuch'"),
    ("tiling.tile_size=abc", r"config key 'tiling.tile_size' must be an int, got 'abc'"),
    ("model.anchor_sizes=32", r"'model.anchor_sizes' must be a list of int"),
    ("model.anchor_sizes=[32, x]", r"'model.anchor_sizes\[1\]' must be an int"),
    ("tiling=3", r"'tiling' must be a section"),
    ("tiling.overlap=600", r"invalid config in tiling: overlap must be in \[0, tile_size\)"),
    ("infer.inflight_mib=-1", r"invalid config in infer: inflight_mib must be >= 0"),
    ("novalue", r"--set expects KEY=VALUE"),
])
def test_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(overrides=[override])
    assert "\n" not in str(info.value)


def test_bad_yaml_file_is_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("tiling: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")


def test_hash_is_stable_and_sensitive():
    assert config_hash(load_config()) == config_hash(Config())
    assert config_hash(load_config(overrides=["tiling.overlap=32"])) != config_hash(Config())
