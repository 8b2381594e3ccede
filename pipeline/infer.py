"""One batch-inference run, driver side: what to do, then stitch, write and commit each shard.

    take the output lease -> recover -> list scenes -> keep the new and the changed ones
      (pipeline/incremental.py) -> plan shards -> dataflow.run_tiles (Ray Data)
      -> per shard: stitch each scene, build rows, commit, retire replaced rows
      -> run record + summary

A re-run of the same command finds every scene committed and does no work (without starting
Ray); added scenes and replaced objects (another ETag, size or mtime) are the only ones
processed; a killed run re-run yields exactly the rows of one clean run, because shards are
committed atomically under deterministic names (pipeline/commit.py). Two runs started at once
on the same output and model: one takes the lease (pipeline/lease.py), the other does nothing.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from affine import Affine

from pipeline import commit, incremental, storage
from pipeline.config import Config, config_hash, config_to_dict
from pipeline.dataflow import FlowStats, PredictorSpec, run_tiles
from pipeline.errors import UsageError, find_cause
from pipeline.lease import Lease
from pipeline.raster_io import StorageUnavailable
from pipeline.rows import SceneInfo, build_shard_tables
from pipeline.scenes import SceneRef, list_scenes
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
                                         "threads": cfg.infer.threads,  # 0: dataflow decides
                                         "channels_last": cfg.infer.channels_last,
                                         "cpu_precision": cfg.infer.cpu_precision,
                                         "storage": storage.resolve(cfg.storage).to_dict()},
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
    scenes_replaced: int = 0
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
        replaced = f" ({self.scenes_replaced} replaced)" if self.scenes_replaced else ""
        return (f"maskray infer: {self.scenes_ok} scene(s) ok{replaced}, {self.scenes_error} "
                f"error, {self.scenes_skipped} already done; {self.instances} instance(s); "
                f"{self.flow.tiles} tile(s) at {self.flow.tiles_per_second:.2f} tiles/s; "
                f"run {self.run_id}, model {self.model_id}")


class ShardWriter:
    """`on_shard` callback: stitch every scene of a finished shard, then commit it."""

    def __init__(self, fs: Any, root: str, source: Source, cfg: Config, summary: RunSummary,
                 refs: dict[str, SceneRef], replaced: dict[str, tuple[str, ...]]) -> None:
        self.fs, self.root, self.source, self.cfg, self.summary = fs, root, source, cfg, summary
        self.refs, self.replaced = refs, replaced
        self.hash = config_hash(cfg.tiling) + source.model_id

    def __call__(self, results: list[SceneResult]) -> None:
        scenes = [self._stitched(r) for r in results]
        instances, table = build_shard_tables(scenes, self.source.model_id, self.summary.run_id,
                                              ("background",) + self.source.class_names)
        versions = incremental.versions_digest(
            (r.scene_id, ref.size, ref.mtime, ref.etag)
            for r in results for ref in [self.refs[r.scene_id]])
        commit.write_shard(self.fs, self.root, instances=instances, scenes=table,
                           model_id=self.source.model_id, run_id=self.summary.run_id,
                           config_hash=self.hash + versions)
        drops: dict[str, set[str]] = {}
        for r in results:
            for part in self.replaced.get(r.scene_id, ()):
                drops.setdefault(part, set()).add(r.scene_id)
        if drops:  # the new rows are committed: now retire the old ones
            incremental.retire(self.fs, self.root, self.source.model_id, self.summary.run_id, drops)
            self.summary.scenes_replaced += sum(len(ids) for ids in drops.values())
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
        ref = self.refs[r.scene_id]
        info = SceneInfo(scene_id=r.scene_id, source_size=ref.size, source_mtime=ref.mtime,
                         source_etag=ref.etag,
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
        # The instances replace the pieces: let the pieces go before the rows are built (their
        # memory is then reused for the rows instead of adding to the peak).
        pieces, r.detections = r.detections, {}
        return info, stitch_scene(tiles, pieces, _merge_threshold(self.cfg))


def _merge_threshold(cfg: Config) -> float:
    # stitch_scene wants [0, 1); a user's 1.0 means "merge only on full overlap".
    return min(cfg.tiling.merge_threshold, 0.999999)


def run_inference(source: Source, input_uri: str, output_uri: str, cfg: Config,
                  connect: Callable[[], None] = lambda: None,
                  run_id: str | None = None) -> RunSummary:
    """Lease, recover, list, diff, predict, stitch and commit. `connect` starts or joins Ray; it
    is called only when there is work, so a run with nothing new returns in seconds. `run_id`
    (default: a new time-ordered id) names the run record, e.g. a Ray Jobs submission id. Raises
    `lease.LeaseHeld` when another run is writing this output for this model."""
    storage.configure(cfg.storage)
    run_id = run_id or commit.new_run_id()
    if not commit.is_safe_id(run_id):
        raise UsageError(f"run id {run_id!r} must be letters, digits, '.', '_' or '-'")
    summary = RunSummary(run_id, source.model_id)
    with storage.translating_errors(output_uri):
        fs, root = commit.open_root(output_uri)
        lease = Lease(fs, root, source.model_id, run_id)
        lease.acquire()
    with lease:
        with storage.translating_errors(output_uri):
            commit.recover_shards(fs, root, source.model_id)
            commit.clean_staging(fs, root)
            incremental.dedupe(fs, root, source.model_id, run_id)
            committed = incremental.committed_scenes(fs, root, source.model_id)
        listed = list_scenes(input_uri)
        work = incremental.plan(listed, committed)
        summary.scenes_listed, summary.scenes_skipped = len(listed), work.unchanged
        if not work.todo:
            log.info("%d scene(s) listed, all done for model %s: nothing to do", len(listed),
                     source.model_id)
            return summary
        connect()
        _process(fs, root, source, cfg, input_uri, output_uri, work, summary)
    return summary


@contextmanager
def _storage_failures(input_uri: str, output_uri: str) -> Iterator[None]:
    """One line for a run stopped by object storage: a store that stayed unavailable to a read
    task (raised through Ray's wrappers) or that refused a commit. Shards committed before it
    stay; the others were not committed, and a re-run does them."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - looking for the cause inside Ray's wrappers
        if type(exc).__module__.split(".")[0] in ("botocore", "aiobotocore", "s3fs"):
            raise storage.storage_error(exc, output_uri) from None  # a commit the store refused
        cause = find_cause(exc, StorageUnavailable)
        if cause is None:
            raise
        raise storage.StorageError(
            f"{input_uri}: object store unavailable while reading scenes ({cause}); the shards "
            "committed so far are kept, re-run to process the rest") from None


def _process(fs: Any, root: str, source: Source, cfg: Config, input_uri: str, output_uri: str,
             work: incremental.Plan, summary: RunSummary) -> None:
    todo, run_id = work.todo, summary.run_id
    record = commit.RunRecord(run_id, source.model_id,
                              {"config": config_to_dict(cfg), "model": source.model_config,
                               "input": input_uri, "output": output_uri},
                              config_hash(cfg), commit.code_version(), commit.utc_now_iso())
    commit.write_run_record(fs, root, record)
    shards = plan_shards([s.size or 0 for s in todo], cfg.infer.shard_scenes, SHARD_BYTES)
    writer = ShardWriter(fs, root, source, cfg, summary, {s.scene_id: s for s in todo},
                         work.replaced)
    log.info("%d scene(s) listed, %d already done, %d to process (%d replaced) in %d shard(s)",
             summary.scenes_listed, summary.scenes_skipped, len(todo), len(work.replaced),
             len(set(shards)))
    status = "failed"
    try:
        with _storage_failures(input_uri, output_uri):
            summary.flow = run_tiles([(s.scene_id, s.uri, k) for s, k in zip(todo, shards)], cfg,
                                     source.spec, writer,
                                     refused={s.scene_id: s.refused for s in todo if s.refused})
        status = "succeeded"
    finally:
        counts = {"scenes_listed": summary.scenes_listed, "scenes_skipped": summary.scenes_skipped,
                  "scenes_ok": summary.scenes_ok, "scenes_error": summary.scenes_error,
                  "scenes_replaced": summary.scenes_replaced,
                  "instances": summary.instances, "shards_committed": summary.shards_committed,
                  "tiles": summary.flow.tiles}
        try:
            commit.write_run_record(fs, root, replace(record, ended_at=commit.utc_now_iso(),
                                                      status=status, counts=counts))
            # A shard interrupted between its moves was staged whole: finish it before this
            # run's staging is removed (a run killed outright leaves that to the next run).
            commit.recover_shards(fs, root, source.model_id)
            commit.clean_staging(fs, root, run_ids=[run_id])
        except Exception as exc:  # noqa: BLE001 - keep the error that ended the run
            if status == "succeeded":
                raise
            # The store that failed the run fails this too; the next run recovers and cleans.
            log.warning("run record and clean-up not written (%s)", exc)
