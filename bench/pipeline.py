"""Benchmark: end-to-end `maskray infer` throughput against the bare batched forward, and peak RSS
of a small and a huge scene.

Throughput (one process, one run, same machine): a synthetic archive (`pipeline.synth`, cached in
the work directory) of at least 64 tiles and a random-weight bundle (`maskray model init`, resize
off: min_size = max_size = tile size, so the model sees tiles at native size), then, interleaved
rep by rep (bare, pipeline, bare, pipeline, ...) after a warm-up of each:
  bare forward: the bundle's model (`build_model(paste_masks=False)`, NHWC when
      `infer.channels_last`, as the actor builds it) in
      this process, with the actor's torch thread count, over every tile of the archive read
      beforehand (not timed) as float32 batches of `--batch-size`, under `torch.inference_mode`;
  pipeline: `maskray infer --model BUNDLE --input ARCHIVE --output FRESH` in-process, i.e.
      `model_source` + `run_inference` exactly as `jobs/infer.py` calls them, on the Ray
      instance this script starts (`ray.init(address="local", num_cpus=...)`), same batch size,
      one actor with `infer.actor_cpus` CPUs (the read tasks get the rest). Timed end to end
      (bundle check, listing, reading, forward, box-local encoding, stitching, Parquet, commit);
      the flow's own tiles/s (`RunSummary.flow`: first tile requested to last shard committed)
      is printed beside it.
Medians over `--reps`; the ratio pipeline / bare is the goal (>= 0.85).

Stage breakdown (always printed; cheap): the stages timed one by one in this process on the same
tiles: plan + windowed read per tile, forward per batch (the bare reps), box-local encoding per
batch (on the bare forward's own outputs), driver stitch + rows + Parquet + commit of the whole
archive (the same `ShardAssembler` / `ShardWriter` the driver runs), and a model load (what each
run's actor does before its first batch). Whatever the pipeline's wall time holds beyond the
actor's serial path is Ray start-up, scheduling and waiting. `--trace` (auto: when the goal is
missed) adds one more pipeline run, not among the timed ones, with the stages timed inside Ray:
read tasks, the actor's start, each call (forward and encode apart), the driver's shard commits.

Peak RSS: for each of `--rss-sizes` a single-scene archive (`density` low so the labels stay
small) and `maskray infer --predictor labels:...` (the labels replay, so the model's CPU cost does
not dominate) in a fresh subprocess with its own local Ray; the RSS of the whole process tree
(driver + Ray workers + Ray's own daemons) is summed every `--rss-interval` s and its maximum kept
(a spike shorter than the interval can be missed). The goal: the largest scene's peak at most
1.3x the smallest's. The summed RSS counts a shared page once per process that maps it (Ray's
object store pages show up in the producer's and the consumer's RSS), so the summed PSS (sampled
10x less often) is printed beside it. `--rss-constant-objects` replays a seeded random
(smallest / size)^2 of each scene's objects instead of all of them: the same pixels with about
as many instances as the smallest scene, which separates what memory owes to pixels from what it
owes to instances (DESIGN.md bounds the stitch by instances, never by pixels).

Archives and bundles are cached in `--workdir` under names made of their options only (the
20 000 px scene takes ~8 min to generate here); delete the directory after the generator changes.

    python bench/pipeline.py                    # from the repository root; ~20 min on 2 cores
    python bench/pipeline.py --skip-rss --reps 5 --backbone resnet18_fpn
    python bench/pipeline.py --skip-throughput --rss-sizes 5000,20000
    python bench/pipeline.py --skip-throughput --rss-sizes 5000,10000,20000,40000 \
        --rss-constant-objects --rss-timeout 3000

Run it from the repository root (Ray ships the driver's working directory to its workers).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(_HERE)
# Run as a script, sys.path[0] is bench/, where this file would shadow the `pipeline` package -
# here and in every Ray worker (Ray hands the driver's script directory to its workers).
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import psutil  # noqa: E402

THROUGHPUT_GOAL = 0.85
RSS_GOAL = 1.3
MIN_TILES = 64
CLASSES = ("building", "vehicle", "ship", "tree")


# ----------------------------------------------------------------------------- setup


def load_avg() -> float:
    return os.getloadavg()[0]


def ensure_archive(path: Path, **options) -> Path:
    """A synthetic archive at `path`, generated once (synth.json is written last)."""
    from pipeline.synth import SynthConfig, generate_archive

    if not (path / "synth.json").exists():
        shutil.rmtree(path, ignore_errors=True)
        start = time.perf_counter()
        summary = generate_archive(path, SynthConfig(**options))
        print(f"setup: {summary.line()} ({time.perf_counter() - start:.0f} s)", flush=True)
    return path


def ensure_bundle(path: Path, backbone: str, tile: int, overlap: int, score_thresh: float) -> Path:
    from jobs import model as model_job

    if not (path / "bundle.json").exists():
        code = model_job.main([
            "init", "--out", str(path), "--quiet", "--seed", "0", "--overwrite",
            "--set", f"model.backbone={backbone}",
            "--set", f"model.classes=[{', '.join(CLASSES)}]",
            "--set", f"model.min_size={tile}", "--set", f"model.max_size={tile}",
            "--set", f"model.box_score_thresh={score_thresh}",
            "--set", f"tiling.tile_size={tile}", "--set", f"tiling.overlap={overlap}"])
        if code:
            raise SystemExit(f"maskray model init failed (exit {code})")
    return path


def scene_uris(archive: Path) -> list[str]:
    return sorted(str(p) for p in (archive / "scenes").glob("*.tif"))


def columns(rows: list[dict]) -> dict[str, np.ndarray]:
    """Tile rows -> the numpy batch Ray Data would hand a map_batches function."""
    out = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        if isinstance(values[0], str):
            out[key] = np.array(values, dtype=object)
        else:
            out[key] = np.array(values)
    return out


def read_archive(archive: Path, tile: int, overlap: int, bands, fill, batch_size: int):
    """Plan and read every tile as the pipeline's CPU stages do, in batches of `batch_size`.

    Returns (batches with `image`, seconds planning, seconds reading)."""
    from pipeline.config import InferConfig
    from pipeline.tiles import plan_scene, read_tiles

    start = time.perf_counter()
    rows = []
    for uri in scene_uris(archive):
        scene_id = os.path.relpath(uri, archive).replace(os.sep, "/")
        rows += plan_scene({"scene_id": scene_id, "uri": uri, "shard": 0}, tile, overlap, bands,
                           InferConfig().max_pixels)
    planned = time.perf_counter()
    batches = [read_tiles(columns(rows[i:i + batch_size]), bands, fill)
               for i in range(0, len(rows), batch_size)]
    return batches, planned - start, time.perf_counter() - planned


# ----------------------------------------------------------------------------- bare forward


def bare_forward(model, images: list[np.ndarray], device: str = "cpu"):
    """One pass over every batch: (seconds, outputs). On CUDA as the actor runs it: uint8 tiles
    cross to the device and become float32 there, bf16 autocast; the clock stops after a sync."""
    import torch

    outputs = []
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16,
                                                 enabled=device == "cuda"):
        for batch in images:
            outputs.append(model(list(torch.from_numpy(batch).to(device).float())))
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, outputs


# ----------------------------------------------------------------------------- pipeline


def run_pipeline(bundle: Path, input_uri: str, output: Path, overrides: list[str]):
    """`maskray infer --model BUNDLE --input ... --output ...` as jobs/infer.py runs it, on the
    Ray instance already started. Returns (wall seconds, RunSummary)."""
    from pipeline.config import load_config
    from pipeline.infer import model_source, run_inference

    shutil.rmtree(output, ignore_errors=True)
    start = time.perf_counter()
    cfg = load_config(None, overrides)
    source = model_source(str(bundle), cfg)
    summary = run_inference(source, input_uri, str(output), cfg)
    wall = time.perf_counter() - start
    if summary.scenes_error or summary.flow.tiles == 0:
        raise SystemExit(f"pipeline run failed: {summary.line()} {summary.errors[:3]}")
    return wall, summary


# ----------------------------------------------------------------------------- trace


def _trace_write(directory: str, record: dict) -> None:
    with open(os.path.join(directory, f"{os.getpid()}.jsonl"), "a") as f:
        f.write(json.dumps({"pid": os.getpid(), **record}) + "\n")


def traced_read_tiles(trace_dir: str):
    """`pipeline.tiles.read_tiles`, recording its wall-clock interval (diagnostic run only)."""
    from pipeline import tiles

    def read_tiles(batch, bands, fill):
        start = time.time()
        out = tiles.read_tiles(batch, bands, fill)
        _trace_write(trace_dir, {"kind": "read", "start": start, "end": time.time(),
                                 "rows": len(batch["x0"])})
        return out

    return read_tiles


def traced_predictor_class():
    """A TilePredictor that records its construction and every call, forward and encode apart.
    Built in a function so that importing this module does not import torch."""
    import torch

    from pipeline.masks import encode_box_masks
    from pipeline.predictor import TilePredictor

    class TracedTilePredictor(TilePredictor):
        def __init__(self, trace_dir: str, **kwargs):
            start = time.time()
            self.trace_dir, self.forward_s, self.encode_s = trace_dir, 0.0, 0.0
            super().__init__(**kwargs)
            _trace_write(trace_dir, {"kind": "init", "start": start, "end": time.time(),
                                     "threads": torch.get_num_threads()})

        def __call__(self, batch):
            start = time.time()
            self.forward_s = self.encode_s = 0.0
            out = super().__call__(batch)
            _trace_write(self.trace_dir, {"kind": "call", "start": start, "end": time.time(),
                                          "rows": len(batch["x0"]), "forward": self.forward_s,
                                          "encode": self.encode_s})
            return out

        def _predict(self, images):
            t0 = time.perf_counter()
            tensor = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).float()
            with torch.inference_mode():
                outputs = self.model(list(tensor))
            t1 = time.perf_counter()
            size = (images.shape[2], images.shape[3])
            dets = [encode_box_masks(o["masks"].float().cpu(), o["boxes"].float().cpu(),
                                     o["labels"].cpu(), o["scores"].float().cpu(), size,
                                     self.mask_threshold) for o in outputs]
            self.forward_s += t1 - t0
            self.encode_s += time.perf_counter() - t1
            return dets

    return TracedTilePredictor


def traced_pipeline(bundle: Path, input_uri: str, output: Path, overrides: list[str],
                    trace_dir: Path) -> dict:
    """One extra pipeline run with timed stages: the read tasks (read_tiles wrapped), the actor
    (TilePredictor subclassed: construction, each call, forward and encode apart), the driver
    (each shard's stitch + commit). Same graph and resources as the timed runs."""
    from pipeline import dataflow
    from pipeline import infer as infer_mod
    from pipeline.config import load_config

    shutil.rmtree(trace_dir, ignore_errors=True)
    trace_dir.mkdir(parents=True)
    shutil.rmtree(output, ignore_errors=True)
    shard_s: list[tuple[float, float]] = []
    original_call, original_read = infer_mod.ShardWriter.__call__, dataflow.read_tiles

    def timed_call(self, results):
        start = time.time()
        original_call(self, results)
        shard_s.append((start, time.time()))

    t0 = time.time()
    cfg = load_config(None, overrides)
    source = infer_mod.model_source(str(bundle), cfg)
    spec = source.spec
    traced = dataflow.PredictorSpec(traced_predictor_class(),
                                    {"trace_dir": str(trace_dir), **spec.kwargs},
                                    spec.bands, spec.fill, spec.uses_gpu)
    infer_mod.ShardWriter.__call__ = timed_call
    dataflow.read_tiles = traced_read_tiles(str(trace_dir))
    try:
        summary = infer_mod.run_inference(
            infer_mod.Source(traced, source.model_id, source.class_names, source.model_config),
            input_uri, str(output), cfg)
    finally:
        infer_mod.ShardWriter.__call__, dataflow.read_tiles = original_call, original_read
    t1 = time.time()
    records = [json.loads(line) for f in sorted(trace_dir.glob("*.jsonl"))
               for line in f.read_text().splitlines()]
    return {"t0": t0, "t1": t1, "flow_s": summary.flow.seconds, "tiles": summary.flow.tiles,
            "records": records, "shards": shard_s}


def print_trace(tr: dict, bare_s: float, batches: int) -> None:
    t0, wall = tr["t0"], tr["t1"] - tr["t0"]
    reads = sorted((r for r in tr["records"] if r["kind"] == "read"), key=lambda r: r["start"])
    calls = sorted((r for r in tr["records"] if r["kind"] == "call"), key=lambda r: r["start"])
    inits = [r for r in tr["records"] if r["kind"] == "init"]
    print()
    print(f"traced pipeline run (one extra run, stages timed inside Ray; seconds from the run's "
          f"start): wall {wall:.1f} s, flow {tr['flow_s']:.1f} s, {tr['tiles']} tiles")
    if reads:
        busy = sum(r["end"] - r["start"] for r in reads)
        print(f"  read tasks: {len(reads)} batches in {len({r['pid'] for r in reads})} "
              f"process(es), busy {busy:.1f} s, {busy / sum(r['rows'] for r in reads) * 1e3:.1f} "
              f"ms/tile; first start {reads[0]['start'] - t0:.1f}, last end "
              f"{reads[-1]['end'] - t0:.1f}")
    for r in inits:
        print(f"  actor pid {r['pid']}: constructor {r['start'] - t0:.1f} .. {r['end'] - t0:.1f} "
              f"({r['end'] - r['start']:.1f} s bundle check + model build; torch threads "
              f"{r['threads']})")
    if not calls:
        return
    busy = sum(c["end"] - c["start"] for c in calls)
    fwd = sum(c["forward"] for c in calls)
    enc = sum(c["encode"] for c in calls)
    span = calls[-1]["end"] - calls[0]["start"]
    print(f"  actor calls: {len(calls)} (rows per call {sorted({c['rows'] for c in calls})}); "
          f"first start {calls[0]['start'] - t0:.1f}, last end {calls[-1]['end'] - t0:.1f}; "
          f"forward {fwd:.1f} s ({fwd / len(calls):.2f} s/call; bare {bare_s / batches:.2f} "
          f"s/batch), encode {enc:.2f} s, other in call {busy - fwd - enc:.2f} s")
    for start, end in tr["shards"]:
        print(f"  driver shard stitch+commit: {start - t0:.1f} .. {end - t0:.1f} "
              f"({end - start:.2f} s)")
    head = calls[0]["start"] - t0
    tail = tr["t1"] - calls[-1]["end"]
    print(f"  where the wall time goes: before the first batch {head:.1f} s "
          f"({100 * head / wall:.0f}%: bundle check, listing, Ray Data start, actor process "
          f"start + imports + model build); actor forward {fwd:.1f} s ({100 * fwd / wall:.0f}%; "
          f"{100 * (fwd / bare_s - 1):+.0f}% vs the bare forward); encode {enc:.1f} s; actor idle "
          f"between calls {span - busy:.1f} s; after the last batch {tail:.1f} s")


# ----------------------------------------------------------------------------- breakdown


def time_encode(batches, outputs, mask_threshold: float) -> tuple[float, int]:
    """Seconds of the actor's post-forward work (box-local RLE + scene placement) over every
    batch, on the bare forward's outputs; and the detections it produced."""
    from pipeline.masks import encode_box_masks
    from pipeline.predictor import place_in_scene

    start, count = time.perf_counter(), 0
    for batch, outs in zip(batches, outputs):
        size = (batch["image"].shape[2], batch["image"].shape[3])
        for row, o in enumerate(outs):
            dets = encode_box_masks(o["masks"].float().cpu(), o["boxes"].float().cpu(),
                                    o["labels"].cpu(), o["scores"].float().cpu(), size,
                                    mask_threshold)
            count += len(place_in_scene(dets, batch, row))
    return time.perf_counter() - start, count


def time_driver(batches, outputs, bundle: Path, overrides: list[str], output: Path,
                mask_threshold: float) -> tuple[float, int]:
    """Seconds of the driver's side for the whole archive (shard assembly, stitching, rows,
    Parquet, commit) fed with the rows the actor would return; and the instances written."""
    from pipeline import commit
    from pipeline.config import load_config
    from pipeline.infer import RunSummary, ShardWriter, model_source
    from pipeline.masks import encode_box_masks
    from pipeline.predictor import place_in_scene
    from pipeline.scenes import SceneRef
    from pipeline.shards import ShardAssembler

    cfg = load_config(None, overrides)
    source = model_source(str(bundle), cfg)
    rows = []
    for batch, outs in zip(batches, outputs):
        size = (batch["image"].shape[2], batch["image"].shape[3])
        for i, o in enumerate(outs):
            dets = encode_box_masks(o["masks"].float().cpu(), o["boxes"].float().cpu(),
                                    o["labels"].cpu(), o["scores"].float().cpu(), size,
                                    mask_threshold)
            row = {k: v[i] for k, v in batch.items() if k != "image"}
            row["detections"] = place_in_scene(dets, batch, i)
            rows.append(row)
    scenes = {}
    for r in rows:
        scenes.setdefault(str(r["scene_id"]), str(r["uri"]))
    shutil.rmtree(output, ignore_errors=True)
    fs, root = commit.open_root(str(output))
    summary = RunSummary(commit.new_run_id(), source.model_id)
    refs = {sid: SceneRef(sid, uri, os.path.getsize(uri), os.path.getmtime(uri))
            for sid, uri in scenes.items()}
    writer = ShardWriter(fs, root, source, cfg, summary, refs, {})
    start = time.perf_counter()
    assembler = ShardAssembler([(sid, uri, 0) for sid, uri in sorted(scenes.items())])
    for row in rows:
        for shard in assembler.add(row):
            writer(shard)
    return time.perf_counter() - start, summary.instances


# ----------------------------------------------------------------------------- peak RSS


def _kind(proc: psutil.Process, driver_pid: int) -> str:
    if proc.pid == driver_pid:
        return "driver"
    try:
        cmd = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "ray system"
    return "workers" if cmd.startswith("ray::") or "default_worker.py" in cmd else "ray system"


def measure_tree_rss(cmd: list[str], log_path: Path, interval: float, timeout: float) -> dict:
    """Run `cmd`; sample the RSS of it and all its descendants every `interval` s. Returns the
    maximum of the sum (MiB), its split at that instant, each kind's own maximum, wall seconds,
    and the maximum of the summed PSS (sampled 10x less often), which counts a shared page
    (Ray's object store, shared libraries) once instead of once per process mapping it."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    kinds: dict[int, str] = {}
    seen: dict[int, psutil.Process] = {}
    peak, split, own = 0, {}, {"driver": 0, "workers": 0, "ray system": 0}
    samples, timed_out, peak_pss, pss_every = 0, False, 0, 10
    with open(log_path, "w") as log_file:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                tree = [root] + root.children(recursive=True)
            except psutil.NoSuchProcess:
                break
            sums = {"driver": 0, "workers": 0, "ray system": 0}
            full = samples % pss_every == 0  # smaps is slow: PSS on every `pss_every`th sample
            pss = 0
            for p in tree:
                try:
                    if full:
                        info = p.memory_full_info()
                        pss += info.pss
                    else:
                        info = p.memory_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                seen.setdefault(p.pid, p)
                kind = kinds.setdefault(p.pid, _kind(p, proc.pid))
                sums[kind] += info.rss
            samples += 1
            peak_pss = max(peak_pss, pss)
            total = sum(sums.values())
            if total > peak:
                peak, split = total, dict(sums)
            for kind, value in sums.items():
                own[kind] = max(own[kind], value)
            if time.perf_counter() - start > timeout:
                timed_out = True
                break
            time.sleep(interval)
        if timed_out:  # stop what this run started, by pid, children first
            for p in reversed(list(seen.values())):
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
        proc.wait()
        wall = time.perf_counter() - start
    # Ray's daemons are shut down by the driver's exit hook; anything of ours still alive is a
    # leak worth knowing about (and ending).
    time.sleep(2)
    leftover = [p.pid for p in seen.values() if p.pid != proc.pid and p.is_running()
                and p.status() != psutil.STATUS_ZOMBIE]
    for pid in leftover:
        try:
            psutil.Process(pid).terminate()
        except psutil.NoSuchProcess:
            pass
    mib = 1024 ** 2
    return {"peak_mib": peak / mib, "peak_pss_mib": peak_pss / mib, "split_mib": {k: v / mib for k, v in split.items()},
            "own_peak_mib": {k: v / mib for k, v in own.items()}, "wall_s": wall,
            "returncode": proc.returncode, "timed_out": timed_out, "samples": samples,
            "processes": len(seen), "leftover": leftover}


def rss_run(size: int, args, workdir: Path, keep: float = 1.0) -> dict:
    """Peak RSS of the labels replay over one `size` px scene; `keep` < 1 replays that random
    fraction of the scene's objects (the same pixels, fewer instances)."""
    start = time.perf_counter()
    archive = ensure_archive(workdir / f"rss-{size}px-d{args.rss_density:g}-seed{args.seed}",
                             scenes=1, size=size, seed=args.seed, density=args.rss_density)
    made = time.perf_counter() - start
    output = workdir / "runs" / f"rss-{size}"
    shutil.rmtree(output, ignore_errors=True)
    labels = archive / "annotations.json"
    if keep < 1.0:
        labels = subsample_labels(labels, keep, workdir / "runs" / f"rss-{size}-labels.json",
                                  args.seed)
    cmd = [sys.executable, "-m", "jobs.infer",
           "--predictor", f"labels:{labels}",
           "--input", str(archive), "--output", str(output),
           "--set", f"tiling.tile_size={args.rss_tile_size}",
           "--set", f"tiling.overlap={args.overlap}", "--quiet"]
    log_path = workdir / "runs" / f"rss-{size}.log"
    result = measure_tree_rss(cmd, log_path, args.rss_interval, args.rss_timeout)
    lines = [ln for ln in log_path.read_text(errors="replace").splitlines()
             if ln.startswith("maskray")]
    result.update(size=size, line=lines[-1] if lines else "", synth_s=made, keep=keep,
                  file_mib=sum(p.stat().st_size for p in (archive / "scenes").glob("*.tif")) / 2**20)
    from pipeline.tiling import grid_windows

    result["tiles"] = len(grid_windows(size, size, args.rss_tile_size, args.overlap))
    return result


# ----------------------------------------------------------------------------- main


def throughput(args, workdir: Path) -> dict:
    import ray
    import torch

    from model.bundle import load_bundle
    from pipeline.config import InferConfig
    from pipeline.tiling import grid_windows

    tiles_total = args.scenes * len(grid_windows(args.scene_size, args.scene_size,
                                                 args.tile_size, args.overlap))
    if tiles_total < args.min_tiles:
        raise SystemExit(f"the archive would hold {tiles_total} tiles; the benchmark needs at "
                         f"least {args.min_tiles}: raise --scenes or --scene-size")
    archive = ensure_archive(workdir / f"archive-{args.scenes}x{args.scene_size}-seed{args.seed}",
                             scenes=args.scenes, size=args.scene_size, seed=args.seed)
    bundle = ensure_bundle(
        workdir / f"bundle-{args.backbone}-{args.tile_size}-{args.overlap}-s{args.score_thresh:g}",
        args.backbone, args.tile_size, args.overlap, args.score_thresh)
    overrides = [f"tiling.tile_size={args.tile_size}", f"tiling.overlap={args.overlap}",
                 f"infer.batch_size={args.batch_size}", f"infer.actor_cpus={args.actor_cpus:g}",
                 f"infer.num_actors={args.actors}", f"infer.device={args.device}"]

    # The actor's torch threads, pinned with infer.threads so the bare forward uses as many.
    threads = max(1, round(args.actor_cpus))
    overrides.append(f"infer.threads={threads}")
    torch.set_num_threads(threads)
    meta = load_bundle(bundle)
    mean, _ = meta.model.normalization()
    start = time.perf_counter()
    model = meta.build_model(device=args.device, paste_masks=False)
    if InferConfig().channels_last:  # as the actor builds it (infer.channels_last)
        model = model.to(memory_format=torch.channels_last)
    load_s = time.perf_counter() - start
    batches, plan_s, read_s = read_archive(archive, args.tile_size, args.overlap,
                                           tuple(meta.model.bands), tuple(mean), args.batch_size)
    images = [np.ascontiguousarray(b["image"]) for b in batches]
    n_tiles = sum(len(b) for b in images)
    assert n_tiles == tiles_total, (n_tiles, tiles_total)

    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False,
             configure_logging=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    print(f"setup: {n_tiles} tiles of {args.tile_size} px from {args.scenes} scenes; "
          f"bundle {meta.model_id} ({args.backbone}); Ray {ray.__version__} with "
          f"{ray.cluster_resources().get('CPU', 0):g} CPUs; torch threads {threads}", flush=True)
    runs = workdir / "runs"
    try:
        # Warm-up: one batch of the bare forward; one pipeline run over the first scene.
        bare_forward(model, images[:1], args.device)
        first = scene_uris(archive)[0]
        wall, summary = run_pipeline(bundle, first, runs / "warmup", overrides)
        print(f"warm-up: pipeline on 1 scene ({summary.flow.tiles} tiles) {wall:.1f} s", flush=True)
        bare_s, wall_s, flow_s, loads, outputs, last = [], [], [], [], None, None
        for rep in range(args.reps):
            loads.append(load_avg())
            seconds, outputs = bare_forward(model, images, args.device)
            bare_s.append(seconds)
            loads.append(load_avg())
            wall, last = run_pipeline(bundle, str(archive), runs / "pipeline", overrides)
            if last.flow.tiles != n_tiles:
                raise SystemExit(f"the pipeline saw {last.flow.tiles} tiles, expected {n_tiles}")
            wall_s.append(wall)
            flow_s.append(last.flow.seconds)
            print(f"rep {rep + 1}/{args.reps}: bare {seconds:.1f} s, pipeline {wall:.1f} s "
                  f"(flow {last.flow.seconds:.1f} s), load {loads[-2]:.2f}/{loads[-1]:.2f}",
                  flush=True)
        loads.append(load_avg())
        ratio = statistics.median(bare_s) / statistics.median(wall_s)
        trace = None
        if args.trace == "always" or (args.trace == "auto" and ratio < THROUGHPUT_GOAL):
            print("trace: one more pipeline run with its stages timed ...", flush=True)
            trace = traced_pipeline(bundle, str(archive), runs / "traced", overrides,
                                    runs / "trace")
    finally:
        ray.shutdown()
    encode_s, detections = time_encode(batches, outputs, meta.model.mask_threshold)
    driver_s, instances = time_driver(batches, outputs, bundle, overrides, runs / "driver-only",
                                      meta.model.mask_threshold)
    return {"tiles": n_tiles, "batches": len(images), "bare": bare_s, "wall": wall_s,
            "flow": flow_s, "loads": loads, "threads": threads, "model_id": meta.model_id,
            "plan_s": plan_s, "read_s": read_s, "load_s": load_s, "encode_s": encode_s,
            "detections": detections, "driver_s": driver_s, "instances": instances,
            "pipeline_instances": last.instances, "trace": trace}


def print_throughput(t: dict, args) -> float:
    n, nb = t["tiles"], t["batches"]
    bare, wall, flow = (statistics.median(t[k]) for k in ("bare", "wall", "flow"))
    print()
    print(f"archive {args.scenes} x {args.scene_size} px, tile {args.tile_size} px (overlap "
          f"{args.overlap}) -> {n} tiles; {args.backbone} (random weights, box score >= "
          f"{args.score_thresh:g}, model {t['model_id']}), batch {args.batch_size}; "
          f"{args.actors} actor x {args.actor_cpus:g} CPU, torch threads {t['threads']}, Ray "
          f"num_cpus {args.num_cpus}; reps {args.reps} (+ warm-up), medians")
    print(f"machine: {psutil.cpu_count()} cores; 1-min load avg during the timed reps "
          f"{min(t['loads']):.2f} .. {max(t['loads']):.2f}")
    print(f"{'path':<24} {'median s':>9} {'tiles/s':>8} {'vs bare':>8}   all reps (s)")
    for name, sec, reps in (("bare forward", bare, t["bare"]),
                            ("pipeline end-to-end", wall, t["wall"]),
                            ("pipeline flow only", flow, t["flow"])):
        print(f"{name:<24} {sec:>9.2f} {n / sec:>8.3f} {bare / sec:>8.3f}   "
              + " ".join(f"{s:.1f}" for s in reps))
    ratio = bare / wall
    print(f"throughput ratio pipeline / bare forward: end-to-end {ratio:.3f} (goal >= "
          f"{THROUGHPUT_GOAL}: {'met' if ratio >= THROUGHPUT_GOAL else 'NOT met'}), "
          f"flow {bare / flow:.3f}")

    # Stage breakdown: each stage alone, in this process, on the same tiles.
    forward_b = bare / nb
    encode_b = t["encode_s"] / nb
    actor_path = t["load_s"] + bare + t["encode_s"]
    print()
    print(f"stage breakdown (serial, in this process; {t['detections']} detections = "
          f"{t['detections'] / n:.1f} per tile, {t['instances']} instances after stitching, "
          f"pipeline wrote {t['pipeline_instances']})")
    print(f"{'stage':<40} {'per unit':>12} {'archive s':>10} {'% of e2e':>9}")
    rows = [("plan (scene headers)", f"{t['plan_s'] / args.scenes * 1e3:.1f} ms/scene",
             t["plan_s"]),
            ("read_tiles (windowed read + fill)", f"{t['read_s'] / n * 1e3:.1f} ms/tile",
             t["read_s"]),
            ("model load (each run's actor start)", "", t["load_s"]),
            ("forward (bare, median)", f"{forward_b:.3f} s/batch", bare),
            ("box-local encode + place (actor)", f"{encode_b * 1e3:.1f} ms/batch", t["encode_s"]),
            ("driver: assemble+stitch+rows+commit", f"{t['driver_s'] / n * 1e3:.1f} ms/tile",
             t["driver_s"])]
    for name, unit, sec in rows:
        print(f"{name:<40} {unit:>12} {sec:>10.2f} {100 * sec / wall:>8.1f}%")
    rest = wall - actor_path
    print(f"{'rest (Ray start-up, scheduling, waits)':<40} {'':>12} {rest:>10.2f} "
          f"{100 * rest / wall:>8.1f}%   = e2e - (load + forward + encode)")
    if t["trace"]:
        print_trace(t["trace"], bare, nb)
    if ratio < THROUGHPUT_GOAL:
        print(f"goal missed: the bare forward needs {bare:.1f} s; the pipeline {wall:.1f} s, "
              f"{wall - bare:.1f} s more" + ("; see the traced run above for where it goes"
                                              if t["trace"] else ""))
    return ratio


def subsample_labels(src: Path, keep: float, dst: Path, seed: int) -> Path:
    """Write `src` (COCO) with a seeded random `keep` fraction of its annotations to `dst`."""
    import json
    import random

    coco = json.loads(src.read_text())
    anns = coco["annotations"]
    coco["annotations"] = sorted(random.Random(seed).sample(anns, round(len(anns) * keep)),
                                 key=lambda a: a["id"])
    dst.write_text(json.dumps(coco))
    return dst


def print_rss(results: list[dict], args) -> None:
    print()
    print(f"peak RSS of `maskray infer --predictor labels:...` (tile {args.rss_tile_size} px, "
          f"density {args.rss_density:g}), process tree sampled every {args.rss_interval:g} s; "
          f"MiB" + ("; objects kept in proportion (smallest / size)^2, so every scene has about "
                    "as many as the smallest" if args.rss_constant_objects else ""))
    print(f"{'scene px':>9} {'tiles':>6} {'file MiB':>9} {'wall s':>7} {'peak tree':>10} "
          f"{'driver':>8} {'workers':>8} {'ray sys':>8} {'tree PSS':>9}   own peaks d/w/r")
    for r in results:
        s, o = r["split_mib"], r["own_peak_mib"]
        print(f"{r['size']:>9} {r['tiles']:>6} {r['file_mib']:>9.0f} {r['wall_s']:>7.1f} "
              f"{r['peak_mib']:>10.0f} {s.get('driver', 0):>8.0f} {s.get('workers', 0):>8.0f} "
              f"{s.get('ray system', 0):>8.0f} {r['peak_pss_mib']:>9.0f}   "
              f"{o['driver']:.0f}/{o['workers']:.0f}/"
              f"{o['ray system']:.0f}")
    for r in results:
        status = ("TIMED OUT" if r["timed_out"] else f"exit {r['returncode']}")
        print(f"  {r['size']} px: {status}, {r['samples']} samples, {r['processes']} processes; "
              f"{r['line'] or '(no summary line)'}"
              + (f"; left running after exit, ended: {r['leftover']}" if r["leftover"] else ""))
    ok = [r for r in results if r["returncode"] == 0 and not r["timed_out"]]
    if len(ok) >= 2:
        small, large = ok[0], ok[-1]
        ratio = large["peak_mib"] / small["peak_mib"]
        worker = (large["own_peak_mib"]["driver"] + large["own_peak_mib"]["workers"]) / max(
            small["own_peak_mib"]["driver"] + small["own_peak_mib"]["workers"], 1e-9)
        pss = large["peak_pss_mib"] / max(small["peak_pss_mib"], 1e-9)
        print(f"peak RSS ratio {large['size']} px / {small['size']} px: whole tree {ratio:.2f} "
              f"(goal <= {RSS_GOAL}: {'met' if ratio <= RSS_GOAL else 'NOT met'}); driver + "
              f"workers (own peaks) {worker:.2f}; tree PSS {pss:.2f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--backbone", default="mobilenet_v3_fpn",
                        choices=["mobilenet_v3_fpn", "resnet18_fpn", "resnet50_fpn"])
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--scenes", type=int, default=4)
    # 4 scenes of 832 px at tile 256 / overlap 64: a 4 x 4 grid each, 64 tiles.
    parser.add_argument("--scene-size", type=int, default=832)
    parser.add_argument("--min-tiles", type=int, default=MIN_TILES, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=7, help="synthetic archive seed")
    parser.add_argument("--score-thresh", type=float, default=0.05, help="model.box_score_thresh")
    parser.add_argument("--batch-size", type=int, default=4, help="infer.batch_size")
    parser.add_argument("--actors", type=int, default=1, help="infer.num_actors")
    parser.add_argument("--actor-cpus", type=float, default=1.0,
                        help="infer.actor_cpus (also the torch threads, as in the actor)")
    parser.add_argument("--num-cpus", type=int, default=2, help="ray.init(num_cpus=...)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="infer.device, and where the bare forward runs (bf16 on cuda)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--trace", choices=["auto", "always", "never"], default="auto",
                        help="one extra pipeline run with its stages timed inside Ray "
                             "(auto: when the throughput goal is missed)")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--rss-sizes", default="5000,20000", help="scene sides, comma-separated")
    parser.add_argument("--rss-tile-size", type=int, default=1024)
    parser.add_argument("--rss-density", type=float, default=0.2)
    parser.add_argument("--rss-constant-objects", action="store_true",
                        help="replay only (smallest size / size)^2 of each scene's objects, so "
                             "memory is measured against pixels at a constant instance count")
    parser.add_argument("--rss-interval", type=float, default=0.2, help="seconds between samples")
    parser.add_argument("--rss-timeout", type=float, default=900.0,
                        help="seconds before an RSS run is stopped")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(),
                                                          "maskray-bench-pipeline"),
                        help="archives and bundles are cached here; runs are written here")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir).resolve()
    (workdir / "runs").mkdir(parents=True, exist_ok=True)
    os.chdir(ROOT)  # Ray adds the driver's working directory to its workers' sys.path
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    print(f"start: 1-min load avg {load_avg():.2f}, {psutil.cpu_count()} cores", flush=True)
    started = time.perf_counter()
    result = None
    if not args.skip_throughput:
        result = throughput(args, workdir)
    rss = []
    if not args.skip_rss:
        sizes = sorted(int(s) for s in args.rss_sizes.split(",") if s.strip())
        for size in sizes:
            keep = (sizes[0] / size) ** 2 if args.rss_constant_objects else 1.0
            print(f"rss: {size} px ...", flush=True)
            rss.append(rss_run(size, args, workdir, keep))
            r = rss[-1]
            print(f"rss: {size} px peak {r['peak_mib']:.0f} MiB in {r['wall_s']:.0f} s "
                  f"(synth {r['synth_s']:.0f} s)", flush=True)
    if result:
        print_throughput(result, args)
    if rss:
        print_rss(rss, args)
    print(f"total {time.perf_counter() - started:.0f} s; 1-min load avg at the end "
          f"{load_avg():.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
