"""Benchmark: float32 against bf16 autocast on CPU (`train.cpu_precision`, `infer.cpu_precision`),
side by side in one process.

The demo's model (`DEMO_TRAINING`: ResNet-18-FPN, FPN 128, box head 512, mask head 2 x 128), or
a trained bundle's (--bundle), on the same synthetic training chips (`maskray synth --chips`),
the precisions interleaved rep by rep after a warm-up:
  train step:  forward with targets, backward, SGD step, on --batch-size chips (one Ray Train
               CPU worker's step in the demo: batch 2, 1 thread); weights stay float32;
  predict:     eval forward of the same chips with NHWC weights (the inference actor's default,
               `infer.channels_last`), masks unpasted.
Printed: median seconds per step and per predicted chip, the speed-up over float32, and how many
of float32's detections scoring >= 0.3 bf16 finds again (same class, box IoU >= 0.5 and >= 0.9;
the objects are small, so a 1 px move of a 6 x 3 px vehicle's box is below 0.9): with
random weights (no --bundle) scores are near-ties, so that figure means something only for a
trained bundle.

bf16 is fast only where the CPU has it natively (Intel AMX or AVX-512 BF16; the first line says
whether this one does); elsewhere it is emulated and slower than float32.

    .venv/bin/python bench/precision.py                                  # ~2 min on 2 cores
    .venv/bin/python bench/precision.py --bundle demo-out/train-run/bundle
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

PRECISIONS = {"fp32": None, "bf16": "bfloat16"}


def matched(reference: list[dict], other: list[dict], min_iou: float,
            min_score: float = 0.3) -> tuple[int, int]:
    """(found again, total): `reference`'s detections scoring >= min_score that `other` has with
    the same label and box IoU >= min_iou. Each item: one image's torchvision output."""
    import torch
    from torchvision.ops import box_iou

    found = total = 0
    for ref, oth in zip(reference, other):
        keep = ref["scores"] >= min_score
        total += int(keep.sum())
        if not keep.any() or len(oth["boxes"]) == 0:
            continue
        iou = box_iou(ref["boxes"][keep].float(), oth["boxes"].float())
        same = ref["labels"][keep][:, None] == oth["labels"][None, :]
        found += int(((iou >= min_iou) & same).any(dim=1).sum())
    return found, total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--bundle", help="a trained model bundle (default: the demo's model with "
                                         "random weights)")
    parser.add_argument("--chip-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=2, help="chips per train step")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per precision per rep")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)

    import torch

    from bench.chipsteps import (CLASSES, chip_batches, demo_model_config, interleaved,
                                 seconds_per_train_step)
    from model.build import build_maskrcnn
    from model.bundle import load_bundle
    from model.precision import cpu_has_native_bf16

    torch.set_num_threads(args.threads)
    if args.bundle:
        bundle = load_bundle(args.bundle)
        classes, build = tuple(bundle.model.classes), bundle.build_model
        bands = tuple(bundle.model.bands)
    else:
        cfg = demo_model_config()
        classes, bands = CLASSES, (1, 2, 3)
        torch.manual_seed(0)
        build = lambda: build_maskrcnn(cfg)  # noqa: E731 - one model per precision below
    batches = chip_batches(classes, bands, args.batch_size, args.steps, args.chip_size)
    state = build().state_dict()
    models, optimizers = {}, {}
    for name in PRECISIONS:  # the same weights for both
        models[name] = build()
        models[name].load_state_dict(state)
        optimizers[name] = torch.optim.SGD(models[name].parameters(), lr=1e-4, momentum=0.9)
    predictors = {name: build() for name in PRECISIONS}
    for name, model in predictors.items():
        model.load_state_dict(state)
        predictors[name] = model.eval().to(memory_format=torch.channels_last)

    def autocast(name: str):
        dtype = PRECISIONS[name]
        return torch.autocast("cpu", dtype=getattr(torch, dtype or "float32"),
                              enabled=dtype is not None)

    def train_steps(name: str) -> float:
        return seconds_per_train_step(models[name], optimizers[name], batches,
                                      lambda: autocast(name))

    def predict(name: str) -> tuple[float, list[dict]]:
        outputs: list[dict] = []
        start = time.perf_counter()
        with torch.inference_mode(), autocast(name):
            for images, _ in batches:
                outputs += predictors[name](images)
        return (time.perf_counter() - start) / (len(batches) * args.batch_size), outputs

    names = list(PRECISIONS)
    for name in names:  # warm-up: allocator, OpenMP pool, oneDNN kernels of each dtype
        with autocast(name):
            models[name].train()(*batches[0])
        predict(name)
    step, chip, outputs = interleaved(names, args.reps, train_steps, predict)

    print(f"{args.bundle or 'demo model, random weights'}: {args.chip_size} px chips, train batch "
          f"{args.batch_size}, {args.threads} thread(s), {args.steps} steps x {args.reps} reps, "
          f"torch {torch.__version__}, native bf16 on this CPU: {cpu_has_native_bf16()}")
    header = (f"{'precision':<10} {'train s/step':>13} {'vs fp32':>8} {'predict s/chip':>15} "
              f"{'vs fp32':>8} {'dets':>6} {'fp32 dets >= 0.3 found, IoU 0.5 / 0.9':>38}")
    print(header)
    print("-" * len(header))
    for name in names:
        s, c = statistics.median(step[name]), statistics.median(chip[name])
        loose, total = matched(outputs["fp32"], outputs[name], 0.5)
        tight, _ = matched(outputs["fp32"], outputs[name], 0.9)
        dets = sum(len(o["boxes"]) for o in outputs[name])
        print(f"{name:<10} {s:>13.3f} {statistics.median(step['fp32']) / s:>7.2f}x {c:>15.3f} "
              f"{statistics.median(chip['fp32']) / c:>7.2f}x {dets:>6} "
              f"{f'{loose} / {tight} of {total}':>38}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
