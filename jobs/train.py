"""`maskray train`: train Mask R-CNN with Ray Train (DDP across workers) and export a bundle.

    maskray train --config train.yaml [--set train.epochs=20 --set train.num_workers=4 ...]
    maskray train --set train.data=chips/annotations.json --set model.backbone=resnet18_fpn \\
                  --set "model.classes=[building,vehicle,ship,tree]" --set train.out=runs/r18
    maskray train --resume runs/r18 [--set train.epochs=24]      # continue a stopped run

Data (train.data): a COCO or VIA JSON of chips, e.g. from `maskray synth --chips`, or a directory
of GeoTIFF scenes with GeoJSON footprints, cut into chips on the fly. Each worker reads its
shard of the images (DistributedSampler) with a DataLoader. After every epoch each worker
evaluates its share of the validation images (train.val_data, or train.val_fraction held out of
train.data); rank 0 gathers the detections and computes COCO mask and box AP. Rank 0 then writes a
checkpoint (model, optimiser, schedule, AMP scaler, epoch, RNG, metrics so far) through Ray Train
and the epoch's metrics to OUT/metrics.jsonl. Ray Train keeps train.keep_checkpoints of them,
ranked by segm_AP when there is validation. At the end the best checkpoint (the last without
validation) becomes the model bundle OUT/bundle, with its metrics, which
`maskray infer --model OUT/bundle` reads. A worker that dies is replaced and the run goes on from
the last checkpoint (train.max_failures); a stopped run continues with --resume OUT.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from jobs._cli import add_ray_arguments, init_ray, new_parser, run_job
from pipeline import storage
from pipeline.config import add_config_arguments, config_from_args
from pipeline.errors import UsageError

log = logging.getLogger("maskray.train")

STATE_FILE = "state.pt"
CONFIG_FILE = "config.yaml"  # the run's resolved config, what --resume starts from
RUN_NAME = "maskray-train"  # Ray Train run name under OUT/ray: the same name resumes


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or new_parser("maskray train", __doc__.split("\n\n")[0])
    parser.epilog = __doc__.split("\n\n", 1)[1]  # examples and how a run works
    add_ray_arguments(parser)
    add_config_arguments(parser)
    parser.add_argument("--resume", metavar="RUN",
                        help="continue the run in directory RUN (its train.out) from its last "
                             "checkpoint, with its saved config; --set may change keys, e.g. "
                             "train.epochs")
    return parser


def run(args: argparse.Namespace) -> int:
    from pipeline.config import config_to_dict, dump_yaml

    # A bad config or run directory is reported at once, not after seconds of importing Ray.
    cfg, out = _resolve_run(args)

    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from model.datasets import localised

    local = localised(cfg)  # object-storage training data: a copy on this machine
    split = _split(local)
    if cfg.model.image_mean is None:
        local = _with_band_statistics(local, split["train"])
        cfg = dataclasses.replace(cfg, model=local.model)
    out.write_text(CONFIG_FILE, dump_yaml(cfg))
    init_ray(args.address, log_to_driver=True, dashboard=True)
    cpus = float(ray.cluster_resources().get("CPU", 1))
    per_worker = max(1.0, math.floor(cpus / cfg.train.num_workers)) if not cfg.train.use_gpu else 1.0
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config_to_dict(cfg), "out": out.uri,
                           "storage": storage.resolve(cfg.storage).to_dict(),
                           "threads": int(per_worker), **split},
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
                                     resources_per_worker={"CPU": per_worker}),
        run_config=RunConfig(
            name=RUN_NAME, **out.ray_storage(cfg.storage),
            # Ray Train logs every report (the whole metrics dict) and checkpoint at INFO; the
            # progress lines are ours (_say). Its warnings and errors still show.
            logging_config=LoggingConfig(log_level="DEBUG" if args.debug else "WARNING"),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.train.keep_checkpoints,
                checkpoint_score_attribute="segm_AP" if split["validate"] else None,
                checkpoint_score_order="max"),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures)))
    start = time.perf_counter()
    result = trainer.fit()
    best = result.get_best_checkpoint("segm_AP", "max") if split["validate"] else None
    checkpoint = best or result.checkpoint
    if checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    bundle = export_bundle(checkpoint, cfg, out.join("bundle"))
    metrics = bundle.metrics
    print(f"maskray train: {cfg.train.epochs} epoch(s) on {cfg.train.num_workers} worker(s) in "
          f"{time.perf_counter() - start:.0f} s; bundle from epoch {metrics.get('epoch')}: loss "
          f"{metrics.get('loss', float('nan')):.3f}"
          + (f", mask AP {metrics['segm_AP']:.3f}, AP50 {metrics['segm_AP50']:.3f}"
             if "segm_AP" in metrics else "")
          + f"; bundle {out.join('bundle')} (model id {bundle.model_id}); metrics "
          f"{out.join('metrics.jsonl')}")
    return 0


def _resolve_run(args: argparse.Namespace):
    """(config, RunDir). A new run refuses a directory that already holds one; --resume
    starts from that run's saved config (+ --set) and keeps its directory."""
    from pipeline.config import load_config

    if args.resume:
        # Where the run lives needs the storage keys before its saved config can be read.
        given = [o for o in args.overrides if o.strip().startswith("storage.")]
        storage.configure(load_config(None, given).storage)
        out = RunDir(args.resume)
        if not out.exists(CONFIG_FILE) or not out.exists(f"ray/{RUN_NAME}"):
            raise UsageError(f"--resume {args.resume}: no training run there (no {CONFIG_FILE} "
                             f"and ray/{RUN_NAME})")
        if args.config:
            raise UsageError("--resume uses the run's saved config; change keys with --set")
        with tempfile.TemporaryDirectory() as tmp:
            saved = Path(tmp) / CONFIG_FILE
            saved.write_text(out.read_text(CONFIG_FILE))
            cfg = load_config(saved, [*args.overrides, f"train.out={out.uri}"])
        storage.configure(cfg.storage)
    else:
        cfg = config_from_args(args)
        storage.configure(cfg.storage)
        out = RunDir(cfg.train.out)
        if out.exists(f"ray/{RUN_NAME}"):
            raise UsageError(f"{cfg.train.out} already holds a training run: continue it with "
                             f"--resume {cfg.train.out}, or set another train.out")
    # Ray Train's workers do not run in the driver's directory: a relative local path would name
    # nothing there, so local paths travel absolute (and are saved so for --resume).
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **{
        key: str(Path(path).resolve()) for key in ("data", "val_data")
        if (path := getattr(cfg.train, key)) and not storage.is_remote(path)}))
    for key in ("data", "val_data"):
        path = getattr(cfg.train, key)
        if key == "data" and not path:
            raise UsageError("train.data is not set: --set train.data=PATH/annotations.json")
        if path and storage.is_remote(path):
            fs, inner = storage.filesystem(path)
            with storage.translating_errors(path):
                if not fs.exists(inner):
                    raise UsageError(f"training data not found: {path} (train.{key})")
        elif path and not Path(path).exists():
            raise UsageError(f"training labels not found: {path} (train.{key})")
    return cfg, out


