"""Writing and committing the output of one shard, over any fsspec filesystem (local or s3://).

Layout under an output root:
    instances/model=<model_id>/part-<shard16>-<crs8>-<k>.parquet   GeoParquet, one CRS per file
    scenes/model=<model_id>/part-<shard16>.parquet                  one row per scene; the marker
    runs/<run_id>.json                                              run records
    _staging/<run_id>/{instances,scenes}/model=<model_id>/...      files not yet committed

Protocol (one shard):
  1. `shard_name` hashes (sorted scene ids, model id, config hash): the same shard always has the
     same names, so a re-run overwrites instead of duplicating.
  2. Stage: write every instances part, then the scenes part, under `_staging/<run_id>/`.
     Staging lives outside instances/ and scenes/ and starts with `_`, so no reader globbing
     `instances/**/*.parquet` (pyarrow, DuckDB, Spark) ever sees it. An exception or kill while
     writing leaves only staging files (and on S3 a truncated staging object, never a final one).
  3. Commit: move the instances parts, then the scenes part LAST (os.replace locally: atomic; a
     single server-side copy on object storage). A shard whose scenes part exists is complete;
     `is_shard_committed` is what a re-run checks to skip it.
  4. Recovery (`recover_shards`, at the start of a run, before `clean_staging`): a kill between
     the moves of step 3 leaves instances parts without their scenes part. Their staged scenes
     part is still there, so the commit is rolled forward: the rows readers saw stay, and
     nothing is lost or duplicated. Orphans whose staging is gone (cleaned long ago) are deleted
     once older than a grace period, so their scenes are processed again.

Run ids in rows: each row carries the run that wrote it. A committed shard is skipped by later
runs, so its rows keep the first run's id. A shard interrupted before its scenes part committed is
rewritten whole by the next run (or rolled forward with the dead run's own staged files), so a
shard's instances and scenes parts always agree on run_id. Part bytes are a pure function of the
tables given: no timestamps inside Parquet (only in the run record); across runs, only the
`run_id` and `seconds` columns differ. One writer per (root, model) at a time is supported.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import posixpath
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from pipeline.rows import build_part_geo, check_shard_tables, split_by_crs
from pipeline.schema import (INSTANCE_SCHEMA, SCENE_SCHEMA, build_maskray_metadata,
                             with_file_metadata)

log = logging.getLogger(__name__)

ROW_GROUP_ROWS = 65_536  # a few MB per group: DuckDB prunes on scene_id / bbox statistics
MAX_PART_ROWS = 1_000_000  # a huge single-scene shard still splits into DuckDB-sized files
STAGING = "_staging"
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def open_root(root: str, filesystem: fsspec.AbstractFileSystem | None = None
              ) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path without protocol) of an output root; local unless it has a protocol."""
    if filesystem is None:
        filesystem, path = fsspec.core.url_to_fs(str(root))
    else:
        path = filesystem._strip_protocol(str(root))
    return filesystem, path.rstrip("/")


def partition_dir(root: str, table: str, model_id: str) -> str:
    """`<root>/<table>/model=<model_id>` (hive style, so two models never mix)."""
    if not _SAFE_ID.match(model_id):
        raise ValueError(f"model_id {model_id!r} must match {_SAFE_ID.pattern}")
    return f"{root}/{table}/model={model_id}"


def shard_name(scene_ids: Sequence[str], model_id: str, config_hash: str) -> str:
    """`part-<16 hex>`: sha256 of (sorted unique scene ids, model id, config hash)."""
    payload = json.dumps([sorted(set(scene_ids)), model_id, config_hash], separators=(",", ":"))
    return "part-" + hashlib.sha256(payload.encode()).hexdigest()[:16]


def is_shard_committed(fs: fsspec.AbstractFileSystem, root: str, model_id: str, name: str) -> bool:
    """True when the shard's scenes part (the commit marker) exists."""
    return fs.exists(f"{partition_dir(root, 'scenes', model_id)}/{name}.parquet")


@dataclass(frozen=True)
class ShardCommit:
    """Outcome of `write_shard`. instance_files: file names under instances/model=<id>/."""

    name: str
    skipped: bool
    instance_files: tuple[str, ...] = ()


