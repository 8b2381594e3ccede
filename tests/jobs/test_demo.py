"""`maskray demo` end to end at toy size: every step runs and prints what the README promises."""

from __future__ import annotations

import json

import rasterio

from jobs import demo as demo_job


def test_the_demo_trains_infers_evaluates_and_draws(ray_local, tmp_path, capsys):
    out = tmp_path / "demo"
    assert demo_job.main(["--out", str(out), "--chips", "8", "--chip-size", "128",
                          "--epochs", "1", "--scenes", "1", "--size", "256",
                          "--tile-size", "128", "--overlap", "32"]) == 0
    text = capsys.readouterr().out
    for step in ("[1/6]", "[2/6]", "[3/6]", "[4/6]", "[5/6]", "[6/6]"):
        assert step in text
    assert "0 matched twice" in text and "mask AP" in text
    assert (out / "overlays" / "scene_0000.png").stat().st_size > 0
    meta = json.loads((out / "train-run" / "bundle" / "bundle.json").read_text())
    assert "segm_AP" in meta["metrics"]  # validated during training
    heads = {k: meta["model"][k] for k in ("fpn_channels", "box_head_size", "mask_head_layers",
                                           "head_norm", "anchor_scales")}
    assert heads == {"fpn_channels": 128, "box_head_size": 512, "mask_head_layers": [128, 128],
                     "head_norm": "group", "anchor_scales": [1.0, 1.41]}
    with rasterio.open(out / "scenes" / "scenes" / "scene_0000.tif") as scene:  # the demo's GSD
        assert scene.res == (demo_job.DEMO_PIXEL_SIZE, demo_job.DEMO_PIXEL_SIZE)
    assert meta["training"]["cpu_precision"] == "auto"  # bf16 where the CPU runs it natively
    recipe = {k: meta["training"][k] for k in ("optimizer", "base_lr", "weight_decay",
                                               "scale_jitter", "photometric")}
    assert recipe == {"optimizer": "adamw", "base_lr": 0.0024, "weight_decay": 0.05,
                      "scale_jitter": 0.0, "photometric": 0.0}
    # a second run reuses data and training, and the model's output is already committed
    assert demo_job.main(["--out", str(out), "--chips", "8", "--chip-size", "128",
                          "--epochs", "1", "--scenes", "1", "--size", "256",
                          "--tile-size", "128", "--overlap", "32"]) == 0
    assert "reusing" in capsys.readouterr().out
