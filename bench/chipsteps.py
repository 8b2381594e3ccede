"""Shared by bench/heads.py and bench/precision.py: the demo's model settings, batches of
synthetic training chips, a timed train step, and variants timed interleaved rep by rep (each rep
starts with the next variant, so drift in the machine's speed is spread over all of them)."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from typing import Callable, ContextManager, Sequence

CLASSES = ("building", "vehicle", "ship", "tree")


def demo_model_config(*overrides: str):
    """The demo's model settings (jobs/demo.py DEMO_TRAINING, read from there) with the four
    synthetic classes, then `overrides` ("model.key=value")."""
    from jobs.demo import DEMO_TRAINING
    from pipeline.config import load_config

    demo = [item for item in DEMO_TRAINING if item != "--set"]
    return load_config(None, [*demo, f"model.classes=[{', '.join(CLASSES)}]",
                              *overrides]).model


def chip_batches(classes: Sequence[str], bands: Sequence[int], batch_size: int, steps: int,
                 chip_size: int, seed: int = 7, pixel_size: float = 0.5
                 ) -> list[tuple[list, list]]:
    """`steps` collated (images, targets) batches of `batch_size` chips of `chip_size` px from
    the synthetic generator (`maskray synth --chips`), as Ray Train workers get them. The chips
    are at `pixel_size` m, by default the generator's 0.5 m, where docs/benchmarks.md's earlier
    step figures were measured (the demo has used 0.25 m since: fewer, larger objects a chip)."""
    from model.chips import CocoChips, collate
    from pipeline.synth import ChipsConfig, generate_chips

    with tempfile.TemporaryDirectory() as tmp:
        generate_chips(tmp, ChipsConfig(count=batch_size * steps, chip_size=chip_size, seed=seed,
                                        classes=tuple(classes), pixel_size=pixel_size))
        data = CocoChips(os.path.join(tmp, "annotations.json"), tuple(classes), tuple(bands))
        return [collate([data[i] for i in range(b * batch_size, (b + 1) * batch_size)])
                for b in range(steps)]


def interleaved(names: Sequence[str], reps: int, train_step: Callable[[str], float],
                predict: Callable[[str], tuple[float, object]]
                ) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, object]]:
    """Run `train_step(name)` (seconds a step) then `predict(name)` ((seconds a chip, what it
    found)) for every variant, `reps` times, rotating the order. Returns the per-rep seconds a
    step and a chip, and each variant's last `predict` result."""
    step: dict[str, list[float]] = {n: [] for n in names}
    chip: dict[str, list[float]] = {n: [] for n in names}
    found: dict[str, object] = {}
    for rep in range(reps):
        for name in list(names[rep % len(names):]) + list(names[:rep % len(names)]):
            step[name].append(train_step(name))
            seconds, found[name] = predict(name)
            chip[name].append(seconds)
        print(f"rep {rep + 1}/{reps} done", file=sys.stderr, flush=True)
    return step, chip, found


def seconds_per_train_step(model, optimizer, batches: Sequence[tuple[list, list]],
                           forward_context: Callable[[], ContextManager] = contextlib.nullcontext
                           ) -> float:
    """Mean seconds of forward with targets (inside `forward_context()`), backward and SGD step
    over `batches`."""
    model.train()
    start = time.perf_counter()
    for images, targets in batches:
        with forward_context():
            losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / len(batches)
