"""The ray-free parts of training: optimiser, learning-rate schedule, one step, one epoch, and
the checkpoint payload. `jobs/train.py` runs them inside Ray Train workers.

Recipe (torchvision's detection reference): SGD with momentum 0.9 and weight decay 1e-4,
lr = base_lr x global batch / 16 (base_lr 0.02), linear warm-up from 0.001 x lr, then cosine to
0 or x 0.1 steps at 2/3 and 8/9 of the run; gradient-norm clipping (DESIGN.md measured lr 0.02
without warm-up diverging to NaN within 10 steps on CPU); AMP on GPU only. `train.optimizer=adamw`
swaps SGD for AdamW (decoupled weight decay) under the same lr rule, warm-up and schedule: what a
from-scratch model on a few hundred steps learns fastest with (docs/benchmarks.md).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn

from pipeline.config import TrainConfig

LOSS_NAMES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg",
              "loss_mask")


def scaled_lr(cfg: TrainConfig, workers: int) -> float:
    """base_lr per 16 images, scaled to the global batch (batch_size x workers)."""
    return cfg.base_lr * cfg.batch_size * workers / 16


def make_optimizer(model: nn.Module, cfg: TrainConfig, workers: int) -> torch.optim.Optimizer:
    """SGD (momentum, L2 weight decay) or AdamW (default betas, decoupled weight decay) over the
    trainable parameters, at the scaled lr; the scheduler then multiplies it."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=scaled_lr(cfg, workers), weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=scaled_lr(cfg, workers), momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay)


def lr_factor(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Multiplier of the scaled lr at optimiser step `step` (0-based) of `total_steps`."""
    warm = min(cfg.warmup_steps, max(total_steps - 1, 0))
    if step < warm:
        alpha = step / warm
        return 0.001 * (1 - alpha) + alpha
    if cfg.schedule == "cosine":
        span = max(total_steps - warm, 1)
        return 0.5 * (1 + math.cos(math.pi * min(step - warm, span) / span))
    return 0.1 ** sum(step >= int(total_steps * f) for f in (2 / 3, 8 / 9))


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, cfg: TrainConfig
                   ) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, cfg))


@dataclass
class EpochStats:
    """Mean losses (the five by name, and `loss`, their sum) over an epoch, and its speed."""

    losses: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    images: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def train_step(model: nn.Module, images: list[torch.Tensor], targets: list[dict],
               optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
               clip_norm: float, autocast: torch.dtype | None = None) -> dict[str, float]:
    """One optimiser step; returns the five losses and `loss` as floats. Raises FloatingPointError
    on a non-finite loss (the run stops rather than training on NaN). autocast: the forward's
    autocast dtype (`model.precision.autocast_dtype`; float16 comes with a `scaler`), None for
    float32."""
    device_type = images[0].device.type
    with torch.autocast(device_type, dtype=autocast or torch.float32, enabled=autocast is not None):
        loss_dict = model(images, targets)
    loss = sum(loss_dict.values())
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {loss.item()} ({ {k: float(v) for k, v in loss_dict.items()} })")
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if clip_norm > 0:
        nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    out = {k: float(v.detach()) for k, v in loss_dict.items()}
    out["loss"] = float(loss.detach())
    return out


def train_epoch(model: nn.Module, batches: Iterable[tuple[list[torch.Tensor], list[dict]]],
                optimizer: torch.optim.Optimizer, scheduler, scaler, device: torch.device,
                clip_norm: float, on_step: Callable[[int, dict[str, float]], None] | None = None,
                autocast: torch.dtype | None = None) -> EpochStats:
    """One pass over `batches`; `on_step(step_in_epoch, losses)` after each step (logging);
    autocast: as in `train_step`."""
    model.train()
    stats, start = EpochStats(), time.perf_counter()
    sums: dict[str, float] = {}
    for images, targets in batches:
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
        losses = train_step(model, images, targets, optimizer, scaler, clip_norm, autocast)
        scheduler.step()
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v
        stats.steps += 1
        stats.images += len(images)
        if on_step is not None:
            on_step(stats.steps, {**losses, "lr": optimizer.param_groups[0]["lr"]})
    stats.seconds = time.perf_counter() - start
    stats.losses = {k: v / max(stats.steps, 1) for k, v in sums.items()}
    return stats


def checkpoint_state(model: nn.Module, optimizer, scheduler, scaler, epoch: int,
                     metrics: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Everything a resumed run needs: weights, optimiser, schedule, AMP scaler, the epoch just
    finished (0-based), the RNG state, and the metrics of every epoch so far (plain JSON types,
    so `torch.load(weights_only=True)` reads them)."""
    model = getattr(model, "module", model)
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None, "epoch": epoch,
            "torch_rng": torch.get_rng_state(), "metrics": list(metrics or [])}


def restore_state(state: dict[str, Any], model: nn.Module, optimizer, scheduler, scaler) -> int:
    """Load a `checkpoint_state` into live objects; returns the next epoch to run."""
    getattr(model, "module", model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler") is not None:
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["epoch"]) + 1
