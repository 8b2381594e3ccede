"""Incremental runs: which listed scenes need work, and retiring the rows of replaced scenes.

A scene is done for a model when the output's scenes table holds a row for it. It needs work
again when the object behind it changed: the listing's ETag (object storage) or size and mtime
(local files) differ from what that row recorded. Its new rows are committed in a new shard (the
shard name covers the scenes' versions, see `versions_digest`), then its old rows are removed
from the parts that held them (`retire`): instances parts first, the scenes part last, each one
rewritten through staging and published with one atomic move.

Invariant: one scenes row per (scene, model). A run killed between the commit of a replaced
scene and the retiring of its old rows leaves two; `dedupe` (at the start of every run) keeps the
row of the newest run and retires the rest, so readers see each scene once again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import commit
from pipeline.scenes import SceneRef

log = logging.getLogger(__name__)

MTIME_TOLERANCE_S = 0.002  # timestamps are stored to the microsecond; filesystems differ below ms


@dataclass(frozen=True)
class CommittedScene:
    """A committed scenes row: where it lives and what version of the source it describes."""

    scene_id: str
    run_id: str
    status: str
    size: int | None
    mtime: float | None  # POSIX seconds
    etag: str | None
    part: str  # path of the scenes part holding the row


def committed_scenes(fs: fsspec.AbstractFileSystem, root: str, model_id: str
                     ) -> dict[str, list[CommittedScene]]:
    """Every committed scenes row of `model_id`, by scene id (a list: more than one only after a
    killed run, see `dedupe`)."""
    base = commit.partition_dir(root, "scenes", model_id)
    if not fs.exists(base):
        return {}
    rows: dict[str, list[CommittedScene]] = {}
    columns = ["scene_id", "run_id", "status", "source_size", "source_mtime", "source_etag"]
    for path in sorted(fs.glob(f"{base}/part-*.parquet")):
        with fs.open(path, "rb") as f:
            table = pq.read_table(f, columns=columns)
        for r in table.to_pylist():
            mtime = r["source_mtime"]
            rows.setdefault(r["scene_id"], []).append(CommittedScene(
                r["scene_id"], r["run_id"], r["status"], r["source_size"],
                None if mtime is None else mtime.timestamp(), r["source_etag"], path))
    return rows


def is_changed(ref: SceneRef, row: CommittedScene) -> bool:
    """Whether the listed object differs from the one `row` was made from. Unknown fields (an
    output written before they were recorded, a store without ETags) never count as changes."""
    if ref.etag and row.etag:
        return ref.etag != row.etag
    if ref.size is not None and row.size is not None and ref.size != row.size:
        return True
    if ref.mtime is not None and row.mtime is not None:
        return abs(ref.mtime - row.mtime) > MTIME_TOLERANCE_S
    return False


@dataclass(frozen=True)
class Plan:
    """todo: refs to process (new or changed), in listing order. replaced: scene id -> the
    scenes parts holding its old rows (retired once its new rows are committed)."""

    todo: list[SceneRef]
    replaced: dict[str, tuple[str, ...]]
    unchanged: int


def plan(listed: Sequence[SceneRef], committed: Mapping[str, list[CommittedScene]]) -> Plan:
    todo, replaced, unchanged = [], {}, 0
    for ref in listed:
        rows = committed.get(ref.scene_id)
        if not rows:
            todo.append(ref)
        elif is_changed(ref, _latest(rows)):
            todo.append(ref)
            replaced[ref.scene_id] = tuple(sorted({r.part for r in rows}))
        else:
            unchanged += 1
    return Plan(todo, replaced, unchanged)


def versions_digest(refs: Iterable[tuple[str, int | None, float | None, str | None]]) -> str:
    """12 hex digits over (scene_id, size, mtime, etag) of a shard's scenes: part of the shard's
    name, so a replaced scene's shard never has the name of the one it replaces."""
    payload = json.dumps(sorted([s, z, None if m is None else round(m, 3), e]
                                for s, z, m, e in refs), separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def retire(fs: fsspec.AbstractFileSystem, root: str, model_id: str, run_id: str,
           drops: Mapping[str, Iterable[str]]) -> int:
    """Remove the rows of scene ids from committed parts. drops: scenes part path -> scene ids
    to drop from it and from its instances parts. Returns the instance rows removed."""
    removed = 0
    inst_dir = commit.partition_dir(root, "instances", model_id)
    for scenes_part, scene_ids in sorted(drops.items()):
        ids = pa.array(sorted(set(scene_ids)), pa.string())
        shard = posixpath.basename(scenes_part)[: -len(".parquet")]
        for path in sorted(fs.glob(f"{inst_dir}/{shard}-*.parquet")):
            removed += _drop_rows(fs, root, run_id, path, ids)
        _drop_rows(fs, root, run_id, scenes_part, ids)
    return removed


def dedupe(fs: fsspec.AbstractFileSystem, root: str, model_id: str, run_id: str,
           committed: Mapping[str, list[CommittedScene]] | None = None) -> int:
    """Restore one scenes row per scene: keep the newest run's row, retire the others. Returns
    the number of scenes that had more than one."""
    committed = committed_scenes(fs, root, model_id) if committed is None else committed
    drops: dict[str, set[str]] = {}
    for scene_id, rows in committed.items():
        if len(rows) < 2:
            continue
        keep = _latest(rows)
        for r in rows:
            if r.part != keep.part:
                drops.setdefault(r.part, set()).add(scene_id)
    if drops:
        scenes = sorted({s for ids in drops.values() for s in ids})
        log.warning("recovery: %d scene(s) had rows from an interrupted replacement; keeping the "
                    "newest: %s", len(scenes), ", ".join(scenes[:10]))
        retire(fs, root, model_id, run_id, drops)
    return len({s for ids in drops.values() for s in ids})


def _latest(rows: Sequence[CommittedScene]) -> CommittedScene:
    return max(rows, key=lambda r: (r.run_id, r.part))


def _drop_rows(fs: fsspec.AbstractFileSystem, root: str, run_id: str, path: str,
               scene_ids: pa.Array) -> int:
    """Rewrite the Parquet file at `path` without the rows of `scene_ids` (file metadata kept);
    delete it when nothing is left. Returns the rows dropped."""
    try:
        with fs.open(path, "rb") as f:
            table = pq.read_table(f)
    except FileNotFoundError:
        return 0
    drop = pc.is_in(table.column("scene_id"), value_set=scene_ids)
    n = pc.sum(drop).as_py() or 0
    if n == 0:
        return 0
    if n == table.num_rows:
        fs.rm(path)
    else:
        commit.publish_table(fs, root, run_id, path, table.filter(pc.invert(drop)))
    return n
