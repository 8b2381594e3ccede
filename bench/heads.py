"""Benchmark: what the FPN width and the RoI head sizes cost, side by side in one process (CPU).

The same backbone with torchvision's head sizes and with the smaller ones `maskray demo` trains
(`model.fpn_channels`, `model.box_head_size`, `model.mask_head_layers`), on the same synthetic
training chips (`maskray synth --chips`), variants interleaved rep by rep after a warm-up step:
  train step:  forward with targets, backward, SGD step, on --batch-size chips (one Ray Train
               CPU worker's step in the demo: batch 2, 1 thread);
  predict:     eval forward of the same chips, masks unpasted (as the inference actor runs it),
               up to the demo's 200 detections a chip, which is what an untrained or weak model
               returns: the mask head then runs on every one of them.
Every variant takes the rest of its model settings from the demo's (`DEMO_TRAINING`: 64 RoIs
and anchors per image, 1000 / 500 proposals, anchors from 8 px, no resize), so only the sizes
differ. Printed: median seconds per step and per
predicted chip, the ratio to torchvision's sizes, and parameter counts.

    .venv/bin/python bench/heads.py                      # ~3 min on 2 cores
    .venv/bin/python bench/heads.py --threads 2 --batch-size 4
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

# name -> (fpn_channels, box_head_size, mask_head_layers)
VARIANTS = {
    "torchvision": (256, 1024, (256, 256, 256, 256)),
    "fpn 128": (128, 1024, (128, 128, 128, 128)),
    "demo": (128, 512, (128, 128)),
}


def model_config(backbone: str, sizes: tuple):
    """The demo's model settings with this backbone and these head sizes."""
    from bench.chipsteps import demo_model_config

    fpn, box, mask = sizes
    return demo_model_config(f"model.backbone={backbone}", f"model.fpn_channels={fpn}",
                             f"model.box_head_size={box}",
                             f"model.mask_head_layers=[{', '.join(map(str, mask))}]")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--backbone", default="resnet18_fpn")
    parser.add_argument("--chip-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=2, help="chips per train step")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per variant per rep")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated subset of: {', '.join(VARIANTS)}")
    args = parser.parse_args(argv)

    import torch

    from bench.chipsteps import CLASSES, chip_batches, interleaved, seconds_per_train_step
    from model.build import build_maskrcnn

    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = set(names) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    batches = chip_batches(CLASSES, (1, 2, 3), args.batch_size, args.steps, args.chip_size)
    models, optimizers = {}, {}
    for name in names:
        torch.manual_seed(0)
        models[name] = build_maskrcnn(model_config(args.backbone, VARIANTS[name]))
        optimizers[name] = torch.optim.SGD(models[name].parameters(), lr=1e-4, momentum=0.9)

    def train_steps(name: str) -> float:
        return seconds_per_train_step(models[name], optimizers[name], batches)

    def predict(name: str) -> tuple[float, int]:
        model = models[name].eval()
        found = 0
        start = time.perf_counter()
        with torch.inference_mode():
            for images, _ in batches:
                found += sum(len(o["boxes"]) for o in model(images))
        return (time.perf_counter() - start) / (len(batches) * args.batch_size), found

    for name in names:  # warm-up: allocator, OpenMP pool, first-call paths
        models[name].train()(*batches[0])
        predict(name)
    step, chip, dets = interleaved(names, args.reps, train_steps, predict)

    print(f"{args.backbone}, {args.chip_size} px chips, train batch {args.batch_size}, "
          f"{args.threads} thread(s), {args.steps} steps x {args.reps} reps, torch "
          f"{torch.__version__}")
    base = names[0]
    header = (f"{'variant':<12} {'fpn/box/mask':<26} {'params':>8} {'train s/step':>13} "
              f"{'vs ' + base:>15} {'predict s/chip':>15} {'vs ' + base:>15} {'dets':>6}")
    print(header)
    print("-" * len(header))
    for name in names:
        fpn, box, mask = VARIANTS[name]
        sizes = f"{fpn}/{box}/{'x'.join(map(str, mask))}"
        params = sum(p.numel() for p in models[name].parameters()) / 1e6
        s, c = statistics.median(step[name]), statistics.median(chip[name])
        print(f"{name:<12} {sizes:<26} {params:>7.1f}M {s:>13.3f} "
              f"{statistics.median(step[base]) / s:>14.2f}x {c:>15.3f} "
              f"{statistics.median(chip[base]) / c:>14.2f}x {dets[name]:>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
