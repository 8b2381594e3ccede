"""Benchmark: the bare model forward in its variants, side by side in one process.

Same bundle model (`build_model(paste_masks=False)`, as the inference actor builds it), same
batches of tiles (synthetic scene tiles read as the pipeline reads them, or random uint8 with
`--random`), variants interleaved rep by rep after a warm-up of each, medians:
  eager:          float32, NCHW, `torch.inference_mode` (what the actor runs on CPU);
  channels_last:  the model and the batch in `torch.channels_last` (NHWC convolutions);
on CUDA also:
  bf16:           eager under `torch.autocast("cuda", bfloat16)` (what the actor runs on GPU);
  bf16 + channels_last;
  bf16 + compile: `torch.compile(model.backbone)` (the convolutional trunk; the RoI heads have
                  data-dependent shapes), first call excluded as compilation.
Each variant's detections are compared with eager's (count and the largest box difference), so
a faster variant that changes the answer shows it. Printed: images/s per variant and the ratio to
eager; on CUDA also the GPU's busy share sampled by NVML during the timed reps when `pynvml` is
importable.

    python bench/forward.py                                  # CPU, resnet18_fpn, 512 px
    python bench/forward.py --backbone resnet50_fpn --tile-size 1024 --batch-size 8   # a GPU
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import threading
import time
from pathlib import Path

_HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(_HERE)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


class GpuBusy:
    """Share of NVML samples (every 50 ms) in which the GPU was running a kernel."""

    def __init__(self) -> None:
        import pynvml

        pynvml.nvmlInit()
        self.nvml = pynvml
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(torch_device_index())
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)
            time.sleep(0.05)

    def __enter__(self) -> "GpuBusy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mean(self) -> float:
        return statistics.mean(self.samples) if self.samples else float("nan")


def torch_device_index() -> int:
    import torch

    return torch.cuda.current_device()


def variants(device: str) -> list[str]:
    names = ["eager", "channels_last"]
    if device == "cuda":
        names += ["bf16", "bf16+channels_last", "bf16+compile"]
    return names


def prepare(variant: str, bundle, device: str):
    """(model, to_input) for one variant: a fresh model, and the batch conversion it wants."""
    import torch

    model = bundle.build_model(device=device, paste_masks=False).eval()
    channels_last = "channels_last" in variant
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if "compile" in variant:
        model.backbone = torch.compile(model.backbone)

    def to_input(batch):
        tensor = torch.from_numpy(batch).to(device).float()
        if channels_last:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return list(tensor)

    return model, to_input


def forward_all(model, to_input, batches, device: str, bf16: bool) -> tuple[float, list]:
    import torch

    outputs = []
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        for batch in batches:
            outputs.append([{k: v.float().cpu() if v.is_floating_point() else v.cpu()
                             for k, v in o.items() if k != "masks"}
                            for o in model(to_input(batch))])
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, outputs


def agreement(reference: list, outputs: list) -> str:
    """Detections of `outputs` against the reference's: total counts and the largest box shift
    among images whose counts agree."""
    import torch

    ref_n = sum(len(o["boxes"]) for batch in reference for o in batch)
    n = sum(len(o["boxes"]) for batch in outputs for o in batch)
    shift = 0.0
    for rb, ob in zip(reference, outputs):
        for r, o in zip(rb, ob):
            if len(r["boxes"]) == len(o["boxes"]) and len(r["boxes"]):
                shift = max(shift, float(torch.max(torch.abs(r["boxes"] - o["boxes"]))))
    return f"{n} detections vs {ref_n}, max box shift {shift:.2f} px"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--bundle", help="model bundle (default: a random-weight one)")
    parser.add_argument("--backbone", default="resnet18_fpn")
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--batches", type=int, default=4, help="batches per rep")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--variants", help="comma-separated subset of the variants")
    parser.add_argument("--workdir", default=os.path.join(ROOT, ".bench", "forward"))
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from model.bundle import load_bundle

    torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else args.device
    from bench import pipeline as bench
    workdir = Path(args.workdir)
    bundle_path = Path(args.bundle) if args.bundle else bench.ensure_bundle(
        workdir / f"bundle-{args.backbone}-{args.tile_size}", args.backbone, args.tile_size, 64,
        0.05)
    bundle = load_bundle(bundle_path)
    tile = bundle.tile_size
    # Scene tiles: a synthetic archive read as the pipeline reads it.
    per_side = 3
    archive = bench.ensure_archive(workdir / f"archive-{tile}", scenes=1,
                                   size=per_side * (tile - 64) + 64, seed=7)
    mean, _ = bundle.model.normalization()
    read, _, _ = bench.read_archive(archive, tile, 64, tuple(bundle.model.bands), tuple(mean),
                                    args.batch_size)
    images = np.concatenate([np.ascontiguousarray(b["image"]) for b in read])
    need = args.batches * args.batch_size
    images = np.concatenate([images] * (need // len(images) + 1))[:need]
    batches = [images[i:i + args.batch_size] for i in range(0, need, args.batch_size)]
    names = args.variants.split(",") if args.variants else variants(device)
    print(f"{bundle.model.backbone} ({bundle.model_id}), {need} tiles of {tile} px per rep in "
          f"batches of {args.batch_size}; {device}"
          + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else
             f", {torch.get_num_threads()} threads") + f"; torch {torch.__version__}", flush=True)

    prepared, reference, times, notes, busy = {}, None, {}, {}, {}
    for name in names:
        start = time.perf_counter()
        prepared[name] = prepare(name, bundle, device)
        model, to_input = prepared[name]
        warm, outputs = forward_all(model, to_input, batches[:1], device, "bf16" in name)
        print(f"warm-up {name}: {warm:.1f} s (set-up {time.perf_counter() - start - warm:.1f} s)",
              flush=True)
        times[name], busy[name] = [], []
    for rep in range(args.reps):
        for name in names:
            model, to_input = prepared[name]
            monitor = GpuBusy() if device == "cuda" and _has_nvml() else None
            if monitor:
                with monitor:
                    seconds, outputs = forward_all(model, to_input, batches, device, "bf16" in name)
                busy[name].append(monitor.mean)
            else:
                seconds, outputs = forward_all(model, to_input, batches, device, "bf16" in name)
            times[name].append(seconds)
            if name == names[0] and reference is None:
                reference = outputs
            notes[name] = agreement(reference, outputs)
            print(f"rep {rep + 1} {name:<20} {seconds:7.2f} s  {need / seconds:7.2f} images/s",
                  flush=True)
    base = statistics.median(times[names[0]])
    print(f"\n| variant | median s | images/s | vs {names[0]} | GPU busy | detections |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in names:
        med = statistics.median(times[name])
        gpu = f"{statistics.median(busy[name]):.0f}%" if busy[name] else "-"
        print(f"| {name} | {med:.2f} | {need / med:.2f} | {base / med:.2f}x | {gpu} | "
              f"{notes[name]} |")
    return 0


def _has_nvml() -> bool:
    return importlib.util.find_spec("pynvml") is not None


if __name__ == "__main__":
    sys.exit(main())
