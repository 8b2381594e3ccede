"""One batch-inference run, driver side: what to do, then stitch, write and commit each shard.

    list scenes -> drop those already committed for this model -> plan shards
      -> dataflow.run_tiles (Ray Data)  -> per shard: stitch each scene, build rows, commit
      -> run record + summary

A re-run of the same command finds every scene committed and does no work; added scenes are the
only ones processed; a killed run re-run yields exactly the rows of one clean run, because
shards are committed atomically under deterministic names (pipeline/commit.py).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from affine import Affine

from pipeline import commit
from pipeline.config import Config, config_hash, config_to_dict
from pipeline.dataflow import FlowStats, PredictorSpec, run_tiles
from pipeline.dataset import done_scene_ids
from pipeline.errors import UsageError
from pipeline.rows import SceneInfo, build_shard_tables
from pipeline.scenes import list_scenes
from pipeline.shards import SceneResult, plan_shards
from pipeline.stitch import stitch_scene
from pipeline.tiling import grid_windows

log = logging.getLogger(__name__)

# A shard also closes once its scenes hold this many bytes, so a huge scene is a shard of its own.
SHARD_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class Source:
    """Where detections come from: a model bundle or replayed labels."""

    spec: PredictorSpec
    model_id: str
    class_names: tuple[str, ...]  # foreground names; class id i + 1 is class_names[i]
    model_config: dict[str, Any]


def bundle_tiling(bundle_uri: str, cfg: Config) -> Config:
    """`cfg` with the tile size and overlap the bundle was trained for."""
    from model.bundle import load_bundle

    bundle = load_bundle(bundle_uri, verify=False)
    return replace(cfg, tiling=replace(cfg.tiling, tile_size=bundle.tile_size,
                                       overlap=bundle.overlap))


def model_source(bundle_uri: str, cfg: Config) -> Source:
    from model.bundle import load_bundle
    from pipeline.predictor import TilePredictor

    bundle = load_bundle(bundle_uri)
    mean, _ = bundle.model.normalization()
    spec = PredictorSpec(TilePredictor, {"bundle_uri": bundle_uri, "device": cfg.infer.device,
                                         "batch_size": cfg.infer.batch_size,
                                         "threads": max(1, round(cfg.infer.actor_cpus))},
                         bands=tuple(bundle.model.bands), fill=tuple(mean),
                         uses_gpu=cfg.infer.device != "cpu")
    return Source(spec, bundle.model_id, tuple(bundle.model.classes), config_to_dict(bundle.model))


def labels_source(labels_uri: str, input_root: str) -> Source:
    from pipeline.labels import class_names_of, load_labels
    from pipeline.predictor import LabelsPredictor

    # Load once on the driver too: bad labels fail before any Ray work. Index 0 is background.
    names = class_names_of(load_labels(labels_uri, input_root))[1:]
    spec = PredictorSpec(LabelsPredictor, {"labels_uri": labels_uri, "input_root": input_root},
                         bands=(1,), fill=None, uses_gpu=False)
    return Source(spec, "labels-" + _digest(Path(labels_uri))[:12], names,
                  {"predictor": "labels", "classes": list(names)})


def _digest(path: Path) -> str:
    """sha256 over a labels file, or over the sorted files of a labels directory."""
    if not path.exists():
        raise UsageError(f"labels not found: {path}")
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


@dataclass
class RunSummary:
    run_id: str
    model_id: str
    scenes_listed: int = 0
    scenes_skipped: int = 0
    scenes_ok: int = 0
    scenes_error: int = 0
    instances: int = 0
    shards_committed: int = 0
    flow: FlowStats = field(default_factory=FlowStats)
    errors: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def error_rate(self) -> float:
        done = self.scenes_ok + self.scenes_error
        return self.scenes_error / done if done else 0.0

    def line(self) -> str:
        return (f"maskray infer: {self.scenes_ok} scene(s) ok, {self.scenes_error} error, "
                f"{self.scenes_skipped} already done; {self.instances} instance(s); "
                f"{self.flow.tiles} tile(s) at {self.flow.tiles_per_second:.2f} tiles/s; "
                f"run {self.run_id}, model {self.model_id}")


class ShardWriter:
    """`on_shard` callback: stitch every scene of a finished shard, then commit it."""

    def __init__(self, fs: Any, root: str, source: Source, cfg: Config, summary: RunSummary,
                 sizes: dict[str, tuple[int, float]]) -> None:
        self.fs, self.root, self.source, self.cfg, self.summary = fs, root, source, cfg, summary
        self.sizes = sizes
        self.hash = config_hash(cfg.tiling) + source.model_id

    def __call__(self, results: list[SceneResult]) -> None:
        scenes = [self._stitched(r) for r in results]
        instances, table = build_shard_tables(scenes, self.source.model_id, self.summary.run_id,
                                              ("background",) + self.source.class_names)
        commit.write_shard(self.fs, self.root, instances=instances, scenes=table,
                           model_id=self.source.model_id, run_id=self.summary.run_id,
                           config_hash=self.hash)
        self.summary.shards_committed += 1
        self.summary.instances += instances.num_rows
        for r in results:
            if r.ok:
                self.summary.scenes_ok += 1
            else:
                self.summary.scenes_error += 1
                self.summary.errors.append((r.scene_id, r.error_type, r.error_message))
                log.warning("scene %s: %s: %s", r.scene_id, r.error_type, r.error_message)

    def _stitched(self, r: SceneResult) -> tuple[SceneInfo, list]:
        size, mtime = self.sizes.get(r.scene_id, (None, None))
        info = SceneInfo(scene_id=r.scene_id, source_size=size, source_mtime=mtime,
                         seconds=round(r.seconds, 3), status="ok" if r.ok else "error",
                         error_type=r.error_type or None, error_message=r.error_message or None)
        if r.meta:
            m = r.meta
            info = replace(info, width=int(m["width"]), height=int(m["height"]),
                           bands=int(m["bands"]), dtype=str(m["dtype"]),
                           crs_wkt=str(m["crs_wkt"]) or None,
                           transform=Affine(*[float(v) for v in m["transform"]]),
                           tile_count=r.n_tiles)
        if not r.ok:
            return info, []
        tiles = grid_windows(info.width, info.height, self.cfg.tiling.tile_size,
                             self.cfg.tiling.overlap)
        return info, stitch_scene(tiles, r.detections, _merge_threshold(self.cfg))


def _merge_threshold(cfg: Config) -> float:
    # stitch_scene wants [0, 1); a user's 1.0 means "merge only on full overlap".
    return min(cfg.tiling.merge_threshold, 0.999999)


def run_inference(source: Source, input_uri: str, output_uri: str, cfg: Config) -> RunSummary:
    """List, diff, predict, stitch and commit. Ray must already be initialised."""
    fs, root = commit.open_root(output_uri)
    run_id = commit.new_run_id()
    summary = RunSummary(run_id, source.model_id)
    commit.recover_shards(fs, root, source.model_id)
    commit.clean_staging(fs, root)
    listed = list_scenes(input_uri)
    done = done_scene_ids(root, source.model_id, filesystem=fs)
    todo = [s for s in listed if s.scene_id not in done]
    summary.scenes_listed, summary.scenes_skipped = len(listed), len(listed) - len(todo)
    record = commit.RunRecord(run_id, source.model_id,
                              {"config": config_to_dict(cfg), "model": source.model_config,
                               "input": input_uri, "output": output_uri},
                              config_hash(cfg), commit.code_version(), commit.utc_now_iso())
    commit.write_run_record(fs, root, record)
    shards = plan_shards([s.size or 0 for s in todo], cfg.infer.shard_scenes, SHARD_BYTES)
    writer = ShardWriter(fs, root, source, cfg, summary,
                         {s.scene_id: (s.size, s.mtime) for s in todo})
    log.info("%d scene(s) listed, %d already done, %d to process in %d shard(s)",
             len(listed), summary.scenes_skipped, len(todo), len(set(shards)))
    status = "failed"
    try:
        summary.flow = run_tiles([(s.scene_id, s.uri, k) for s, k in zip(todo, shards)], cfg,
                                 source.spec, writer)
        status = "succeeded"
    finally:
        counts = {"scenes_listed": summary.scenes_listed, "scenes_skipped": summary.scenes_skipped,
                  "scenes_ok": summary.scenes_ok, "scenes_error": summary.scenes_error,
                  "instances": summary.instances, "shards_committed": summary.shards_committed,
                  "tiles": summary.flow.tiles}
        commit.write_run_record(fs, root, replace(record, ended_at=commit.utc_now_iso(),
                                                  status=status, counts=counts))
        # A shard interrupted between its moves was staged whole: finish it before this run's
        # staging is removed (a run killed outright leaves that to the next run's recovery).
        commit.recover_shards(fs, root, source.model_id)
        commit.clean_staging(fs, root, run_ids=[run_id])
    return summary
