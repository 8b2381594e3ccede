"""Benchmark: Mask R-CNN training throughput, plain PyTorch against Ray Train, on the same model,
data and machine, in one process run (CPU).

Every variant builds the same model from the same seed and trains it with `model.train`'s
`train_epoch` / `train_step` and the recipe's SGD + schedule on the same synthetic chips
(`maskray synth --chips`, augmentation on) in the same seeded order, RNG seeded at the first step:
  plain       no Ray: a `DataLoader` over `CocoChips` (`collate`, in-line decoding) in this
              process, torch threads = --cpus;
  ray loader  Ray Train `TorchTrainer` (Train V2), ONE worker holding all --cpus, running the
              identical loop with its own DataLoader. Isolates what Ray Train adds per step: the
              worker process, `prepare_model`, the train context, `ray.train.report` every
              --report-every steps;
  ray data    the same worker fed by Ray Data instead: `from_items` of the chip indices ->
              `map_batches(ChipDecoder)` (one actor, num_cpus 0 as the worker holds every CPU:
              decoding shares the cores, like the DataLoader's in-line decoding) ->
              `datasets={"train": ...}` -> `get_dataset_shard("train").iter_torch_batches(
              collate_fn=RowsToBatch())`. Ragged targets travel as Ray Data's own tensor
              columns, one row per chip: boxes (N, 4), labels (N,), masks (N, H, W), N varying.
              Ray stores a block whose rows agree in shape as a fixed-shape tensor column, other
              blocks as variable-shaped ones, and unifies the two when a batch spans blocks; the
              collate copies each array (Arrow's are read-only) into a tensor;
  ray ddp     (--skip-ddp) --cpus workers x 1 CPU, DDP over gloo, a DataLoader per worker over
              its share of the chip order; images of all workers counted, seconds of the slowest.
Only steady-state steps are timed, the same way in every variant: --warmup steps, then the clock
runs inside the loop from the end of the last warm-up step to the end of the last of --steps
steps (fetching batches included). Start-up (launch -> first batch in hand: Ray's worker
processes, imports, model, data pipeline) and each run's wall time are columns of their own.
Each of --reps repetitions runs every variant once, the order rotated from rep to rep, after
--settle s of pause.

OpenMP: every variant runs with OMP_WAIT_POLICY=PASSIVE unless the environment sets it
(OMP_WAIT_POLICY=ACTIVE .venv/bin/python bench/train.py to compare). With libgomp's default
(spin between parallel regions) on 2 cores shared with another job, the plain loop at 2 threads
was 3-5x slower than the identical loop in the Ray Train worker and used twice its CPU time;
with PASSIVE both ran at the same speed and CPU time.

Reading the table: img/s is the median over reps of timed images / timed seconds; "vs plain" is
that over the plain loop's median (ray ddp: --cpus processes x 1 thread against the plain
loop's --cpus threads); "all reps" shows the spread. plain, ray loader and ray data see the same
weights, images, order and RNG, so their mean losses agree: a check that they train the same
thing. Goal: Ray Train's overhead at most 15%, i.e. "ray loader" (and "ray data") vs plain
>= 0.85.

    .venv/bin/python bench/train.py              # from the repository root; ~10-15 min on 2 cores
    .venv/bin/python bench/train.py --chips 8 --chip-size 64 --steps 3 --warmup 1 --reps 1
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

_HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(_HERE)
# Run as a script, sys.path[0] is bench/, where bench/pipeline.py would shadow the `pipeline`
# package - here and in every Ray worker (Ray hands the driver's sys.path to its workers).
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
# One OpenMP wait policy for every variant, set before torch loads libgomp (the local Ray cluster
# started below inherits it): see the module docstring.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from ray.data.collate_fn import NumpyBatchCollateFn  # noqa: E402

GOAL = 0.85
CLASSES = ("building", "vehicle", "ship", "tree")
VARIANTS = ("plain", "ray loader", "ray data", "ray ddp")


def make_chips(directory: Path, count: int, size: int, seed: int) -> Path:
    """`maskray synth --chips` into `directory`; returns its annotations.json."""
    from jobs import synth as synth_job

    code = synth_job.main(["--out", str(directory), "--chips", "--count", str(count),
                           "--chip-size", str(size), "--seed", str(seed), "--quiet"])
    if code:
        raise SystemExit(f"maskray synth failed (exit {code})")
    return directory / "annotations.json"


def make_config(args):
    """The run's config: tests/jobs/test_train.py's SMALL_MODEL at --chip-size, --batch-size."""
    from pipeline.config import load_config

    s = args.chip_size
    return load_config(None, [
        f"model.backbone={args.backbone}", f"model.classes=[{', '.join(CLASSES)}]",
        f"model.min_size={s}", f"model.max_size={s}", "model.box_batch_size_per_image=64",
        "model.rpn_batch_size_per_image=64", f"tiling.tile_size={s}", f"tiling.overlap={s // 4}",
        f"train.batch_size={args.batch_size}", f"train.seed={args.seed}"])


def chip_order(count: int, length: int, seed: int) -> list[int]:
    """`length` chip indices: seeded permutations of range(count), one after another (epochs)."""
    rng = np.random.default_rng(seed)
    epochs = -(-length // count)
    return np.concatenate([rng.permutation(count) for _ in range(epochs)])[:length].tolist()


def open_chips(setup: dict, rank: int):
    """The training set as `maskray train` opens it (CocoChips, augmentation on)."""
    from model.datasets import open_training_set
    from pipeline.config import config_from_dict

    cfg = config_from_dict(setup["config"])
    return open_training_set(cfg, setup["data"], augment=True, seed=setup["seed"] + rank)


def make_loader(setup: dict, rank: int, world: int):
    """DataLoader over this rank's share of the chip order (in order, in-line decoding)."""
    from torch.utils.data import DataLoader

    from model.chips import collate

    return DataLoader(open_chips(setup, rank), batch_size=setup["batch"],
                      sampler=setup["order"][rank::world], collate_fn=collate)


