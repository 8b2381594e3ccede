"""`maskray train`: train Mask R-CNN with Ray Train (DDP across workers) and export a bundle.

    maskray train --config train.yaml [--set train.epochs=20 --set train.num_workers=4 ...]
    maskray train --set train.data=chips/annotations.json --set model.backbone=resnet18_fpn \\
                  --set "model.classes=[building,vehicle,ship,tree]" --set train.out=runs/r18

Data: a COCO JSON (train.data) of chips, e.g. from `maskray synth --chips`. Each worker reads its
shard of the images (DistributedSampler) with a DataLoader. Every epoch rank 0 writes a checkpoint
(model, optimiser, schedule, AMP scaler, epoch, RNG) through Ray Train and appends the epoch's
losses, averaged over workers, to OUT/metrics.jsonl. At the end the last checkpoint becomes the
model bundle OUT/bundle, which `maskray infer --model OUT/bundle` reads.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from jobs._cli import add_ray_arguments, init_ray, new_parser, run_job
from pipeline.config import add_config_arguments, config_from_args
from pipeline.errors import UsageError

log = logging.getLogger("maskray.train")

STATE_FILE = "state.pt"


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or new_parser("maskray train", __doc__.split("\n\n")[0])
    add_ray_arguments(parser)
    add_config_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipeline.config import config_to_dict

    cfg = config_from_args(args)
    if not cfg.train.data:
        raise UsageError("train.data is not set: --set train.data=PATH/annotations.json")
    if not Path(cfg.train.data).is_file():
        raise UsageError(f"training labels not found: {cfg.train.data}")
    out = Path(cfg.train.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    init_ray(args.address, log_to_driver=True)
    cpus = float(ray.cluster_resources().get("CPU", 1))
    per_worker = max(1.0, math.floor(cpus / cfg.train.num_workers)) if not cfg.train.use_gpu else 1.0
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config_to_dict(cfg), "out": str(out),
                           "threads": int(per_worker)},
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
                                     resources_per_worker={"CPU": per_worker}),
        run_config=RunConfig(
            name="maskray-train", storage_path=str(out / "ray"),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures)))
    start = time.perf_counter()
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    bundle = export_bundle(result.checkpoint, cfg, out / "bundle", dict(result.metrics or {}))
    print(f"maskray train: {cfg.train.epochs} epoch(s) on {cfg.train.num_workers} worker(s) in "
          f"{time.perf_counter() - start:.0f} s; final loss {result.metrics.get('loss', float('nan')):.3f}; "
          f"bundle {out / 'bundle'} (model id {bundle.model_id}); metrics {out / 'metrics.jsonl'}")
    return 0


def export_bundle(checkpoint, cfg, path: Path, metrics: dict[str, Any]):
    """The checkpoint's weights as a model bundle carrying the training config and metrics."""
    import torch

    from model.build import build_maskrcnn
    from model.bundle import save_bundle
    from pipeline.config import config_to_dict

    with checkpoint.as_directory() as directory:
        state = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)
    model = build_maskrcnn(cfg.model, load_backbone_weights=False)
    model.load_state_dict(state["model"])
    return save_bundle(path, model, cfg.model, cfg.tiling.tile_size, cfg.tiling.overlap,
                       training=config_to_dict(cfg.train),
                       metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                       overwrite=True)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: DDP model, this worker's shard of the chips, epochs."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader, DistributedSampler

    from model.build import build_maskrcnn
    from model.chips import CocoChips, collate
    from model.train import (checkpoint_state, make_optimizer, make_scheduler, restore_state,
                             train_epoch)
    from pipeline.config import config_from_dict

    cfg = config_from_dict(loop_config["config"])
    tc = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(tc.seed + rank)
    torch.set_num_threads(loop_config["threads"])
    device = ray.train.torch.get_device()

    dataset = CocoChips(tc.data, cfg.model.classes, cfg.model.bands, tc.data_root or None,
                        augment=tc.augment, seed=tc.seed + rank)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                 seed=tc.seed)
    loader = DataLoader(dataset, batch_size=tc.batch_size, sampler=sampler, collate_fn=collate)
    steps_per_epoch = len(loader)
    model = ray.train.torch.prepare_model(build_maskrcnn(cfg.model))
    optimizer = make_optimizer(model, tc, world)
    scheduler = make_scheduler(optimizer, steps_per_epoch * tc.epochs, tc)
    scaler = torch.amp.GradScaler("cuda") if tc.amp and device.type == "cuda" else None

    first_epoch = 0
    resumed = ray.train.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as directory:
            state = torch.load(Path(directory) / STATE_FILE, map_location=device, weights_only=True)
        first_epoch = restore_state(state, model, optimizer, scheduler, scaler)
        if rank == 0:
            print(f"maskray train: resumed after epoch {first_epoch}", flush=True)

    def on_step(step: int, losses: dict[str, float]) -> None:
        if rank == 0 and (step == 1 or step % 10 == 0 or step == steps_per_epoch):
            print(f"epoch {epoch + 1}/{tc.epochs} step {step}/{steps_per_epoch} "
                  f"loss {losses['loss']:.3f} (" + ", ".join(
                      f"{k[5:]} {v:.3f}" for k, v in losses.items() if k.startswith("loss_"))
                  + f") lr {losses['lr']:.5f}", flush=True)

    for epoch in range(first_epoch, tc.epochs):
        sampler.set_epoch(epoch)
        stats = train_epoch(model, loader, optimizer, scheduler, scaler, device, tc.clip_norm,
                            on_step)
        metrics = _mean_over_workers(stats.losses, dist if world > 1 else None, device)
        metrics.update(epoch=epoch + 1, steps=stats.steps * world,
                       images_per_second=stats.images_per_second * world,
                       lr=optimizer.param_groups[0]["lr"])
        if rank == 0:
            print(f"epoch {epoch + 1}/{tc.epochs}: loss {metrics['loss']:.3f}, "
                  f"{metrics['images_per_second']:.2f} images/s", flush=True)
            with open(Path(loop_config["out"]) / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
            with tempfile.TemporaryDirectory() as directory:
                torch.save(checkpoint_state(model, optimizer, scheduler, scaler, epoch),
                           Path(directory) / STATE_FILE)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
        else:
            ray.train.report(metrics)


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
