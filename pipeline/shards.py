"""Driver-side bookkeeping: gather predicted tile rows into scenes, and scenes into shards.

Scenes are grouped into *shards* (consecutive scenes in sorted order, `infer.shard_scenes` per
shard, a huge scene alone). A shard is the commit unit: when the last tile of its last scene
arrives, the shard is stitched, written and committed while the next shard's tiles are still
streaming through the actors. Memory on the driver is bounded by the detections of the shards
in flight, never by pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from pipeline.detection import Detection


def plan_shards(sizes: Sequence[int], shard_scenes: int, shard_pixels: int) -> list[int]:
    """Shard index of each scene (scenes in sorted order; `sizes` = byte size, a cheap proxy for
    pixels before any header is read). A shard closes after `shard_scenes` scenes or once it holds
    `shard_pixels` bytes, so a huge scene is a shard of its own. Deterministic: the same list of
    remaining scenes always gives the same shards, so a re-run rebuilds the parts it lost."""
    shard, count, total, out = 0, 0, 0, []
    for size in sizes:
        if count and (count >= shard_scenes or total + size > shard_pixels):
            shard, count, total = shard + 1, 0, 0
        out.append(shard)
        count, total = count + 1, total + size
    return out


@dataclass
class SceneResult:
    """Everything the driver learns about one scene from its tile rows."""

    scene_id: str
    uri: str
    shard: int
    meta: dict[str, Any] = field(default_factory=dict)
    n_tiles: int | None = None
    tiles_seen: int = 0
    tiles_skipped: int = 0
    seconds: float = 0.0
    error_type: str = ""
    error_message: str = ""
    detections: dict[int, list[Detection]] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.n_tiles is not None and self.tiles_seen >= self.n_tiles

    @property
    def ok(self) -> bool:
        return self.error_type == ""

    def add(self, row: dict[str, Any]) -> None:
        if self.n_tiles is None:
            self.n_tiles = int(row["n_tiles"])
        if int(row["tile_index"]) < 0:  # the scene failed before it had tiles
            self.tiles_seen, self.n_tiles = 1, 1
        else:
            self.tiles_seen += 1
            self.meta = self.meta or _scene_meta(row)
        self.seconds += float(row.get("seconds", 0.0) or 0.0)
        if row["error_type"] and not self.error_type:
            self.error_type, self.error_message = str(row["error_type"]), str(row["error_message"])
        elif row["skip"] and not row["error_type"]:
            self.tiles_skipped += 1
        if not row["skip"] and int(row["tile_index"]) >= 0:
            # A batch whose every tile found nothing reaches the driver as None, not [] (the
            # object column of empty lists has no type for Ray Data to keep).
            self.detections[int(row["tile_index"])] = list(row["detections"] or ())

    def finalise(self) -> None:
        """Turn an all-nodata scene into an error once every tile is in."""
        if self.ok and self.n_tiles and self.tiles_skipped == self.n_tiles:
            self.error_type, self.error_message = "all_nodata", "every pixel of the scene is nodata"
        if not self.ok:
            self.detections = {}


def _scene_meta(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("width", "height", "bands", "dtype", "crs_wkt", "transform", "nodata", "tile_size",
            "overlap")
    return {k: row[k] for k in keys}


class ShardAssembler:
    """Feed tile rows in any order; get back shards whose every scene is complete."""

    def __init__(self, scenes: Sequence[tuple[str, str, int]]) -> None:
        """scenes: (scene_id, uri, shard) for every scene of the run."""
        self.scenes = {sid: SceneResult(sid, uri, shard) for sid, uri, shard in scenes}
        self.pending: dict[int, set[str]] = {}
        self.members: dict[int, list[str]] = {}
        for sid, _, shard in scenes:
            self.pending.setdefault(shard, set()).add(sid)
            self.members.setdefault(shard, []).append(sid)

    def add(self, row: dict[str, Any]) -> list[list[SceneResult]]:
        """Record one tile row; return the shards (lists of finished scenes) it completed."""
        result = self.scenes[str(row["scene_id"])]
        result.add(row)
        if not result.complete:
            return []
        result.finalise()
        waiting = self.pending.get(result.shard)
        if waiting is None:
            return []
        waiting.discard(result.scene_id)
        if waiting:
            return []
        del self.pending[result.shard]
        return [[self.scenes.pop(sid) for sid in sorted(self.members.pop(result.shard))]]

    @property
    def open_shards(self) -> int:
        return len(self.pending)