def first_batch_marked(batches, marks: dict):
    """`batches`, noting the wall time at which the first one is in hand (end of start-up)."""
    for k, batch in enumerate(batches):
        if k == 0:
            marks["first_batch"] = time.time()
        yield batch


def run_steps(setup: dict, model, batches, rank: int, world: int, report=None) -> dict:
    """Warm-up + timed steps through `train_epoch`; {images, seconds, loss, first_batch, threads}.
    `report(step, losses)` runs after each timed step (inside the timed region)."""
    from model.train import make_optimizer, make_scheduler, train_epoch
    from pipeline.config import config_from_dict

    tc = config_from_dict(setup["config"]).train
    warmup, steps = setup["warmup"], setup["steps"]
    optimizer = make_optimizer(model, tc, world)
    scheduler = make_scheduler(optimizer, warmup + steps, tc)
    marks: dict = {}
    iterator = first_batch_marked(iter(batches), marks)  # a DataLoader draws a seed at iter()
    torch.manual_seed(setup["seed"] + 1 + rank)  # same RNG (RPN / RoI sampling) at step 1
    timed = {"losses": [], "start": time.perf_counter() if warmup == 0 else None}

    def on_step(step: int, losses: dict) -> None:
        if step == warmup:
            timed["start"] = time.perf_counter()
        elif step > warmup:
            timed["losses"].append(losses["loss"])
            if report is not None:
                report(step - warmup, losses)
            timed["end"] = time.perf_counter()

    stats = train_epoch(model, itertools.islice(iterator, warmup + steps), optimizer, scheduler,
                        None, torch.device("cpu"), tc.clip_norm, on_step)
    if stats.steps != warmup + steps:
        raise RuntimeError(f"only {stats.steps} batches for {warmup + steps} steps")
    return {"images": steps * setup["batch"], "seconds": timed["end"] - timed["start"],
            "loss": float(np.mean(timed["losses"])), "first_batch": marks["first_batch"],
            "threads": torch.get_num_threads()}


def run_plain(setup: dict) -> dict:
    """Variant plain: the loop in this process, no Ray."""
    from model.build import build_maskrcnn
    from pipeline.config import config_from_dict

    launched = time.time()
    torch.set_num_threads(setup["threads"])
    torch.manual_seed(setup["seed"])
    model = build_maskrcnn(config_from_dict(setup["config"]).model)
    out = run_steps(setup, model, make_loader(setup, 0, 1), 0, 1)
    return {**out, "startup": out["first_batch"] - launched, "wall": time.time() - launched}


def ray_worker(setup: dict) -> None:
    """Ray Train worker loop (variants ray loader / ray data / ray ddp): reports the measurement
    (all workers together: images summed, seconds the slowest) as its last report, with a
    checkpoint."""
    import ray.train
    import ray.train.torch

    from model.build import build_maskrcnn
    from pipeline.config import config_from_dict

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(setup["threads"])
    torch.manual_seed(setup["seed"])
    model = ray.train.torch.prepare_model(build_maskrcnn(config_from_dict(setup["config"]).model))
    if setup["source"] == "ray data":
        batches = ray.train.get_dataset_shard("train").iter_torch_batches(
            batch_size=setup["batch"], collate_fn=RowsToBatch(), prefetch_batches=1)
    else:
        batches = make_loader(setup, rank, world)

    def report(step: int, losses: dict) -> None:
        if step % setup["report_every"] == 0:
            ray.train.report({"step": step, "loss": losses["loss"]})

    out = run_steps(setup, model, batches, rank, world, report)
    if world > 1:
        import torch.distributed as dist

        total = torch.tensor([out["images"], out["loss"]], dtype=torch.float64)
        slowest = torch.tensor([out["seconds"], out["first_batch"]], dtype=torch.float64)
        dist.all_reduce(total)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        out = {**out, "images": int(total[0]), "loss": float(total[1]) / world,
               "seconds": float(slowest[0]), "first_batch": float(slowest[1])}
    # Train V2 keeps only the metrics that come with a checkpoint: rank 0 attaches a tiny one.
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if rank == 0:
            (Path(directory) / "measurement.json").write_text(json.dumps(out))
            checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report({"final": True, **out}, checkpoint=checkpoint)


