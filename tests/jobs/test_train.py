"""`maskray train`: two Ray Train workers on CPU (DDP over gloo) on tiny synthetic chips; the
bundle it exports is what `maskray infer --model` runs. Plus the ray-free pieces."""

from __future__ import annotations

import json
import math
import os
import threading
import time

import numpy as np
import pytest
import torch

from jobs import infer as infer_job
from jobs import synth as synth_job
from jobs import train as train_job
from model.bundle import load_bundle
from model.chips import CocoChips, boxes_of, decode_segmentation
from model.train import LOSS_NAMES, lr_factor, make_optimizer, make_scheduler, scaled_lr
from pipeline.config import TrainConfig
from pipeline.dataset import read_instances, read_scenes

CLASSES = "model.classes=[building,vehicle,ship,tree]"
SMALL_MODEL = ["--set", "model.backbone=resnet18_fpn", "--set", CLASSES,
               "--set", "model.min_size=128", "--set", "model.max_size=128",
               "--set", "model.box_batch_size_per_image=64", "--set", "model.rpn_batch_size_per_image=64"]


@pytest.fixture(scope="module")
def chips(tmp_path_factory):
    out = tmp_path_factory.mktemp("chips") / "chips"
    assert synth_job.main(["--out", str(out), "--chips", "--count", "8", "--chip-size", "128",
                           "--seed", "1", "--quiet"]) == 0
    return out


def _train_args(chips, run, *extra):
    return ["--set", f"train.data={chips / 'annotations.json'}", "--set", f"train.out={run}",
            "--set", "train.batch_size=2", "--set", "train.num_workers=2",
            "--set", "train.warmup_steps=2", "--set", "tiling.tile_size=128",
            "--set", "tiling.overlap=32", *SMALL_MODEL, *extra]


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_workers_train_validate_resume_and_the_bundle_runs_in_infer(ray_local, chips,
                                                                       tmp_path, capsys):
    run = tmp_path / "run"
    args = _train_args(chips, run, "--set", "train.epochs=2", "--set", "train.val_fraction=0.25")
    assert train_job.main(args) == 0
    assert "maskray train: 2 epoch(s) on 2 worker(s)" in capsys.readouterr().out
    lines = _metrics(run)
    assert [m["epoch"] for m in lines] == [1, 2]
    for m in lines:
        assert set(LOSS_NAMES) | {"loss"} <= m.keys()
        assert math.isfinite(m["loss"]) and m["loss"] == pytest.approx(
            sum(m[k] for k in LOSS_NAMES), rel=1e-6)
        assert m["steps"] == 4  # 6 training chips / 2 workers = 3 each, batches of 2 and 1
        # validation on the 2 held-out chips, one per worker, gathered on rank 0
        assert m["val_images"] == 2 and math.isfinite(m["val_loss"])
        for key in ("segm_AP", "segm_AP50", "segm_AP75", "bbox_AP", "bbox_APs"):
            assert -1 <= m[key] <= 1
        assert set(m["segm_per_class"]) <= {"building", "vehicle", "ship", "tree"}
    bundle = load_bundle(run / "bundle")
    assert bundle.model.classes == ("building", "vehicle", "ship", "tree")
    # the bundle is the best checkpoint by mask AP and carries its metrics and the training config
    meta = json.loads((run / "bundle" / "bundle.json").read_text())
    assert meta["metrics"]["segm_AP"] == max(m["segm_AP"] for m in lines)
    assert meta["training"]["epochs"] == 2 and meta["training"]["val_fraction"] == 0.25
    # per-band normalisation measured on the training chips, not ImageNet's
    assert bundle.model.image_mean is not None and bundle.model.image_mean[0] != pytest.approx(123.675)

    # the same run directory again: refused, it would mix two runs
    assert train_job.main(args) == 2
    assert "--resume" in capsys.readouterr().err
    # continue the finished run for one more epoch: epochs 1, 2 kept, only epoch 3 runs
    assert train_job.main(["--resume", str(run), "--set", "train.epochs=3"]) == 0
    lines = _metrics(run)
    assert [m["epoch"] for m in lines] == [1, 2, 3]
    assert [m.get("resumed", False) for m in lines] == [False, False, True]

    scene = tmp_path / "scene"
    assert synth_job.main(["--out", str(scene), "--scenes", "1", "--size", "300", "--seed", "2",
                           "--quiet"]) == 0
    out = tmp_path / "out"
    assert infer_job.main(["--model", str(run / "bundle"), "--input", str(scene),
                           "--output", str(out), "--quiet"]) == 0
    scenes = read_scenes(str(out))
    assert scenes.column("status").to_pylist() == ["ok"]
    assert read_instances(str(out)).schema.field("mask_rle") is not None