def write_shard(fs: fsspec.AbstractFileSystem, root: str, *, instances: pa.Table,
                scenes: pa.Table, model_id: str, run_id: str, config_hash: str,
                class_names: Sequence[str] | Mapping[int, str] = (),
                row_group_rows: int = ROW_GROUP_ROWS,
                max_part_rows: int = MAX_PART_ROWS) -> ShardCommit:
    """Stage and commit one shard, or skip it when its scenes part already exists.

    instances, scenes: INSTANCE_SCHEMA / SCENE_SCHEMA tables (`pipeline.rows.build_shard_tables`)
    of the shard's scenes; every instance's scene must be in `scenes` with a matching count.
    """
    name = shard_name(scenes.column("scene_id").to_pylist(), model_id, config_hash)
    if is_shard_committed(fs, root, model_id, name):
        log.info("shard %s already committed; skipping", name)
        return ShardCommit(name, skipped=True)
    files = stage_shard(fs, root, name, instances=instances, scenes=scenes, model_id=model_id,
                        run_id=run_id, class_names=class_names, row_group_rows=row_group_rows,
                        max_part_rows=max_part_rows)
    commit_staged(fs, root, name, model_id=model_id, run_id=run_id, instance_files=files)
    return ShardCommit(name, skipped=False, instance_files=tuple(files))


def stage_shard(fs: fsspec.AbstractFileSystem, root: str, name: str, *, instances: pa.Table,
                scenes: pa.Table, model_id: str, run_id: str,
                class_names: Sequence[str] | Mapping[int, str] = (),
                row_group_rows: int = ROW_GROUP_ROWS,
                max_part_rows: int = MAX_PART_ROWS) -> list[str]:
    """Write the shard's parts under `_staging/<run_id>/`: instances parts (one per CRS, sorted
    by (scene_id, y0, x0, instance_id), split every `max_part_rows`), then the scenes part.
    Returns the instances file names."""
    instances, scenes = check_shard_tables(instances, scenes, model_id)
    stage = f"{root}/{STAGING}/{_safe(run_id)}"
    files = []
    for key, crs_wkt, group in split_by_crs(instances, scenes):
        for k, start in enumerate(range(0, group.num_rows, max_part_rows)):
            part = group.slice(start, max_part_rows)
            schema = with_file_metadata(INSTANCE_SCHEMA, build_part_geo(part, crs_wkt),
                                        build_maskray_metadata("instances", model_id, class_names))
            files.append(f"{name}-{key}-{k}.parquet")
            _write_parquet(fs, f"{partition_dir(stage, 'instances', model_id)}/{files[-1]}",
                           part.replace_schema_metadata(schema.metadata), row_group_rows)
    schema = with_file_metadata(SCENE_SCHEMA, None,
                                build_maskray_metadata("scenes", model_id, class_names))
    _write_parquet(fs, f"{partition_dir(stage, 'scenes', model_id)}/{name}.parquet",
                   scenes.sort_by("scene_id").replace_schema_metadata(schema.metadata),
                   row_group_rows)
    return files


def commit_staged(fs: fsspec.AbstractFileSystem, root: str, name: str, *, model_id: str,
                  run_id: str, instance_files: Sequence[str]) -> None:
    """Move a staged shard into place: instances parts first, the scenes part (marker) last."""
    stage = f"{root}/{STAGING}/{_safe(run_id)}"
    for file in instance_files:
        _move(fs, f"{partition_dir(stage, 'instances', model_id)}/{file}",
              f"{partition_dir(root, 'instances', model_id)}/{file}")
    _move(fs, f"{partition_dir(stage, 'scenes', model_id)}/{name}.parquet",
          f"{partition_dir(root, 'scenes', model_id)}/{name}.parquet")


def publish_table(fs: fsspec.AbstractFileSystem, root: str, run_id: str, path: str,
                  table: pa.Table, row_group_rows: int = ROW_GROUP_ROWS) -> None:
    """Replace the committed file at `path` (under `root`) with `table` (its schema metadata
    kept): staged under this run's `_staging/`, then one atomic move."""
    staged = f"{root}/{STAGING}/{_safe(run_id)}/rewrite/{posixpath.relpath(path, root)}"
    _write_parquet(fs, staged, table, row_group_rows)
    _move(fs, staged, path)


@dataclass(frozen=True)
class Recovery:
    """What `recover_shards` did, by shard name."""

    rolled_forward: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    pending: tuple[str, ...] = ()


