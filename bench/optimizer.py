"""Benchmark: seconds a demo training step takes with SGD against AdamW (`train.optimizer`), side
by side in one process.

The demo's model and training settings (`DEMO_TRAINING`), two copies from the same seed, each
with the optimiser `model.train.make_optimizer` builds for it (SGD: the previous demo recipe,
`train.base_lr=0.08`; AdamW: the demo's), on the same synthetic chips at the demo's 0.25 m. A
step is one Ray Train CPU worker's: forward with targets (bf16 autocast where the CPU has it
natively, as `train.cpu_precision=auto` does), backward, clipping, optimiser step, on
--batch-size chips with --threads torch threads. The optimisers alternate rep by rep (each rep
starts with the other one), so drift in the machine's speed is spread over both. Printed:
each rep's seconds a step, the medians and AdamW / SGD.

    .venv/bin/python bench/optimizer.py          # ~2 min on 2 cores
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(_HERE)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

RECIPES = {"sgd": ["train.optimizer=sgd", "train.base_lr=0.08", "train.weight_decay=0.0001"],
           "adamw": []}  # AdamW is the demo's own recipe


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--chip-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=2, help="chips per train step")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per optimiser per rep")
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)

    import torch

    from bench.chipsteps import CLASSES, chip_batches
    from jobs.demo import DEMO_PIXEL_SIZE, DEMO_TRAINING
    from model.build import build_maskrcnn
    from model.precision import autocast_dtype
    from model.train import make_optimizer, train_step
    from pipeline.config import load_config

    torch.set_num_threads(args.threads)
    demo = [item for item in DEMO_TRAINING if item != "--set"]
    models, optimizers, configs = {}, {}, {}
    for name, overrides in RECIPES.items():
        cfg = load_config(None, [*demo, f"model.classes=[{', '.join(CLASSES)}]", *overrides])
        torch.manual_seed(0)
        models[name] = build_maskrcnn(cfg.model).train()
        optimizers[name] = make_optimizer(models[name], cfg.train, cfg.train.num_workers)
        configs[name] = cfg.train
    train = configs["adamw"]
    dtype = autocast_dtype("cpu", cuda_dtype=None, cpu_precision=train.cpu_precision)
    batches = chip_batches(CLASSES, (1, 2, 3), args.batch_size, args.steps + 1, args.chip_size,
                           pixel_size=DEMO_PIXEL_SIZE)

    def timed(name: str, steps) -> float:
        start = time.perf_counter()
        for images, targets in steps:
            train_step(models[name], images, targets, optimizers[name], None, train.clip_norm,
                       dtype)
        return (time.perf_counter() - start) / len(steps)

    for name in RECIPES:  # warm-up: the first step allocates the optimiser's state
        timed(name, batches[:1])
    seconds: dict[str, list[float]] = {name: [] for name in RECIPES}
    names = list(RECIPES)
    for rep in range(args.reps):
        for name in names[rep % 2:] + names[:rep % 2]:
            seconds[name].append(timed(name, batches[1:]))
        print(f"rep {rep + 1}/{args.reps} done", file=sys.stderr, flush=True)

    print(f"{args.batch_size} chips of {args.chip_size} px at {DEMO_PIXEL_SIZE} m a step, "
          f"{args.threads} thread(s), autocast {dtype}, torch {torch.__version__}")
    for name in RECIPES:
        reps = " ".join(f"{s:.3f}" for s in seconds[name])
        print(f"{name:<6} s/step by rep {reps}  median {statistics.median(seconds[name]):.3f}")
    ratio = statistics.median(seconds["adamw"]) / statistics.median(seconds["sgd"])
    print(f"adamw / sgd: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