def test_a_killed_worker_is_replaced_and_training_goes_on_from_the_checkpoint(ray_local, chips,
                                                                              tmp_path):
    """SIGKILL one Ray Train worker after the first epoch's checkpoint: Ray Train starts a new
    worker group, which restores that checkpoint; no epoch is lost or repeated."""
    run = tmp_path / "run"
    codes = []
    trainer = threading.Thread(target=lambda: codes.append(train_job.main(_train_args(
        chips, run, "--set", "train.epochs=3", "--set", "train.max_failures=2"))))
    trainer.start()
    # Ray Train writes its checkpoint manager snapshot once a reported checkpoint is registered
    snapshot = run / "ray" / train_job.RUN_NAME / "checkpoint_manager_snapshot.json"
    deadline = time.monotonic() + 300
    while not snapshot.exists():
        assert trainer.is_alive() and time.monotonic() < deadline, "no checkpoint registered"
        time.sleep(0.2)
    workers = _train_workers()
    assert len(workers) == 2
    workers[-1].kill()
    trainer.join(timeout=600)
    assert codes == [0]
    lines = _metrics(run)
    assert [m["epoch"] for m in lines] == [1, 2, 3]
    resumed = [m["epoch"] for m in lines if m.get("resumed")]
    assert resumed and resumed[0] >= 2  # restored from a checkpoint, not started over


def test_training_on_geotiff_scenes_with_geojson_footprints(ray_local, tmp_path):
    """train.data a directory of scenes: chips cut on the fly, labels from the GeoJSON files."""
    scenes = tmp_path / "archive"
    assert synth_job.main(["--out", str(scenes), "--scenes", "1", "--size", "256", "--seed", "5",
                           "--quiet"]) == 0
    run = tmp_path / "run"
    assert train_job.main(["--set", f"train.data={scenes}", "--set", f"train.out={run}",
                           "--set", "train.chip_size=128", "--set", "train.empty_chip_rate=1",
                           "--set", "train.epochs=1", "--set", "train.num_workers=1",
                           "--set", "train.batch_size=2", "--set", "tiling.tile_size=128",
                           "--set", "tiling.overlap=32", *SMALL_MODEL]) == 0
    (line,) = _metrics(run)
    assert line["steps"] == 2  # a 256 px scene = 4 chips of 128 px, batches of 2
    assert load_bundle(run / "bundle").model.classes == ("building", "vehicle", "ship", "tree")


def _train_workers():
    """This test process's own Ray Train worker processes (never another user's)."""
    import psutil

    return [p for p in psutil.Process().children(recursive=True)
            if "RayTrainWorker" in " ".join(_cmdline(p))]


def _cmdline(p):
    try:
        return p.cmdline()
    except Exception:  # noqa: BLE001 - a process that just ended
        return []


def test_missing_data_is_a_usage_error(tmp_path, capsys):
    assert train_job.main(["--set", f"train.out={tmp_path}"]) == 2
    assert "train.data is not set" in capsys.readouterr().err
    assert train_job.main(["--set", f"train.data={tmp_path / 'no.json'}"]) == 2
    assert "training labels not found" in capsys.readouterr().err
    assert train_job.main(["--resume", str(tmp_path)]) == 2
    assert "no training run there" in capsys.readouterr().err


def test_chip_targets_are_the_coco_masks(chips):
    data = json.loads((chips / "annotations.json").read_text())
    ds = CocoChips(chips / "annotations.json", ("building", "vehicle", "ship", "tree"), (1, 2, 3))
    names = {c["id"]: c["name"] for c in data["categories"]}
    classes = ("building", "vehicle", "ship", "tree")
    for i, img in enumerate(ds.images):
        image, target = ds[i]
        assert image.shape == (3, img["height"], img["width"]) and image.dtype == torch.float32
        anns = [a for a in data["annotations"] if a["image_id"] == img["id"]]
        assert len(target["labels"]) == len(anns)
        for k, ann in enumerate(anns):
            m = decode_segmentation(ann["segmentation"], img["height"], img["width"])
            assert np.array_equal(target["masks"][k].numpy(), m)
            assert target["labels"][k] == classes.index(names[ann["category_id"]]) + 1
        assert np.array_equal(target["boxes"].numpy(), boxes_of(target["masks"].numpy()))