class ChipDecoder:
    """Ray Data UDF (variant ray data): rows {"i": chip index} -> the DataLoader's items as
    columns: image (C, H, W) float32, boxes (N, 4), labels (N,), masks (N, H, W), N per row."""

    def __init__(self, setup: dict) -> None:
        # The zoom augmentation's bilinear resize differs in the last bit with the thread count:
        # decode with the DataLoader path's threads to get the same images.
        torch.set_num_threads(setup["threads"])
        self.chips = open_chips(setup, 0)

    def __call__(self, batch: dict) -> dict:
        columns: dict[str, list] = {k: [] for k in ("image", "boxes", "labels", "masks")}
        for i in batch["i"]:
            image, target = self.chips[int(i)]
            columns["image"].append(image.numpy())
            for key in ("boxes", "labels", "masks"):
                columns[key].append(target[key].numpy())
        return columns


class RowsToBatch(NumpyBatchCollateFn):
    """iter_torch_batches collate: numpy columns -> `model.chips.collate`'s (images, targets).
    np.array copies: Arrow-backed arrays are read-only, torch wants writable ones."""

    def __call__(self, batch: dict) -> tuple[list, list]:
        images = [torch.from_numpy(np.array(im)) for im in batch["image"]]
        targets = [{key: torch.from_numpy(np.array(batch[key][j]))
                    for key in ("boxes", "labels", "masks")} for j in range(len(images))]
        return images, targets


def run_ray(setup: dict, variant: str, storage: str, name: str) -> dict:
    """Variants ray loader / ray data / ray ddp: one TorchTrainer.fit() on the running cluster."""
    import ray.data
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    workers = setup["cpus"] if variant == "ray ddp" else 1
    setup = {**setup, "source": variant, "threads": setup["cpus"] // workers}
    datasets = None
    if variant == "ray data":
        ray.data.DataContext.get_current().execution_options.preserve_order = True
        steps = setup["warmup"] + setup["steps"]  # one block per batch
        items = ray.data.from_items([{"i": i} for i in setup["order"][:steps * setup["batch"]]],
                                    override_num_blocks=steps)
        datasets = {"train": items.map_batches(
            ChipDecoder, fn_constructor_args=(setup,), batch_size=setup["batch"], num_cpus=0,
            compute=ray.data.ActorPoolStrategy(size=1))}
    launched = time.time()
    trainer = TorchTrainer(
        ray_worker, train_loop_config=setup, datasets=datasets,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=False,
                                     resources_per_worker={"CPU": setup["threads"]}),
        run_config=RunConfig(name=name, storage_path=storage))
    out = trainer.fit().metrics
    if not out or not out.get("final"):
        raise RuntimeError(f"{variant}: the worker reported no measurement ({out})")
    return {**out, "startup": out["first_batch"] - launched, "wall": time.time() - launched}