class RunDir:
    """A training run's directory, local or in object storage (train.out = s3://...): the
    config, metrics.jsonl, Ray Train's checkpoints under ray/, and the exported bundle/."""

    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/") if storage.is_remote(uri) else str(Path(uri).resolve())
        self.fs, self.path = storage.filesystem(self.uri)

    def join(self, name: str) -> str:
        return f"{self.uri}/{name}"

    def exists(self, name: str) -> bool:
        with storage.translating_errors(self.uri):
            return self.fs.exists(f"{self.path}/{name}")

    def read_text(self, name: str) -> str:
        return self.fs.cat_file(f"{self.path}/{name}").decode()

    def write_text(self, name: str, text: str) -> None:
        """Replace `name` whole: one PUT in object storage, write-then-rename locally."""
        with storage.translating_errors(self.uri):
            if storage.is_remote(self.uri):
                self.fs.pipe_file(f"{self.path}/{name}", text.encode())
                return
            target = Path(self.path) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_text(text)
            tmp.replace(target)

    def ray_storage(self, settings) -> dict[str, Any]:
        """RunConfig keywords: Ray Train's checkpoints under <run>/ray, through a pyarrow S3
        filesystem built from the storage settings when the run is in object storage."""
        if storage.is_remote(self.uri):
            return {"storage_path": f"{self.path}/ray",
                    "storage_filesystem": storage.arrow_filesystem(settings)}
        return {"storage_path": f"{self.path}/ray"}


