"""What an export reads and where it writes: the selected scenes and instance rows of one model
of an output (`open_source` -> `Source`), what an export wrote (`Written`), and the file helpers
every format shares (flat per-scene file names, `index.json`, atomic local / remote writes).

Which scenes: those whose scenes row says `ok` (an errored scene has no instances and possibly no
size); errored scenes are left out and counted in `Source.notes`.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import secrets
import tempfile
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Iterable, Iterator, Mapping, Sequence

import fsspec
import pyarrow as pa
import pyarrow.dataset as ds
from affine import Affine

from pipeline import storage
from pipeline.dataset import open_dataset, read_scenes
from pipeline.errors import MaskrayError, UsageError
from pipeline.schema import INSTANCE_SCHEMA

FORMATS = ("coco-results", "coco", "geojson", "gpkg", "fgb", "class-raster")
BATCH_ROWS = 256  # rows per record batch: full-image RLEs of one batch are what sits in memory
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


# ---- what is exported ------------------------------------------------------------------------

@dataclass(frozen=True)
class Scene:
    """One scene of the model as the scenes table records it (its latest `ok` row).

    image_id: the COCO image id (see `pipeline.export.coco`). transform: pixel -> CRS (None when
    the scene has none). crs_wkt: None for pixel units. crs_key: "EPSG:<n>", the WKT, or None:
    scenes with equal keys can share one layer.
    """

    scene_id: str
    image_id: int
    width: int
    height: int
    crs_wkt: str | None
    epsg: int | None
    transform: Affine | None
    instance_count: int

    @property
    def crs_key(self) -> str | None:
        if self.crs_wkt is None:
            return None
        return f"EPSG:{self.epsg}" if self.epsg else self.crs_wkt


@dataclass
class Source:
    """One model's rows of an output, narrowed to some scenes and a minimum score.

    scenes: the selected `ok` scenes, sorted by scene id. image_ids: {scene_id: COCO image id}
    for EVERY scene of the model. notes: what was left out and why (one line each).
    """

    root: str
    filesystem: fsspec.AbstractFileSystem
    model_id: str
    dataset: ds.Dataset | None
    scenes: list[Scene]
    image_ids: dict[str, int]
    min_score: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def scene_ids(self) -> list[str]:
        return [s.scene_id for s in self.scenes]

    def filter(self, scene_ids: Iterable[str] | None = None, extra: Any = None) -> Any:
        """pyarrow expression: rows of `scene_ids` (default: the selected scenes), at or above
        the minimum score, and `extra`."""
        ids = list(self.scene_ids if scene_ids is None else scene_ids)
        expr = ds.field("scene_id").isin(pa.array(ids, pa.string()))
        if self.min_score is not None:
            expr = expr & (ds.field("score") >= self.min_score)
        return expr if extra is None else expr & extra

    def batches(self, columns: Sequence[str], scene_ids: Iterable[str] | None = None,
                extra: Any = None, batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        """Instance rows (only `columns`) as record batches, in stored order (files sorted,
        rows sorted by scene, y0, x0 inside a file): deterministic."""
        if self.dataset is None:
            return
        with storage.translating_errors(self.root):
            for batch in self.dataset.to_batches(columns=list(columns), batch_size=batch_rows,
                                                 filter=self.filter(scene_ids, extra)):
                if batch.num_rows:
                    yield batch

    def table(self, columns: Sequence[str], scene_ids: Iterable[str] | None = None,
              extra: Any = None) -> pa.Table:
        """The rows of `batches` as one table (callers bound it with `scene_ids` / `extra`)."""
        if self.dataset is None:
            return INSTANCE_SCHEMA.empty_table().select(list(columns))
        with storage.translating_errors(self.root):
            return self.dataset.to_table(columns=list(columns),
                                         filter=self.filter(scene_ids, extra))

    @cached_property
    def class_names(self) -> dict[int, str]:
        """{class_id: name} of the model (never 0): the `maskray` Parquet metadata key of the
        first part, completed by the (class_id, class_name) pairs the rows hold."""
        names: dict[int, str] = {}
        if self.dataset is None:
            return names
        with storage.translating_errors(self.root):
            fragment = next(iter(self.dataset.get_fragments()))
            meta = fragment.physical_schema.metadata or {}
            if b"maskray" in meta:
                stored = json.loads(meta[b"maskray"]).get("class_names", {})
                names.update({int(k): str(v) for k, v in stored.items() if int(k) > 0})
            for batch in self.dataset.to_batches(columns=["class_id", "class_name"],
                                                 batch_size=65_536):
                pairs = pa.Table.from_batches([batch]).group_by(["class_id", "class_name"]) \
                    .aggregate([])
                for cid, name in zip(pairs["class_id"].to_pylist(),
                                     pairs["class_name"].to_pylist()):
                    names.setdefault(int(cid), name)
        return dict(sorted(names.items()))


def open_source(root: str, model_id: str | None = None, scene_ids: Sequence[str] | None = None,
                min_score: float | None = None) -> Source:
    """The rows of one model of the output at `root` (local path or s3:// URI) to export.

    model_id: required when the output holds several models. scene_ids: export only these
    (default every `ok` scene). min_score: leave out instances scoring below it.
    Raises UsageError (one line) for an empty output, an unknown model or scene.
    """
    fs, _ = storage.filesystem(root)
    with storage.translating_errors(root):
        scenes_table = read_scenes(root, model_id, filesystem=fs)
    if scenes_table.num_rows == 0:
        if model_id is not None:
            raise UsageError(f"no scenes of model {model_id!r} in {root}: not a maskray output, "
                             "nothing committed, or another model id")
        raise UsageError(f"no scenes in {root}: not a maskray output, or nothing committed")
    models = sorted(set(scenes_table.column("model_id").to_pylist()))
    if len(models) > 1:
        raise UsageError(f"{root} holds {len(models)} models ({', '.join(models)}): "
                         "pick one with --model-id")
    rows = scenes_table.to_pylist()
    all_ids = sorted({r["scene_id"] for r in rows})
    image_ids = {s: i for i, s in enumerate(all_ids, start=1)}
    wanted = all_ids if scene_ids is None else list(dict.fromkeys(scene_ids))
    unknown = [s for s in wanted if s not in image_ids]
    if unknown:
        raise UsageError(f"scene {unknown[0]!r} is not in {root}"
                         + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
    latest = _latest_ok_rows(rows)
    scenes = [_scene(latest[s], image_ids[s]) for s in sorted(wanted) if s in latest]
    notes = []
    if len(scenes) < len(wanted):
        notes.append(f"{len(wanted) - len(scenes)} scene(s) with status 'error' are left out")
    with storage.translating_errors(root):
        dataset = open_dataset(root, "instances", models[0], filesystem=fs)
    return Source(root=root, filesystem=fs, model_id=models[0], dataset=dataset, scenes=scenes,
                  image_ids=image_ids, min_score=min_score, notes=notes)


def _latest_ok_rows(rows: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """{scene_id: its `ok` row of the latest run} (a scene retried after an error has both an
    error row and an ok row; run ids sort by time)."""
    latest: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        if row["status"] != "ok" or row["width"] is None or row["height"] is None:
            continue
        old = latest.get(row["scene_id"])
        if old is None or row["run_id"] > old["run_id"]:
            latest[row["scene_id"]] = row
    return latest


def _scene(row: Mapping[str, Any], image_id: int) -> Scene:
    # the scenes table stores the transform in GDAL GeoTransform order (c, a, b, f, d, e)
    transform = Affine.from_gdal(*row["transform"][:6]) if row["transform"] else None
    return Scene(scene_id=row["scene_id"], image_id=image_id, width=int(row["width"]),
                 height=int(row["height"]), crs_wkt=row["crs"], epsg=row["epsg"],
                 transform=transform, instance_count=int(row["instance_count"]))


@dataclass
class Written:
    """What an export wrote: files (as given in `out`), instances and scenes exported."""

    files: list[str] = field(default_factory=list)
    instances: int = 0
    scenes: int = 0
    notes: list[str] = field(default_factory=list)


# ---- files -----------------------------------------------------------------------------------

def scene_file_names(scene_ids: Iterable[str], suffix: str) -> dict[str, str]:
    """{scene_id: a safe flat file name ending in `suffix`}.

    "dir/sub/scene_01.tif" -> "dir__sub__scene_01<suffix>": path segments joined by "__", the
    last one's extension dropped, characters outside [A-Za-z0-9._-] replaced by "_". Names that
    would collide (also ignoring case, for macOS and Windows file systems) get "-<8 hex of
    sha256(scene_id)>" so no file overwrites another.
    """
    stems = {s: _safe_stem(s) for s in scene_ids}
    taken = Counter(stem.lower() for stem in stems.values())
    return {s: (f"{stem}-{hashlib.sha256(s.encode()).hexdigest()[:8]}"
                if taken[stem.lower()] > 1 else stem) + suffix for s, stem in stems.items()}


def _safe_stem(scene_id: str) -> str:
    parts = [p for p in scene_id.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    if parts and "." in parts[-1].lstrip("."):
        parts[-1] = parts[-1].rsplit(".", 1)[0]
    stem = "__".join(_SAFE_NAME.sub("_", p) for p in parts).strip("._")
    return stem[:180] or "scene"


def join(directory: str, name: str) -> str:
    return f"{directory.rstrip('/')}/{name}" if storage.is_remote(directory) else \
        os.path.join(_local(directory), name)


def check_directory(out: str) -> None:
    local = None if storage.is_remote(out) else _local(out)
    if local is not None and os.path.exists(local) and not os.path.isdir(local):
        raise UsageError(f"--out {out} is a file; one file per scene needs a directory")


def write_index(out: str, index: Mapping[str, Any]) -> None:
    """`index.json` of a per-scene export, written after every file: its presence says the
    export finished."""
    with writing(join(out, "index.json")) as local, open(local, "w", encoding="utf-8") as f:
        json.dump(index, f, indent=1)
        f.write("\n")


def _local(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path


@contextmanager
def writing(out: str) -> Iterator[str]:
    """A local path to write the file `out` (a local path or a URI) through, so that `out`
    appears only complete: locally a temporary name beside it renamed at the end (atomic);
    remotely a local temporary file uploaded after the block (one PUT / multipart upload).
    Nothing is left behind when the block raises."""
    if storage.is_remote(out):
        fs, path = storage.filesystem(out)
        with tempfile.TemporaryDirectory(prefix="maskray-export-") as tmp:
            local = os.path.join(tmp, posixpath.basename(path))
            yield local
            with storage.translating_errors(out):
                fs.put_file(local, path)
        return
    out = _local(out)
    parent = os.path.dirname(os.path.abspath(out))
    if os.path.isdir(out):
        raise UsageError(f"{out} is a directory; give a file name")
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise MaskrayError(f"cannot create {parent}: {exc.strerror or exc}") from None
    base, ext = os.path.splitext(os.path.basename(out))
    # the temporary name keeps the extension: GDAL drivers look at it
    tmp = os.path.join(parent, f".{base}.{secrets.token_hex(4)}.tmp{ext}")
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        for leftover in (tmp, tmp + "-journal", tmp + "-wal", tmp + "-shm"):
            if os.path.exists(leftover):
                os.remove(leftover)