def recover_shards(fs: fsspec.AbstractFileSystem, root: str, model_id: str,
                   orphan_grace_s: float = 3600, now: float | None = None) -> Recovery:
    """Finish or undo shards whose instances parts were committed but whose scenes part was not
    (a writer killed between the moves). Run before `clean_staging` and before planning work.

    A staged scenes part for the shard (any run's staging, readable Parquet) -> roll forward:
    move that run's remaining staged instances parts, then its scenes part. None -> delete the
    orphan instances parts once all are older than `orphan_grace_s` (else report them pending:
    a live writer is between its moves, or someone removed the staging by hand; their scenes
    are not done, so planning work around them would duplicate rows: stop or wait).
    """
    now = time.time() if now is None else now
    inst_dir = partition_dir(root, "instances", model_id)
    scenes_dir = partition_dir(root, "scenes", model_id)
    marked = {posixpath.basename(p)[: -len(".parquet")] for p in _glob(fs, scenes_dir)}
    orphans: dict[str, list[dict]] = {}
    for path, info in _find(fs, inst_dir).items():
        shard = posixpath.basename(path)[:21]  # "part-" + 16 hex
        if shard not in marked:
            orphans.setdefault(shard, []).append(info)
    done: dict[str, list[str]] = {"rolled_forward": [], "removed": [], "pending": []}
    for shard, infos in sorted(orphans.items()):
        run_dir = _staged_run_dir(fs, root, model_id, shard)
        if run_dir is not None:
            staged = fs.glob(f"{partition_dir(run_dir, 'instances', model_id)}/{shard}-*.parquet")
            commit_staged(fs, root, shard, model_id=model_id, run_id=posixpath.basename(run_dir),
                          instance_files=[posixpath.basename(p) for p in sorted(staged)])
            done["rolled_forward"].append(shard)
        elif all(now - info_mtime(i) > orphan_grace_s for i in infos):
            fs.rm([i["name"] for i in infos])
            done["removed"].append(shard)
        else:
            done["pending"].append(shard)
    for kind, shards in done.items():
        if shards:
            log.warning("recovery: %s %s", kind.replace("_", " "), ", ".join(shards))
    return Recovery(**{k: tuple(v) for k, v in done.items()})


def clean_staging(fs: fsspec.AbstractFileSystem, root: str, older_than_s: float = 24 * 3600,
                  run_ids: Sequence[str] = (), now: float | None = None) -> list[str]:
    """Delete staging files of dead runs: everything of the runs in `run_ids` (this run at its
    end, or runs known dead), and any staging file older than `older_than_s`; a run directory
    with nothing newer than that goes whole. A live run's staged files exist only for the
    seconds between staging and commit, so age is safe. Returns the deleted file paths."""
    now = time.time() if now is None else now
    base = f"{root}/{STAGING}"
    if not fs.exists(base):
        return []
    removed: list[str] = []
    for run_dir in sorted(fs.ls(base, detail=False)):
        files = _find(fs, run_dir, pattern="")
        stale = sorted(p for p, i in files.items() if now - info_mtime(i) > older_than_s)
        dead = posixpath.basename(run_dir) in run_ids
        if dead or now - _newest(fs, run_dir, files) > older_than_s:
            fs.rm(run_dir, recursive=True)
            removed += sorted(files)
        elif stale:
            fs.rm(stale)
            removed += stale
    return removed


@dataclass(frozen=True)
class RunRecord:
    """`runs/<run_id>.json`: what a run did. Times are ISO 8601 UTC; status running|succeeded|
    failed; counts e.g. scenes_ok, scenes_error, instances, shards_committed, shards_skipped."""

    run_id: str
    model_id: str
    config: Mapping[str, Any]
    config_hash: str
    code_version: str
    started_at: str
    ended_at: str | None = None
    status: str = "running"
    counts: Mapping[str, int] = field(default_factory=dict)


def write_run_record(fs: fsspec.AbstractFileSystem, root: str, record: RunRecord) -> str:
    """Write (or replace) `runs/<run_id>.json` through staging; returns its path."""
    path = f"{root}/runs/{_safe(record.run_id)}.json"
    staged = f"{root}/{STAGING}/{_safe(record.run_id)}/runs/{posixpath.basename(path)}"
    fs.makedirs(posixpath.dirname(staged), exist_ok=True)
    with fs.open(staged, "wb") as f:
        f.write(json.dumps(asdict(record), indent=2, sort_keys=True, default=str).encode())
    _move(fs, staged, path)
    return path