def _split(cfg) -> dict[str, Any]:
    """Which images of train.data train, and which validate (positions in the id-sorted list)."""
    from model.chips import split_indices
    from model.datasets import count_items

    count = count_items(cfg, cfg.train.data)
    if cfg.train.val_data:
        return {"train": list(range(count)), "val": None, "validate": True}
    train, val = split_indices(count, cfg.train.val_fraction, cfg.train.seed)
    return {"train": train, "val": val, "validate": bool(val)}


def _with_band_statistics(cfg, subset):
    """cfg with model.image_mean / image_std measured on the training images (so the bundle
    carries the normalisation it was trained with)."""
    from model.chips import band_statistics
    from model.datasets import open_training_set

    mean, std = band_statistics(open_training_set(cfg, cfg.train.data, subset=subset))
    print(f"maskray train: per-band normalisation from the training images: mean "
          f"{[round(v, 2) for v in mean]}, std {[round(v, 2) for v in std]}", flush=True)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, image_mean=mean,
                                                              image_std=std))


def export_bundle(checkpoint, cfg, path: str):
    """The checkpoint's weights as a model bundle carrying the training config and the metrics of
    the checkpoint's epoch (losses, validation AP)."""
    import torch

    from model.build import build_maskrcnn
    from model.bundle import save_bundle
    from pipeline.config import config_to_dict

    with checkpoint.as_directory() as directory:
        state = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)
    model = build_maskrcnn(cfg.model, load_backbone_weights=False)
    model.load_state_dict(state["model"])
    history = state.get("metrics") or [{}]
    return save_bundle(path, model, cfg.model, cfg.tiling.tile_size, cfg.tiling.overlap,
                       training=config_to_dict(cfg.train), metrics=history[-1], overwrite=True)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: DDP model, this worker's shard of the chips, epochs, and
    its share of the validation images after each epoch."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader, DistributedSampler

    from model.build import build_maskrcnn
    from model.chips import collate
    from model.datasets import open_training_set
    from model.precision import autocast_dtype
    from model.train import (checkpoint_state, make_optimizer, make_scheduler, restore_state,
                             train_epoch)
    from model.validation import epoch_metrics, shard_indices, validate_shard
    from pipeline.config import config_from_dict

    from model.datasets import localised

    storage.configure(loop_config["storage"])
    # Remote training data: each node copies it once (workers on one node share the copy).
    cfg = localised(config_from_dict(loop_config["config"]))
    tc = cfg.train
    out = RunDir(loop_config["out"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(tc.seed + rank)
    torch.set_num_threads(loop_config["threads"])
    device = ray.train.torch.get_device()

    dataset = open_training_set(cfg, tc.data, subset=loop_config["train"], augment=tc.augment,
                                seed=tc.seed + rank)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                 seed=tc.seed)
    loader = DataLoader(dataset, batch_size=tc.batch_size, sampler=sampler, collate_fn=collate)
    val_set = None
    if loop_config["validate"]:
        val_set = open_training_set(cfg, tc.val_data or tc.data, subset=loop_config["val"])
    steps_per_epoch = len(loader)
    model = ray.train.torch.prepare_model(build_maskrcnn(cfg.model))
    optimizer = make_optimizer(model, tc, world)
    scheduler = make_scheduler(optimizer, steps_per_epoch * tc.epochs, tc)
    scaler = torch.amp.GradScaler("cuda") if tc.amp and device.type == "cuda" else None
    autocast = autocast_dtype(device.type, cuda_dtype=torch.float16 if scaler else None,
                              cpu_precision=tc.cpu_precision)
    if rank == 0 and autocast is not None:
        _say(f"maskray train: forward passes autocast to {str(autocast).split('.')[-1]}")

    first_epoch, history = 0, []
    resumed = ray.train.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as directory:
            state = torch.load(Path(directory) / STATE_FILE, map_location=device, weights_only=True)
        first_epoch = restore_state(state, model, optimizer, scheduler, scaler)
        history = list(state.get("metrics") or [])
        if rank == 0:
            # The metrics file holds exactly the epochs of the checkpoint: an epoch whose
            # checkpoint never landed is run again and must not appear twice.
            _write_metrics(out, history)
            _say(f"maskray train: resumed after epoch {first_epoch}")

    def on_step(step: int, losses: dict[str, float]) -> None:
        if rank == 0 and (step == 1 or step % 10 == 0 or step == steps_per_epoch):
            rate = step * tc.batch_size * world / (time.perf_counter() - epoch_start)
            _say(f"epoch {epoch + 1}/{tc.epochs} step {step}/{steps_per_epoch} "
                 f"loss {losses['loss']:.3f} (" + ", ".join(
                     f"{k[5:]} {v:.3f}" for k, v in losses.items() if k.startswith("loss_"))
                 + f") lr {losses['lr']:.5f}, {rate:.2f} images/s")

    for epoch in range(first_epoch, tc.epochs):
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        epoch_start = time.perf_counter()
        stats = train_epoch(model, loader, optimizer, scheduler, scaler, device, tc.clip_norm,
                            on_step, autocast)
        metrics = _mean_over_workers(stats.losses, dist if world > 1 else None, device)
        metrics.update(epoch=epoch + 1, steps=stats.steps * world,
                       images_per_second=stats.images_per_second * world,
                       lr=optimizer.param_groups[0]["lr"], train_seconds=stats.seconds)
        if resumed is not None and epoch == first_epoch:
            metrics["resumed"] = True  # first epoch after restoring a checkpoint
        if val_set is not None:
            val_start = time.perf_counter()
            shard = validate_shard(model, val_set, shard_indices(len(val_set), rank, world),
                                   device, tc.batch_size, cfg.model.mask_threshold)
            shards = [None] * world
            if world > 1:
                dist.all_gather_object(shards, shard)
            else:
                shards = [shard]
            if rank == 0:
                metrics.update(epoch_metrics(shards, val_set.gt),
                               val_seconds=time.perf_counter() - val_start)
        if rank == 0:
            history.append(metrics)
            _say(_epoch_line(metrics, tc.epochs))
            _write_metrics(out, history)
            with tempfile.TemporaryDirectory() as directory:
                torch.save(checkpoint_state(model, optimizer, scheduler, scaler, epoch, history),
                           Path(directory) / STATE_FILE)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
        else:
            ray.train.report(metrics)


def _say(line: str) -> None:
    """One progress line from a worker, straight to its stdout (which Ray forwards to the
    driver). Not print(): Ray Train patches print into its logger, and the driver then shows
    each line twice."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _epoch_line(m: dict[str, Any], epochs: int) -> str:
    line = (f"epoch {m['epoch']}/{epochs}: loss {m['loss']:.3f}, "
            f"{m['images_per_second']:.2f} images/s")
    if "segm_AP" in m:
        line += (f"; validation loss {m['val_loss']:.3f}, mask AP {m['segm_AP']:.3f} "
                 f"AP50 {m['segm_AP50']:.3f}, box AP {m['bbox_AP']:.3f} AP50 {m['bbox_AP50']:.3f}")
    return line


def _write_metrics(out: RunDir, history: list[dict[str, Any]]) -> None:
    """OUT/metrics.jsonl: one JSON line per finished epoch, replaced whole."""
    out.write_text("metrics.jsonl", "".join(json.dumps(m) + "\n" for m in history))


def _mean_over_workers(losses: dict[str, float], dist, device) -> dict[str, float]:
    """Each loss averaged over the workers (an all-reduce; identity with one worker)."""
    if dist is None:
        return dict(losses)
    import torch

    names = sorted(losses)
    values = torch.tensor([losses[k] for k in names], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    values /= dist.get_world_size()
    return dict(zip(names, values.tolist()))


def main(argv: list[str] | None = None) -> int:
    return run_job(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