def test_augmentation_moves_image_and_masks_together(chips):
    plain = CocoChips(chips / "annotations.json", ("building", "vehicle", "ship", "tree"), (1, 2, 3))
    aug = CocoChips(chips / "annotations.json", ("building", "vehicle", "ship", "tree"), (1, 2, 3),
                    augment=True, seed=3)
    i = next(i for i in range(len(plain)) if len(plain[i][1]["labels"]))
    image, target = plain[i]
    seen = set()
    for epoch in range(12):
        aug.set_epoch(epoch)
        a_image, a_target = aug[i]
        # the transform that maps the image also maps every mask: find it from the image
        matches = [(k, flip) for k in range(4) for flip in (False, True)
                   if torch.equal(_apply(image, k, flip), a_image)]
        assert matches, "augmented image is not a flip / rotation of the original"
        k, flip = matches[0]
        assert torch.equal(_apply(target["masks"], k, flip), a_target["masks"])
        assert torch.equal(a_target["labels"], target["labels"])
        seen.add((k, flip))
    assert len(seen) > 1
    # the draws depend on (seed, epoch, index) only: a resumed run sees the same images
    again = CocoChips(chips / "annotations.json", ("building", "vehicle", "ship", "tree"),
                      (1, 2, 3), augment=True, seed=3)
    again.set_epoch(11)
    assert torch.equal(again[i][0], a_image)


def _apply(t: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    t = torch.flip(t, dims=(-1,)) if flip else t
    return torch.rot90(t, k, dims=(-2, -1))


def test_learning_rate_recipe():
    cfg = TrainConfig(base_lr=0.02, batch_size=4, warmup_steps=10)
    assert scaled_lr(cfg, workers=4) == pytest.approx(0.02)  # 16 images a step
    assert scaled_lr(cfg, workers=2) == pytest.approx(0.01)
    assert lr_factor(0, 100, cfg) == pytest.approx(0.001)
    assert lr_factor(10, 100, cfg) == pytest.approx(1.0)
    assert lr_factor(55, 100, cfg) == pytest.approx(0.5)  # half way down the cosine
    assert lr_factor(100, 100, cfg) == pytest.approx(0.0, abs=1e-12)
    step = TrainConfig(warmup_steps=0, schedule="step")
    assert [lr_factor(s, 90, step) for s in (0, 59, 60, 80)] == pytest.approx([1, 1, 0.1, 0.01])


@pytest.mark.parametrize("name, kind", [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)])
def test_either_optimizer_follows_the_same_lr_rule_and_schedule(name, kind):
    layer = torch.nn.Linear(3, 2)
    frozen = torch.nn.Linear(2, 1).requires_grad_(False)
    model = torch.nn.Sequential(layer, frozen)
    cfg = TrainConfig(optimizer=name, base_lr=0.016, batch_size=2, warmup_steps=0,
                      weight_decay=0.05)
    optimizer = make_optimizer(model, cfg, workers=2)
    assert type(optimizer) is kind
    group = optimizer.param_groups[0]
    assert group["lr"] == pytest.approx(0.004) and group["weight_decay"] == 0.05
    assert [id(p) for p in group["params"]] == [id(layer.weight), id(layer.bias)]
    scheduler = make_scheduler(optimizer, 10, cfg)
    for _ in range(5):
        model(torch.ones(1, 3)).sum().backward()
        optimizer.step()
        scheduler.step()
    assert group["lr"] == pytest.approx(0.004 * lr_factor(5, 10, cfg))


def test_an_unknown_optimizer_is_a_config_error(tmp_path, capsys):
    assert train_job.main(["--set", f"train.out={tmp_path}", "--set", "train.optimizer=adam"]) == 2
    assert "optimizer must be sgd or adamw, got 'adam'" in capsys.readouterr().err


def test_relative_local_paths_reach_the_workers_absolute(chips, tmp_path, monkeypatch):
    """Ray Train's workers do not run in the driver's directory: a relative train.data used to
    fail there with 'cannot read training labels'."""
    labels = chips / "annotations.json"
    monkeypatch.chdir(chips.parent)
    relative = os.path.relpath(labels, chips.parent)
    args = train_job.build_parser().parse_args(
        ["--set", f"train.data={relative}", "--set", f"train.val_data={relative}",
         "--set", f"train.out={tmp_path / 'run'}"])
    cfg, _ = train_job._resolve_run(args)
    assert cfg.train.data == cfg.train.val_data == str(labels.resolve())
