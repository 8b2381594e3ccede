"""Benchmark: box-local mask encoding against torchvision's full-tile paste + pycocotools.

One 1024 x 1024 tile with 100 detections (seeded: boxes 10-300 px a side inside the tile, 28 x 28
probability maps shaped like an object plus noise), post-processed two ways:
  naive:     `paste_masks_in_image` (N x H x W float canvas), `> 0.5`, then one pycocotools encode
             per full-tile mask, as torchvision's references/detection/coco_eval.py writes them;
  box-local: `pipeline.masks.encode_box_masks`.
Wall time: warm-up, then the median of several repetitions. Peak memory: each path once in a fresh
subprocess, peak RSS (Linux VmHWM, reset just before the call) minus RSS just before the call.
The script checks that both give identical masks (full-tile RLE bytes equal) and exits 1 if not.

    python bench/postprocess.py [--reps 7] [--threads 1] [--probs blob|uniform]

Both paths run with the same number of torch threads (default 1, as in a one-CPU actor).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402
from torchvision.models.detection.roi_heads import paste_masks_in_image  # noqa: E402

from pipeline import rle  # noqa: E402
from pipeline.masks import encode_box_masks  # noqa: E402

TILE = 1024
N_DETECTIONS = 100
MASK_SIZE = 28
THRESHOLD = 0.5


def make_inputs(seed: int = 0, probs_kind: str = "blob"):
    """(probs (N,1,28,28) float32, boxes (N,4) float32 xyxy tile px, labels (N,) int64, scores)."""
    g = torch.Generator().manual_seed(seed)
    sides = 10 + torch.rand(N_DETECTIONS, 2, generator=g) * 290
    corner = torch.rand(N_DETECTIONS, 2, generator=g) * (TILE - sides)
    boxes = torch.cat([corner, corner + sides], dim=1)
    if probs_kind == "uniform":
        probs = torch.rand(N_DETECTIONS, 1, MASK_SIZE, MASK_SIZE, generator=g)
    else:
        # An ellipse of random radius, sharp-ish logits, plus noise: what a trained mask head emits.
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, MASK_SIZE), torch.linspace(-1, 1, MASK_SIZE),
                                indexing="ij")
        radius = 0.5 + 0.5 * torch.rand(N_DETECTIONS, 1, 1, 1, generator=g)
        logits = 8 * (1 - (xx**2 + yy**2) / radius**2)
        logits = logits + 2 * torch.randn(N_DETECTIONS, 1, MASK_SIZE, MASK_SIZE, generator=g)
        probs = torch.sigmoid(logits)
    labels = torch.randint(1, 5, (N_DETECTIONS,), generator=g)
    scores = torch.rand(N_DETECTIONS, generator=g)
    return probs, boxes, labels, scores


def run_naive(probs, boxes, labels, scores):
    """torchvision postprocess + a naive writer: full-tile float masks, threshold, encode each."""
    masks = paste_masks_in_image(probs, boxes, (TILE, TILE), padding=1) > THRESHOLD
    return [mask_utils.encode(np.array(m[0, :, :, None], dtype=np.uint8, order="F"))[0]
            for m in masks.numpy()]


def run_box_local(probs, boxes, labels, scores):
    return encode_box_masks(probs, boxes, labels, scores, (TILE, TILE), threshold=THRESHOLD)


PATHS = {"naive": run_naive, "box-local": run_box_local}


def time_path(fn, inputs, reps: int) -> float:
    """Median wall seconds of `reps` calls after one warm-up call."""
    fn(*inputs)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn(*inputs)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def check_identical(inputs) -> int:
    """Number of detections compared; raises AssertionError when any mask differs."""
    naive = [r for r in run_naive(*inputs) if rle.area(r) > 0]
    ours = run_box_local(*inputs)
    assert len(naive) == len(ours), f"{len(naive)} non-empty naive masks, {len(ours)} box-local"
    for full, det in zip(naive, ours):
        placed = rle.to_full_image(det.rle, det.x0, det.y0, TILE, TILE)
        assert placed["counts"] == full["counts"], "box-local mask differs from torchvision's"
    return len(ours)


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def measure_peak_child(path: str, probs_kind: str) -> None:
    """In a fresh process: peak RSS growth (MiB) of one call, printed as JSON."""
    inputs = make_inputs(probs_kind=probs_kind)
    rss_before = _status_kb("VmRSS")
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:  # Linux: writing 5 resets VmHWM (peak RSS) to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        method = "VmHWM"
    except OSError:
        method = "ru_maxrss"  # growth of the lifetime peak: a lower bound for a small call
    PATHS[path](*inputs)
    if method == "VmHWM":
        growth_kb = _status_kb("VmHWM") - rss_before
    else:
        growth_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss_before
    print(json.dumps({"peak_mib": max(growth_kb, 0) / 1024, "method": method}))


def measure_peak(path: str, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", path, "--probs", args.probs,
           "--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions per path")
    # One thread by default: an inference actor gets a CPU or two beside its GPU, and torch's
    # intra-op threads only add barrier waits to these small per-box resizes on a busy machine.
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch default)")
    parser.add_argument("--probs", choices=["blob", "uniform"], default="blob")
    parser.add_argument("--child", choices=sorted(PATHS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        measure_peak_child(args.child, args.probs)
        return 0

    inputs = make_inputs(probs_kind=args.probs)
    compared = check_identical(inputs)
    secs = {p: time_path(fn, inputs, args.reps) for p, fn in PATHS.items()}
    peaks = {p: measure_peak(p, args) for p in PATHS}
    print(f"tile {TILE}x{TILE}, {N_DETECTIONS} detections, probs={args.probs}, "
          f"torch threads={torch.get_num_threads()}, reps={args.reps}, "
          f"masks identical: yes ({compared} compared)")
    print(f"{'path':<10} {'median ms':>10} {'peak MiB':>10}")
    for p in PATHS:
        print(f"{p:<10} {secs[p] * 1e3:>10.1f} {peaks[p]['peak_mib']:>10.1f}")
    speedup = secs["naive"] / secs["box-local"]
    mem_ratio = peaks["naive"]["peak_mib"] / max(peaks["box-local"]["peak_mib"], 1e-3)
    print(f"speed-up {speedup:.0f}x (goal >= 50x: {'met' if speedup >= 50 else 'NOT met'}); "
          f"peak memory {mem_ratio:.0f}x lower (goal >= 20x: {'met' if mem_ratio >= 20 else 'NOT met'}); "
          f"peak via {peaks['naive']['method']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
