"""The Ray Data graph of batch inference: the only module that uses `ray.data`.

    from_items(scenes) -> flat_map(plan_scene)        CPU tasks: read headers, list tiles
                       -> map_batches(read_tiles)     CPU tasks: windowed reads, never a scene
                       -> map_batches(predictor)      actor pool: one model per actor (per GPU)
                       -> iter_rows on the driver     ShardAssembler -> on_shard(stitch+commit)

Tiles stream: a shard is stitched and committed as soon as its last tile is back, while later
shards are still being read and predicted. The pool shape never takes every CPU on a small
machine (read tasks would starve and the job would hang, see DESIGN.md). Memory is flat in scene
size: an object-store budget and blocks of about one batch make the reads wait for the model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import ray
from ray.data.exceptions import ExecutionTimeoutError

from pipeline import storage
from pipeline.config import Config
from pipeline.errors import MaskrayError, find_cause
from pipeline.shards import SceneResult, ShardAssembler
from pipeline.tiles import plan_scene, read_tiles, refused_row

log = logging.getLogger(__name__)

MIB = 1 << 20
MIN_INFLIGHT = 64 * MIB  # the smallest object-store budget of the graph
READ_TASK_MEMORY = 192 * MIB  # a read task's worker besides its batch (measured ~160 MiB)


class RunStalled(MaskrayError):
    """The graph made no progress for `infer.stall_timeout_s`: its tasks or actors got no CPU
    or GPU (one line, exit 1; the shards committed so far are kept)."""


@dataclass(frozen=True)
class PredictorSpec:
    """Which ray-free callable class runs on the tiles, and how to construct it."""

    cls: type
    kwargs: dict[str, Any]
    bands: tuple[int, ...]
    fill: tuple[float, ...] | None
    uses_gpu: bool


@dataclass
class FlowStats:
    tiles: int = 0
    seconds: float = 0.0

    @property
    def tiles_per_second(self) -> float:
        return self.tiles / self.seconds if self.seconds > 0 else 0.0


def actor_pool_shape(cfg: Config, uses_gpu: bool) -> tuple[int, float, float]:
    """(actors, CPUs per actor, GPUs per actor) for the cluster Ray is connected to.

    GPU clusters: one actor per GPU (`infer.num_actors` caps it). CPU-only: `num_actors`
    (default 1) actors with `infer.actor_cpus` each, but never so many that no CPU is left for
    the read tasks. `infer.device: cuda` on a cluster with no GPU node up yet (an autoscaling
    GPU group at zero) asks for `num_actors` (default 1) GPU actors anyway: the autoscaler adds
    the nodes, where `auto` would have fallen back to the CPU.
    """
    resources = ray.cluster_resources()
    cpus, gpus = float(resources.get("CPU", 1)), int(resources.get("GPU", 0))
    if uses_gpu and gpus > 0:
        size = min(cfg.infer.num_actors or gpus, gpus)
        return size, min(cfg.infer.actor_cpus, max(cpus / size - 1, 0.0)), 1.0
    if cfg.infer.device == "cuda":
        return cfg.infer.num_actors or 1, cfg.infer.actor_cpus, 1.0
    size = cfg.infer.num_actors or 1
    per_actor = cfg.infer.actor_cpus
    if size * per_actor > cpus - 1:  # keep one CPU for planning and reading
        per_actor = max((cpus - 1) / size, 0.0)
    return size, per_actor, 0.0


def actor_threads(cpus: float, actors: int, actor_cpus: float, actor_gpus: float) -> int:
    """torch intra-op threads per actor when `infer.threads` is 0 (auto).

    GPU actors: their reserved CPUs (the forward runs on the GPU). CPU actors: the cluster's CPUs
    shared between the actors, not only the CPUs each reserves. The CPU the pool leaves to the
    read tasks is mostly idle (a windowed read costs ~0.1% of a forward), so a lone actor on a
    2-core machine forwards with 2 threads: 1.57x faster end to end than with 1 (4 096 px scene,
    resnet18_fpn, docs/benchmarks.md). The reads still get their CPU from Ray when they need it.
    """
    if actor_gpus > 0:
        return max(1, round(actor_cpus))
    return max(1, int(cpus // max(actors, 1)))


def inflight_budget(cfg: Config, actors: int, bands: int) -> int:
    """Bytes of object store the graph may fill (`infer.inflight_mib`, or auto).

    Auto: four batches per actor of float32 tiles (an upper bound of the tile dtype), so the
    model always has the next batches waiting, and at least 64 MiB. Without a budget Ray Data
    lets the reads run as far ahead as the object store allows (30% of RAM): on a 20 000 px
    scene that is every tile of the scene, and peak memory grows with scene area.
    """
    if cfg.infer.inflight_mib:
        return cfg.infer.inflight_mib * MIB
    tile_bytes = 4 * bands * cfg.tiling.tile_size ** 2
    return max(MIN_INFLIGHT, 4 * actors * cfg.infer.batch_size * tile_bytes)


def batch_block_bytes(cfg: Config, bands: int) -> int:
    """Target block size between the reads and the model: one batch of 8-bit tiles (a batch of
    wider samples is one block of its own)."""
    return cfg.infer.batch_size * bands * cfg.tiling.tile_size ** 2


def run_tiles(scenes: Sequence[tuple[str, str, int]], cfg: Config, spec: PredictorSpec,
              on_shard: Callable[[list[SceneResult]], None],
              refused: Mapping[str, str] | None = None) -> FlowStats:
    """Push every tile of `scenes` ((scene_id, uri, shard) in shard order) through the graph and
    call `on_shard` on the driver for each completed shard. Returns tile throughput. Scenes in
    `refused` (scene_id -> reason) never enter the graph: each is one bad_key error row."""
    refused = refused or {}
    assembler = ShardAssembler(scenes)
    for scene_id, _, shard in scenes:
        if scene_id in refused:
            for done in assembler.add(refused_row(scene_id, shard, refused[scene_id])):
                on_shard(done)
    scenes = [s for s in scenes if s[0] not in refused]
    if not scenes:
        return FlowStats()
    actors, actor_cpus, actor_gpus = actor_pool_shape(cfg, spec.uses_gpu)
    kwargs = dict(spec.kwargs)
    if kwargs.get("threads") == 0:
        kwargs["threads"] = actor_threads(float(ray.cluster_resources().get("CPU", 1)), actors,
                                          actor_cpus, actor_gpus)
    log.info("actor pool: %d x (%.2f CPU, %.0f GPU, %s torch threads); batch %d", actors,
             actor_cpus, actor_gpus, kwargs.get("threads", "default"), cfg.infer.batch_size)
    items = [{"scene_id": s, "uri": u, "shard": k} for s, u, k in scenes]
    settings = storage.resolve(cfg.storage).to_dict()  # endpoint etc. for the workers; no secret
    ds = (ray.data.from_items(items, override_num_blocks=min(len(items), 200))
          .flat_map(plan_scene, fn_kwargs={"tile_size": cfg.tiling.tile_size,
                                           "overlap": cfg.tiling.overlap,
                                           "bands": spec.bands,
                                           "max_pixels": cfg.infer.max_pixels,
                                           "storage": settings})
          .map_batches(read_tiles, batch_size=cfg.infer.batch_size, batch_format="numpy",
                       fn_kwargs={"bands": spec.bands, "fill": spec.fill, "storage": settings},
                       # What one read task holds (measured ~160 MiB with 1024 px tiles: the
                       # worker, GDAL's cache, the batch twice over while it is copied out).
                       # Also keeps these remote args distinct from the actors', so Ray Data
                       # does not fuse the reads into the actors: reads must run beside the
                       # model, not in front of it.
                       memory=READ_TASK_MEMORY + 8 * batch_block_bytes(cfg, len(spec.bands)))
          .map_batches(spec.cls, fn_constructor_kwargs=kwargs, batch_format="numpy",
                       batch_size=cfg.infer.batch_size, num_cpus=actor_cpus,
                       num_gpus=actor_gpus, compute=ray.data.ActorPoolStrategy(size=actors)))
    budget = inflight_budget(cfg, actors, len(spec.bands))
    limits = ds.context.execution_options.resource_limits
    ds.context.execution_options.resource_limits = limits.copy(object_store_memory=budget)
    # One read task gets a whole scene's tile rows (plan_scene's output is one small block), and
    # by default it would pack its output into 128 MiB blocks: a budget cannot hold back what a
    # single block already holds. Blocks of about one batch let backpressure pause the reads
    # between batches.
    ds.context.target_max_block_size = max(MIB, batch_block_bytes(cfg, len(spec.bands)))
    ds.context.execution_no_progress_timeout_s = cfg.infer.stall_timeout_s
    # The actors' `detections` column holds Detection objects, which Arrow cannot type: Ray Data
    # pickles them. Saying so explicitly is the same behaviour without its warning to the user.
    ds.context.enable_fallback_to_arrow_object_ext_type = True
    log.info("in-flight budget: %.0f MiB of object store", budget / MIB)
    stats, start = FlowStats(), time.perf_counter()
    try:
        for row in ds.iter_rows():
            stats.tiles += int(row["tile_index"]) >= 0
            for shard in assembler.add(row):
                on_shard(shard)
    except Exception as exc:  # noqa: BLE001 - looking for the guard's error inside Ray's wrappers
        if find_cause(exc, ExecutionTimeoutError) is None:
            raise
        raise RunStalled(
            f"no tile made progress for {cfg.infer.stall_timeout_s:g} s: the read tasks or the "
            f"model actors ({actors} x {actor_cpus:g} CPU, {actor_gpus:g} GPU) got no CPU or GPU "
            "on this cluster; other jobs may hold them (lower infer.actor_cpus, add nodes, or "
            "raise infer.stall_timeout_s). The shards committed so far are kept: re-run to "
            "finish") from None
    stats.seconds = time.perf_counter() - start
    if assembler.open_shards:
        raise RuntimeError(f"{assembler.open_shards} shard(s) never completed")
    return stats