def print_table(results: dict[str, list[dict]], args) -> None:
    """Medians per variant, ratio to plain, and the goal verdicts."""
    print()
    print(f"{'variant':<12} {'procs x thr':>11} {'img/s':>7} {'vs plain':>9} {'start-up s':>11} "
          f"{'wall s':>7} {'mean loss':>10}   img/s all reps")
    base = statistics.median(r["images"] / r["seconds"] for r in results["plain"])
    ratios = {}
    for variant, runs in results.items():
        speeds = [r["images"] / r["seconds"] for r in runs]
        speed = statistics.median(speeds)
        ratios[variant] = speed / base
        procs = f"{args.cpus if variant == 'ray ddp' else 1} x {runs[0]['threads']}"
        print(f"{variant:<12} {procs:>11} {speed:>7.3f} {speed / base:>9.3f} "
              f"{statistics.median(r['startup'] for r in runs):>11.1f} "
              f"{statistics.median(r['wall'] for r in runs):>7.1f} "
              f"{statistics.median(r['loss'] for r in runs):>10.4f}   "
              + " ".join(f"{s:.3f}" for s in speeds))
    for variant in ("ray loader", "ray data"):
        if variant in ratios:
            verdict = "met" if ratios[variant] >= GOAL else "NOT met"
            print(f"Ray Train overhead, {variant} / plain: {ratios[variant]:.3f} "
                  f"(goal >= {GOAL}: {verdict})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--backbone", default="resnet18_fpn",
                        choices=["resnet18_fpn", "mobilenet_v3_fpn", "resnet50_fpn"])
    parser.add_argument("--chip-size", type=int, default=128, help="chip side = model input")
    parser.add_argument("--chips", type=int, default=64, help="synthetic chips generated")
    parser.add_argument("--batch-size", type=int, default=2, help="images per step per worker")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per run")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
    parser.add_argument("--reps", type=int, default=3, help="runs of each variant, alternating")
    parser.add_argument("--cpus", type=int, default=2,
                        help="Ray num_cpus = CPUs of the one worker = plain loop's torch threads")
    parser.add_argument("--report-every", type=int, default=10,
                        help="ray.train.report every N timed steps (in the timed region)")
    parser.add_argument("--settle", type=float, default=5.0,
                        help="seconds of pause before each run (Ray start-up / teardown)")
    parser.add_argument("--seed", type=int, default=7, help="chips, order, weights, RNG")
    parser.add_argument("--skip-ray-data", action="store_true")
    parser.add_argument("--skip-ddp", action="store_true")
    args = parser.parse_args(argv)
    if min(args.chips, args.chip_size, args.batch_size, args.steps, args.reps, args.cpus,
           args.report_every) < 1 or args.warmup < 0:
        parser.error("counts and sizes must be >= 1 (--warmup >= 0)")
    import ray

    from pipeline.config import config_to_dict

    variants = [v for v in VARIANTS if not (v == "ray data" and args.skip_ray_data)
                and not (v == "ray ddp" and (args.skip_ddp or args.cpus < 2))]
    os.chdir(ROOT)  # Ray adds the driver's working directory to its workers' sys.path
    ddp_world = args.cpus if "ray ddp" in variants else 1
    print(f"settings: {args.backbone}, {args.chips} synthetic chips of {args.chip_size} px "
          f"(seed {args.seed}), batch {args.batch_size} per worker, {args.warmup} warm-up + "
          f"{args.steps} timed steps per run, {args.reps} reps, --cpus {args.cpus} (plain: "
          f"{args.cpus} torch threads; Ray: num_cpus {args.cpus}, 1 worker x {args.cpus} CPU"
          + (f"; ddp {args.cpus} workers x 1 CPU" if "ray ddp" in variants else "")
          + f"), report every {args.report_every} steps; RoI / anchor samples 64 per image; "
          f"variants {', '.join(variants)}")
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} cores, 1-min load avg {load:.2f}"
          + (" (busy: figures are pessimistic and noisy, compare ratios)" if load > 0.5 else "")
          + f"; torch {torch.__version__}, ray {ray.__version__}, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY')}", flush=True)
    with tempfile.TemporaryDirectory(prefix="maskray-bench-train-") as work:
        data = make_chips(Path(work) / "chips", args.chips, args.chip_size, args.seed)
        length = (args.warmup + args.steps) * args.batch_size * ddp_world
        setup = {"config": config_to_dict(make_config(args)), "data": str(data),
                 "order": chip_order(args.chips, length, args.seed), "batch": args.batch_size,
                 "warmup": args.warmup, "steps": args.steps, "seed": args.seed,
                 "cpus": args.cpus, "threads": args.cpus, "report_every": args.report_every}
        started = time.perf_counter()
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
        print(f"ray.init: {time.perf_counter() - started:.1f} s", flush=True)
        results: dict[str, list[dict]] = {v: [] for v in variants}
        try:
            for rep in range(args.reps):
                k = rep % len(variants)  # rotate: no variant always runs first after a pause
                for variant in variants[k:] + variants[:k]:
                    time.sleep(args.settle)  # let the last run's Ray processes wind down
                    if variant == "plain":
                        r = run_plain(setup)
                    else:
                        r = run_ray(setup, variant, str(Path(work) / "ray"),
                                    f"{variant.replace(' ', '-')}-{rep}")
                    results[variant].append(r)
                    print(f"rep {rep + 1}/{args.reps} {variant:<10}: "
                          f"{r['images'] / r['seconds']:.3f} img/s ({r['images']} images in "
                          f"{r['seconds']:.2f} s), start-up {r['startup']:.1f} s, wall "
                          f"{r['wall']:.1f} s, loss {r['loss']:.4f}, 1-min load avg "
                          f"{os.getloadavg()[0]:.2f}", flush=True)
        finally:
            ray.shutdown()
    print_table(results, args)
    print(f"total {time.perf_counter() - started:.0f} s; 1-min load avg at the end "
          f"{os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
