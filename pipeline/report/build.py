"""`build_report`: read the output, write index.html; the page's sections, one function each."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.commit import info_mtime
from pipeline.overlay import class_colour
from pipeline.report.evaluation import KIND, evaluate_with_curves
from pipeline.report.html import (duration, escape, h2, img, jpeg, metric, page, run_interval,
                                  table)
from pipeline.report.plots import (plot_area_histogram, plot_class_counts, plot_pr_curves,
                                   plot_read_seconds, plot_score_histogram, plot_timeline)

MAX_ERROR_ROWS = 500  # failed scenes listed one by one; the counts by type cover the rest
SAMPLE_SIDE = 360  # px, longer side of each sample overview
DETAIL_SIDE = 256  # px, native-resolution crop beside each overview


@dataclass
class Report:
    """What `build_report` wrote: path of index.html, and what went into it."""

    path: str
    model_id: str
    scenes_ok: int
    scenes_error: int
    instances: int
    samples: int
    metrics: dict[str, Any] = field(default_factory=dict)  # iou type -> CocoMetrics
    notes: list[str] = field(default_factory=list)


def build_report(output: str, out_dir: str, *, model_id: str | None = None,
                 gt: str | None = None, samples: int = 6, input_root: str | None = None
                 ) -> Report:
    """Write `out_dir`/index.html about the output at `output` and return its summary.

    samples: scenes shown as overlays (the ones with the most instances). input_root: where the
    scenes are (default: the input of the latest run); unreadable scenes are noted, not fatal.
    gt: COCO JSON or GeoJSON directory: adds the COCO metrics and precision / recall curves.
    """
    from pipeline.dataset import read_instances, read_scenes
    from pipeline.render import resolve_model, run_records

    model_id = resolve_model(output, model_id)
    scenes = latest_scene_rows(read_scenes(output, model_id))
    instances = read_instances(output, model_id, columns=["scene_id", "class_id", "class_name",
                                                          "score", "area_px"])
    records = run_records(output, model_id)
    ok = scenes.filter(pc.field("status") == "ok")
    failed = scenes.filter(pc.field("status") == "error")
    report = Report(str(Path(out_dir) / "index.html"), model_id, ok.num_rows, failed.num_rows,
                    instances.num_rows, 0)
    body = [_summary(output, model_id, records, scenes, instances), _runs(records),
            _failures(failed), _instances(instances),
            _throughput(output, model_id, records, ok)]
    body.append(_samples(output, model_id, ok, samples, input_root, report))
    if gt is not None:
        body.append(_accuracy(output, gt, model_id, report))
    body.append(_config(records))
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    Path(report.path).write_text(page(f"maskray report: {model_id}", body), encoding="utf-8")
    return report


def latest_scene_rows(scenes: pa.Table) -> pa.Table:
    """One row per scene: its newest (a failed scene retried later has two rows)."""
    if scenes.num_rows == 0:
        return scenes
    ordered = scenes.sort_by([("scene_id", "ascending"), ("run_id", "descending")])
    ids = ordered.column("scene_id").to_numpy(zero_copy_only=False)
    first = np.ones(len(ids), bool)
    first[1:] = ids[1:] != ids[:-1]
    return ordered.filter(pa.array(first))


# ---- sections ----------------------------------------------------------------------------------

def _summary(output: str, model_id: str, records: list[dict], scenes: pa.Table,
             instances: pa.Table) -> str:
    ok = pc.sum(pc.equal(scenes.column("status"), "ok")).as_py() or 0
    cards = [("scenes processed", scenes.num_rows), ("ok", ok), ("failed", scenes.num_rows - ok),
             ("instances", instances.num_rows), ("runs", len(records))]
    latest = records[-1] if records else {}
    facts = [("output", output), ("model", model_id),
             ("latest run", f"{latest.get('run_id', '-')} ({latest.get('status', '-')})"),
             ("code version", latest.get("code_version", "-")),
             ("report written", dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))]
    return (h2("Summary") + '<div class="cards">' + "".join(
        f'<div class="card"><b>{v:,}</b><span>{escape(k)}</span></div>' for k, v in cards)
        + "</div>" + '<table class="facts">' + "".join(
            f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in facts) + "</table>")


def _runs(records: list[dict]) -> str:
    rows = []
    for r in records:
        counts, seconds = r.get("counts") or {}, duration(r)
        scenes = counts.get("scenes_ok", 0) + counts.get("scenes_error", 0)
        numbers = [f"{counts.get(k, 0):,}" for k in ("scenes_ok", "scenes_error",
                                                      "scenes_skipped", "instances", "tiles")]
        rows.append([r.get("run_id"), r.get("status"), r.get("started_at"),
                     f"{seconds:.0f} s" if seconds is not None else "-", *numbers,
                     _rate(scenes, seconds), _rate(counts.get("tiles", 0), seconds)])
    head = ["run", "status", "started (UTC)", "duration", "scenes ok", "failed", "already done",
            "instances", "tiles", "scenes/s", "tiles/s"]
    return h2("Runs") + (table(head, rows) if rows else "<p>No run record.</p>")


def _rate(count: int, seconds: float | None) -> str:
    return f"{count / seconds:.2f}" if seconds else "-"


def _failures(failed: pa.Table) -> str:
    if failed.num_rows == 0:
        return h2("Failed scenes") + "<p>No scene failed.</p>"
    rows = failed.select(["scene_id", "error_type", "error_message", "run_id"]).to_pylist()
    by_type: dict[str, int] = {}
    for r in rows:
        by_type[r["error_type"] or "?"] = by_type.get(r["error_type"] or "?", 0) + 1
    shown = [[r["scene_id"], r["error_type"], r["error_message"], r["run_id"]]
             for r in rows[:MAX_ERROR_ROWS]]
    more = (f"<p>... and {len(rows) - MAX_ERROR_ROWS} more (query them: "
            f"<code>select * from scenes where status = 'error'</code>).</p>"
            if len(rows) > MAX_ERROR_ROWS else "")
    return (h2(f"Failed scenes ({len(rows)})")
            + table(["error type", "scenes"], sorted(by_type.items(), key=lambda kv: -kv[1]))
            + table(["scene", "error type", "reason", "run"], shown) + more)


def _instances(instances: pa.Table) -> str:
    if instances.num_rows == 0:
        return h2("Instances") + "<p>No instance in this output.</p>"
    classes = _class_stats(instances)
    rows = [[c["name"], c["id"], f"{c['count']:,}", f"{c['mean_score']:.3f}",
             f"{c['median_area']:,.0f}"] for c in classes]
    figures = [plot_class_counts(classes), plot_score_histogram(instances, classes),
               plot_area_histogram(instances, classes)]
    return (h2("Instances") + table(["class", "id", "instances", "mean score",
                                       "median area (px)"], rows)
            + '<div class="plots">' + "".join(img(f) for f in figures) + "</div>")


def _class_stats(instances: pa.Table) -> list[dict[str, Any]]:
    """Per class id: name, count, mean score, median area; most instances first."""
    ids = instances.column("class_id").to_numpy()
    names = instances.column("class_name").to_pylist()
    scores = instances.column("score").to_numpy()
    areas = instances.column("area_px").to_numpy()
    out = []
    for class_id in np.unique(ids):
        sel = ids == class_id
        out.append({"id": int(class_id), "name": names[int(np.argmax(sel))],
                    "count": int(sel.sum()), "mean_score": float(scores[sel].mean()),
                    "median_area": float(np.median(areas[sel])),
                    "colour": class_colour(int(class_id))})
    return sorted(out, key=lambda c: (-c["count"], c["id"]))


def _throughput(output: str, model_id: str, records: list[dict], ok: pa.Table) -> str:
    commits = shard_commit_times(output, model_id)
    timeline = []
    for r in records:
        start, end = run_interval(r)
        if start is None:
            continue
        # Times in run records are whole seconds: allow one second of slack at the end.
        times = [t - start for t in commits if start <= t <= (end or np.inf) + 1]
        if end is not None:
            end = max(end - start, times[-1] if times else 0.0)
        timeline.append((r["run_id"], times, end))
    seconds = ok.column("seconds").to_numpy(zero_copy_only=False).astype(float)
    tiles = ok.column("tile_count").to_numpy(zero_copy_only=False).astype(float)
    timed = (tiles > 0) & np.isfinite(seconds)
    text = ("<p>Left: shards committed during each run against seconds since it started (one "
            "step per committed shard, a dot at the run's end; before the first step: start-up "
            "and the first shard's work). Right: read-and-decode seconds per tile of each scene "
            "(the scenes table's <code>seconds</code> over its tile count; model time is not "
            "in it). Scenes and tiles per second of each run are in the runs table.</p>")
    return (h2("Throughput") + text + '<div class="plots">' + img(plot_timeline(timeline))
            + img(plot_read_seconds(seconds[timed] / tiles[timed])) + "</div>")


def shard_commit_times(output: str, model_id: str) -> list[float]:
    """POSIX commit times of the scenes parts of `model_id` (one per shard), from one listing."""
    from pipeline.commit import partition_dir
    from pipeline.storage import filesystem

    fs, path = filesystem(output)
    base = partition_dir(path.rstrip("/"), "scenes", model_id)
    if not fs.exists(base):
        return []
    found = fs.find(base, detail=True)
    return sorted(info_mtime(info, float("nan")) for p, info in found.items()
                  if p.endswith(".parquet"))


def _samples(output: str, model_id: str, ok: pa.Table, count: int, input_root: str | None,
             report: Report) -> str:
    """Overview + native-resolution detail of the `count` ok scenes with the most instances."""
    from pipeline.errors import MaskrayError
    from pipeline.render import render_image

    if count <= 0 or ok.num_rows == 0:
        return ""
    picked = ok.sort_by([("instance_count", "descending"), ("scene_id", "ascending")])
    figures = []
    for row in picked.slice(0, count).to_pylist():
        scene_id = row["scene_id"]
        try:
            overview, _ = render_image(output, scene_id, model_id=model_id,
                                            input_root=input_root, max_side=SAMPLE_SIDE,
                                            labels=False)
            window = densest_window(output, model_id, scene_id, row["width"], row["height"])
            detail, _ = render_image(output, scene_id, model_id=model_id, input_root=input_root,
                                     window=window, max_side=DETAIL_SIDE)
        except MaskrayError as exc:
            report.notes.append(f"sample {scene_id}: {exc}")
            figures.append(f'<figure class="missing"><figcaption>{escape(scene_id)}: not rendered: '
                           f'{escape(str(exc))}</figcaption></figure>')
            continue
        report.samples += 1
        caption = (f"{escape(scene_id)}: {row['instance_count']:,} instances; right: window "
                   f"{','.join(map(str, window))} at native resolution")
        figures.append(f'<figure>{jpeg(overview)}{jpeg(detail)}'
                       f"<figcaption>{caption}</figcaption></figure>")
    return (h2("Sample overlays") + "<p>The scenes with the most instances: the whole scene "
            "(left) and its densest window (right), masks in class colours.</p>"
            + '<div class="samples">' + "".join(figures) + "</div>")


def densest_window(output: str, model_id: str, scene_id: str, width: int, height: int,
                   side: int = DETAIL_SIDE) -> tuple[int, int, int, int]:
    """The `side` px window (inside the scene) holding the most instance box centres, on a grid
    of `side` px cells: only px_bbox of that scene is read."""
    from pipeline.dataset import read_instances

    boxes = read_instances(output, model_id, columns=["px_bbox"],
                           filter=pc.field("scene_id") == scene_id).column("px_bbox")
    w, h = min(side, width), min(side, height)
    if len(boxes) == 0:
        return 0, 0, w, h
    cx = (pc.struct_field(boxes, "x0").to_numpy() + pc.struct_field(boxes, "x1").to_numpy()) // 2
    cy = (pc.struct_field(boxes, "y0").to_numpy() + pc.struct_field(boxes, "y1").to_numpy()) // 2
    cells = (cy // side) * (width // side + 1) + cx // side
    best = np.bincount(cells).argmax()
    x0 = min(int(best % (width // side + 1)) * side, width - w)
    y0 = min(int(best // (width // side + 1)) * side, height - h)
    return x0, y0, x0 + w, y0 + h


def _accuracy(output: str, gt: str, model_id: str, report: Report) -> str:
    evaluations = evaluate_with_curves(output, gt, model_id)
    names = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    rows, per_class = [], {}
    for ev in evaluations:
        m = ev.metrics
        report.metrics[m.iou_type] = m
        rows.append([KIND[m.iou_type]] + [metric(m.metrics[k]) for k in names])
        for name, ap in m.per_class.items():
            per_class.setdefault(name, {})[m.iou_type] = ap
    first = evaluations[0].metrics
    notes = "".join(f"<li>{escape(n)}</li>" for n in first.notes)
    kinds = [ev.metrics.iou_type for ev in evaluations]
    class_rows = [[name] + [metric(v.get(k)) for k in kinds] for name, v in per_class.items()]
    return (h2("Accuracy against ground truth")
            + f"<p>{first.images} scene(s), {first.gt_instances:,} ground-truth object(s), "
            f"{first.detections:,} detection(s), up to {first.max_dets} per scene counted "
            f"(pycocotools COCOeval; -1 = undefined, as pycocotools reports). Same numbers as "
            f"<code>maskray evaluate</code>.</p>"
            + table(["IoU type"] + names, rows, cls="metrics")
            + table(["class"] + [f"{KIND[k]} AP" for k in kinds], class_rows)
            + (f"<ul>{notes}</ul>" if notes else "")
            + '<div class="plots">' + img(plot_pr_curves(evaluations[0])) + "</div>")


def _config(records: list[dict]) -> str:
    if not records:
        return ""
    text = json.dumps(records[-1].get("config", {}), indent=2, sort_keys=True, default=str)
    return (h2("Configuration of the latest run")
            + f"<details><summary>resolved config</summary><pre>{escape(text)}</pre></details>")