def read_run_records(fs: fsspec.AbstractFileSystem, root: str) -> list[dict[str, Any]]:
    """Every run record under `runs/`, oldest run id first."""
    return [json.loads(fs.cat_file(p)) for p in sorted(fs.glob(f"{root}/runs/*.json"))]


def new_run_id() -> str:
    """`YYYYmmddTHHMMSS.mmmZ-<8 hex>`: sorts by start time (to the millisecond, so runs started
    back to back keep their order), unique across machines."""
    now = dt.datetime.now(dt.timezone.utc)
    return f"{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}Z-{secrets.token_hex(4)}"


def is_safe_id(value: str) -> bool:
    """Whether `value` may name a run or model in paths (letters, digits, '.', '_', '-')."""
    return bool(_SAFE_ID.match(value))


def utc_now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def code_version() -> str:
    """The installed maskray version (plus `MASKRAY_CODE_VERSION` when a deploy sets one)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        base = version("maskray")
    except PackageNotFoundError:
        base = "unknown"
    extra = os.environ.get("MASKRAY_CODE_VERSION")
    return f"{base}+{extra}" if extra else base


def _write_parquet(fs: fsspec.AbstractFileSystem, path: str, table: pa.Table,
                   row_group_rows: int) -> None:
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with fs.open(path, "wb") as f:
        pq.write_table(table, f, row_group_size=row_group_rows, compression="zstd",
                       write_statistics=True, write_page_index=True)
    if isinstance(fs, LocalFileSystem):
        # Without fsync a power cut after the rename could publish an empty file.
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _move(fs: fsspec.AbstractFileSystem, src: str, dst: str) -> None:
    """Atomic publish of src at dst: os.replace locally, one server-side copy on object stores."""
    fs.makedirs(posixpath.dirname(dst), exist_ok=True)
    try:
        if isinstance(fs, LocalFileSystem):
            os.replace(src, dst)
        else:
            fs.mv(src, dst)
    except FileNotFoundError:
        if not fs.exists(dst):  # else recovery in another process already moved it
            raise


def _staged_run_dir(fs: fsspec.AbstractFileSystem, root: str, model_id: str,
                    shard: str) -> str | None:
    """The newest staging run dir holding a readable scenes part for `shard`, or None."""
    candidates = fs.glob(f"{root}/{STAGING}/*/scenes/model={model_id}/{shard}.parquet", detail=True)
    for path, info in sorted(candidates.items(), key=lambda kv: -info_mtime(kv[1])):
        try:
            with fs.open(path, "rb") as f:
                pq.read_metadata(f)
        except Exception:  # a truncated file: that run died while staging it
            continue
        return path[: path.index(f"/scenes/model={model_id}/")]
    return None


def _glob(fs: fsspec.AbstractFileSystem, directory: str) -> list[str]:
    return sorted(fs.glob(f"{directory}/part-*.parquet"))


def _find(fs: fsspec.AbstractFileSystem, directory: str, pattern: str = "part-") -> dict[str, dict]:
    if not fs.exists(directory):
        return {}
    found = fs.find(directory, detail=True)
    return {p: i for p, i in found.items() if posixpath.basename(p).startswith(pattern)}


def _newest(fs: fsspec.AbstractFileSystem, run_dir: str, files: Mapping[str, dict]) -> float:
    """Newest modification time under a staging run dir: its files and, locally, its folders
    (a live run between shards has empty folders it touched recently)."""
    times = [info_mtime(i) for i in files.values()]
    if isinstance(fs, LocalFileSystem):
        times += [os.path.getmtime(d) for d, _, _ in os.walk(run_dir)]
    return max(times, default=float("inf"))


def info_mtime(info: Mapping[str, Any], unknown: float = float("inf")) -> float:
    """Modification time (POSIX s) from an fsspec info dict (local `mtime`, S3 `LastModified`);
    `unknown` when it has none (+inf: never stale)."""
    value = info.get("mtime", info.get("LastModified", info.get("last_modified")))
    if isinstance(value, dt.datetime):
        return value.timestamp()
    if isinstance(value, str):
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return float(value) if value is not None else unknown




def _safe(run_id: str) -> str:
    if not _SAFE_ID.match(run_id):
        raise ValueError(f"run_id {run_id!r} must match {_SAFE_ID.pattern}")
    return run_id
