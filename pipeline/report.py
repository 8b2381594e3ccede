"""`maskray report`: one self-contained HTML page about an inference output (one model).

Sections: runs (status, duration, scenes and tiles per second), scenes processed / failed with
their error type and message, instances per class, score and area histograms, throughput over
time, a grid of sample overlays (`pipeline.render`), and with ground truth the COCO mask
metrics and per-class precision / recall curves.

The page opens offline and alone: plots are PNGs (matplotlib, Agg, no pyplot state), overlays are
JPEGs, all embedded as base64 `data:` URIs; the CSS is inline; no script, font or URL is loaded.

Throughput, from what the output records: each run record holds its start, end and counts
(scenes, tiles), and each committed shard is one scenes part whose modification time is the
moment it was committed (staged, then renamed / copied into place). The timeline plots, per run,
shards committed against seconds since the run started; the runs table divides counts by
duration. The scenes table's `seconds` is read-and-decode time of the scene's tiles (model time
is not in it), plotted per tile.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from matplotlib.ticker import MaxNLocator

from pipeline.overlay import class_colour

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
    Path(report.path).write_text(_page(f"maskray report: {model_id}", body), encoding="utf-8")
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
    return (_h2("Summary") + '<div class="cards">' + "".join(
        f'<div class="card"><b>{v:,}</b><span>{_e(k)}</span></div>' for k, v in cards)
        + "</div>" + '<table class="facts">' + "".join(
            f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts) + "</table>")


def _runs(records: list[dict]) -> str:
    rows = []
    for r in records:
        counts, seconds = r.get("counts") or {}, _duration(r)
        scenes = counts.get("scenes_ok", 0) + counts.get("scenes_error", 0)
        numbers = [f"{counts.get(k, 0):,}" for k in ("scenes_ok", "scenes_error",
                                                      "scenes_skipped", "instances", "tiles")]
        rows.append([r.get("run_id"), r.get("status"), r.get("started_at"),
                     f"{seconds:.0f} s" if seconds is not None else "-", *numbers,
                     _rate(scenes, seconds), _rate(counts.get("tiles", 0), seconds)])
    head = ["run", "status", "started (UTC)", "duration", "scenes ok", "failed", "already done",
            "instances", "tiles", "scenes/s", "tiles/s"]
    return _h2("Runs") + (_table(head, rows) if rows else "<p>No run record.</p>")


def _rate(count: int, seconds: float | None) -> str:
    return f"{count / seconds:.2f}" if seconds else "-"


def _failures(failed: pa.Table) -> str:
    if failed.num_rows == 0:
        return _h2("Failed scenes") + "<p>No scene failed.</p>"
    rows = failed.select(["scene_id", "error_type", "error_message", "run_id"]).to_pylist()
    by_type: dict[str, int] = {}
    for r in rows:
        by_type[r["error_type"] or "?"] = by_type.get(r["error_type"] or "?", 0) + 1
    shown = [[r["scene_id"], r["error_type"], r["error_message"], r["run_id"]]
             for r in rows[:MAX_ERROR_ROWS]]
    more = (f"<p>... and {len(rows) - MAX_ERROR_ROWS} more (query them: "
            f"<code>select * from scenes where status = 'error'</code>).</p>"
            if len(rows) > MAX_ERROR_ROWS else "")
    return (_h2(f"Failed scenes ({len(rows)})")
            + _table(["error type", "scenes"], sorted(by_type.items(), key=lambda kv: -kv[1]))
            + _table(["scene", "error type", "reason", "run"], shown) + more)


def _instances(instances: pa.Table) -> str:
    if instances.num_rows == 0:
        return _h2("Instances") + "<p>No instance in this output.</p>"
    classes = _class_stats(instances)
    rows = [[c["name"], c["id"], f"{c['count']:,}", f"{c['mean_score']:.3f}",
             f"{c['median_area']:,.0f}"] for c in classes]
    figures = [plot_class_counts(classes), plot_score_histogram(instances, classes),
               plot_area_histogram(instances, classes)]
    return (_h2("Instances") + _table(["class", "id", "instances", "mean score",
                                       "median area (px)"], rows)
            + '<div class="plots">' + "".join(_img(f) for f in figures) + "</div>")


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
        start, end = _run_interval(r)
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
    return (_h2("Throughput") + text + '<div class="plots">' + _img(plot_timeline(timeline))
            + _img(plot_read_seconds(seconds[timed] / tiles[timed])) + "</div>")


def shard_commit_times(output: str, model_id: str) -> list[float]:
    """POSIX commit times of the scenes parts of `model_id` (one per shard), from one listing."""
    from pipeline.commit import partition_dir
    from pipeline.storage import filesystem

    fs, path = filesystem(output)
    base = partition_dir(path.rstrip("/"), "scenes", model_id)
    if not fs.exists(base):
        return []
    found = fs.find(base, detail=True)
    return sorted(_info_time(info) for p, info in found.items() if p.endswith(".parquet"))


def _info_time(info: dict[str, Any]) -> float:
    """Modification time (POSIX s) of an fsspec info dict: local `mtime`, S3 `LastModified`."""
    value = info.get("mtime", info.get("LastModified", info.get("last_modified")))
    if isinstance(value, dt.datetime):
        return value.timestamp()
    if isinstance(value, str):
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return float(value) if value is not None else float("nan")


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
            figures.append(f'<figure class="missing"><figcaption>{_e(scene_id)}: not rendered: '
                           f'{_e(str(exc))}</figcaption></figure>')
            continue
        report.samples += 1
        caption = (f"{_e(scene_id)}: {row['instance_count']:,} instances; right: window "
                   f"{','.join(map(str, window))} at native resolution")
        figures.append(f'<figure>{_jpeg(overview)}{_jpeg(detail)}'
                       f"<figcaption>{caption}</figcaption></figure>")
    return (_h2("Sample overlays") + "<p>The scenes with the most instances: the whole scene "
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


_KIND = {"segm": "mask", "bbox": "box"}


def _accuracy(output: str, gt: str, model_id: str, report: Report) -> str:
    evaluations = evaluate_with_curves(output, gt, model_id)
    names = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    rows, per_class = [], {}
    for ev in evaluations:
        m = ev.metrics
        report.metrics[m.iou_type] = m
        rows.append([_KIND[m.iou_type]] + [_metric(m.metrics[k]) for k in names])
        for name, ap in m.per_class.items():
            per_class.setdefault(name, {})[m.iou_type] = ap
    first = evaluations[0].metrics
    notes = "".join(f"<li>{_e(n)}</li>" for n in first.notes)
    kinds = [ev.metrics.iou_type for ev in evaluations]
    class_rows = [[name] + [_metric(v.get(k)) for k in kinds] for name, v in per_class.items()]
    return (_h2("Accuracy against ground truth")
            + f"<p>{first.images} scene(s), {first.gt_instances:,} ground-truth object(s), "
            f"{first.detections:,} detection(s), up to {first.max_dets} per scene counted "
            f"(pycocotools COCOeval; -1 = undefined, as pycocotools reports). Same numbers as "
            f"<code>maskray evaluate</code>.</p>"
            + _table(["IoU type"] + names, rows, cls="metrics")
            + _table(["class"] + [f"{_KIND[k]} AP" for k in kinds], class_rows)
            + (f"<ul>{notes}</ul>" if notes else "")
            + '<div class="plots">' + _img(plot_pr_curves(evaluations[0])) + "</div>")


def _config(records: list[dict]) -> str:
    if not records:
        return ""
    text = json.dumps(records[-1].get("config", {}), indent=2, sort_keys=True, default=str)
    return (_h2("Configuration of the latest run")
            + f"<details><summary>resolved config</summary><pre>{_e(text)}</pre></details>")


# ---- ground truth: COCO metrics and precision / recall curves ---------------------------------

@dataclass
class Evaluation:
    """One COCOeval of the output. metrics: as `maskray evaluate` reports them; recall: the
    (R,) recall grid; iou: the (T,) IoU thresholds; precision: class name -> (T, R) precision at
    each recall (all areas, the last maxDets; -1 where undefined)."""

    metrics: Any
    recall: np.ndarray
    iou: np.ndarray
    precision: dict[str, np.ndarray]


def evaluate_with_curves(output: str, gt: str, model_id: str,
                         iou_types: Sequence[str] = ("segm",)) -> list[Evaluation]:
    """`model.evaluate.evaluate_output` for each IoU type, keeping COCOeval's precision arrays
    for the curves. Ground truth and results are built once, through the same functions, so the
    numbers equal `maskray evaluate`'s (tests check it)."""
    from model.evaluate import (gt_from_geojson_dir, match_classes, match_scenes,
                                output_results)
    from pipeline.dataset import read_instances, read_scenes
    from pipeline.errors import MaskrayError, UsageError

    scenes = read_scenes(output, model_id)
    instances = read_instances(output, model_id)
    path = Path(gt)
    if path.is_dir():
        truth = gt_from_geojson_dir(path, scenes)
    elif path.is_file():
        try:
            truth = json.loads(path.read_text())
        except ValueError as exc:
            raise MaskrayError(f"cannot read COCO ground truth {path}: {exc}") from exc
        if not isinstance(truth, dict) or not {"images", "annotations"} <= truth.keys():
            raise MaskrayError(f"{path}: not a COCO dataset (needs 'images' and 'annotations')")
    else:
        raise UsageError(f"ground truth not found: {gt}")
    image_of, notes = match_scenes(truth["images"], scenes.column("scene_id").to_pylist())
    if not image_of:
        raise MaskrayError(f"no scene of {output} is in the ground truth {gt} "
                           "(file names must be relative to the input root)")
    category_of, class_notes = match_classes(truth.get("categories", []),
                                             set(instances.column("class_name").to_pylist()))
    results = output_results(instances, scenes, image_of, category_of)
    image_ids = sorted(set(image_of.values()))
    out = []
    for iou_type in iou_types:
        ev = _coco_eval(truth, results, iou_type, image_ids)
        ev.metrics.notes = notes + class_notes
        out.append(ev)
    return out


def _coco_eval(truth: dict, results: list[dict], iou_type: str, image_ids: list) -> Evaluation:
    """`model.evaluate.coco_metrics`, step for step, keeping the evaluator's precision array."""
    import contextlib
    from collections import Counter

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    # The private helpers are the ones coco_metrics uses: same defaults, same numbers.
    from model.evaluate import METRICS, CocoMetrics, _result_for, _with_defaults, summarize

    results = [_result_for(r, iou_type) for r in results]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt = COCO()
        coco_gt.dataset = _with_defaults(truth)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(list(results)) if results else COCO()
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.params.imgIds = list(image_ids)
        max_dets = max([100, *Counter(r["image_id"] for r in results).values()])
        evaluator.params.maxDets = [1, 10, int(max_dets)]
        evaluator.evaluate()
        evaluator.accumulate()
    stats, summary = summarize(evaluator)
    names = {c["id"]: c["name"] for c in coco_gt.dataset["categories"]}
    precision = evaluator.eval["precision"]  # (iou T, recall R, class K, area A, max dets M)
    per_class, curves = {}, {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        p = precision[:, :, k, 0, -1]
        per_class[names[cat_id]] = float(np.mean(p[p > -1])) if (p > -1).any() else None
        curves[names[cat_id]] = p
    evaluated = set(evaluator.params.imgIds)
    metrics = CocoMetrics(
        iou_type=iou_type, metrics=dict(zip(METRICS, stats[:6])), per_class=per_class,
        summary=summary, images=len(evaluated),
        gt_instances=sum(1 for a in coco_gt.dataset["annotations"] if a["image_id"] in evaluated),
        detections=sum(1 for r in results if r["image_id"] in evaluated), max_dets=max_dets)
    return Evaluation(metrics, np.asarray(evaluator.params.recThrs),
                      np.asarray(evaluator.params.iouThrs), curves)


# ---- plots (matplotlib Figure objects: no pyplot, no global backend) -------------------------

RUN_LINES = 10  # runs drawn in the timeline: the latest ones


def _figure(width: float = 5.4, height: float = 3.3):
    """A standalone Figure (drawn with Agg on save): no pyplot, so nothing global changes."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig) -> bytes:
    """PNG bytes of a figure, without the "Software" text chunk (bytes depend on data only)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def _rgb(colour: Sequence[int]) -> tuple[float, ...]:
    return tuple(v / 255 for v in colour)


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#555")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_class_counts(classes: list[dict[str, Any]]) -> bytes:
    """Horizontal bars: instances per class in the class colours, count written at each bar."""
    fig = _figure(5.4, 0.6 + 0.42 * len(classes))
    ax = fig.subplots()
    names = [f"{c['name']} ({c['id']})" for c in classes][::-1]
    counts = [c["count"] for c in classes][::-1]
    bars = ax.barh(names, counts, color=[_rgb(c["colour"]) for c in classes][::-1],
                   edgecolor="#333", linewidth=0.6)
    ax.bar_label(bars, labels=[f"{n:,}" for n in counts], padding=3, fontsize=9)
    ax.set_xlabel("instances")
    ax.set_title("Instances per class")
    ax.margins(x=0.15)
    return _png(fig)


def _stacked(ax, instances: pa.Table, classes: list[dict], column: str, bins) -> None:
    ids = instances.column("class_id").to_numpy()
    values = instances.column(column).to_numpy().astype(float)
    ax.hist([values[ids == c["id"]] for c in classes], bins=bins, stacked=True,
            color=[_rgb(c["colour"]) for c in classes], edgecolor="#333", linewidth=0.4,
            label=[c["name"] for c in classes])
    ax.legend(fontsize=8, frameon=False)
    ax.set_ylabel("instances")


def plot_score_histogram(instances: pa.Table, classes: list[dict]) -> bytes:
    """Scores in 20 bins over [0, 1], stacked by class."""
    fig = _figure()
    ax = fig.subplots()
    _stacked(ax, instances, classes, "score", np.linspace(0, 1, 21))
    ax.set_xlabel("score")
    ax.set_title("Detection scores")
    return _png(fig)


def plot_area_histogram(instances: pa.Table, classes: list[dict]) -> bytes:
    """Mask areas (px) in log-spaced bins, stacked by class."""
    fig = _figure()
    ax = fig.subplots()
    top = max(float(pc.max(instances.column("area_px")).as_py() or 1), 2.0)
    _stacked(ax, instances, classes, "area_px", np.geomspace(1, top * 1.01, 30))
    ax.set_xscale("log")
    ax.set_xlabel("mask area (px, log scale)")
    ax.set_title("Instance areas")
    return _png(fig)


def plot_timeline(runs: list[tuple[str, list[float], float | None]]) -> bytes:
    """Per run: cumulative shards committed against seconds since its start, end marked."""
    fig = _figure()
    ax = fig.subplots()
    shown = runs[-RUN_LINES:]
    if not any(times for _, times, _ in shown):
        _empty(ax, "no shard committed")
    for run_id, times, end in shown:
        xs = [0.0, *times] + ([end] if end is not None and end >= (times[-1] if times else 0)
                              else [])
        ys = list(range(len(times) + 1)) + ([len(times)] if len(xs) > len(times) + 1 else [])
        line, = ax.step(xs, ys, where="post", label=run_id, linewidth=1.6)
        if end is not None:
            ax.plot([end], [len(times)], marker="o", markersize=5, color=line.get_color())
    ax.set_xlabel("seconds since the run started")
    ax.set_ylabel("shards committed")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    title = "Commits over time" + (f" (latest {RUN_LINES} runs)" if len(runs) > RUN_LINES else "")
    ax.set_title(title)
    if shown:
        ax.legend(fontsize=7, loc="best", framealpha=0.9)
    return _png(fig)


def plot_read_seconds(per_tile: np.ndarray) -> bytes:
    """Histogram of read-and-decode seconds per tile, one value per ok scene."""
    fig = _figure()
    ax = fig.subplots()
    if per_tile.size == 0:
        _empty(ax, "no scene timing")
    else:
        bins = int(np.clip(per_tile.size // 3, 5, 30))
        ax.hist(per_tile * 1000, bins=bins, color="#0072B2", edgecolor="#333", linewidth=0.4)
        ax.set_xlabel("read + decode ms per tile (per scene)")
        ax.set_ylabel("scenes")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Reading time")
    return _png(fig)


def plot_pr_curves(ev: Evaluation) -> bytes:
    """One panel per ground-truth class: precision against recall at IoU 0.50 and 0.75, the
    class's AP (mean over IoU 0.50:0.95) in the title."""
    classes = list(ev.precision)
    cols = min(4, max(len(classes), 1))
    rows = -(-max(len(classes), 1) // cols)
    fig = _figure(2.9 * cols, 2.6 * rows + 0.4)
    axes = np.atleast_1d(fig.subplots(rows, cols, sharex=True, sharey=True)).ravel()
    kind = _KIND.get(ev.metrics.iou_type, ev.metrics.iou_type)
    fig.suptitle(f"Precision / recall per class ({kind} IoU)")
    for ax, name in zip(axes, classes):
        ap = ev.metrics.per_class.get(name)
        ax.set_title(f"{name}: AP {'n/a' if ap is None else f'{ap:.3f}'}", fontsize=10)
        for threshold, style, colour in ((0.5, "-", "#0072B2"), (0.75, "--", "#D55E00")):
            t = int(np.argmin(np.abs(ev.iou - threshold)))
            p = ev.precision[name][t]
            # COCOeval writes precision 0 past the highest recall reached: end the curve there
            reached = np.flatnonzero(p > 0)
            keep = np.arange(p.size) <= (reached[-1] if reached.size else -1)
            if keep.any():
                ax.plot(ev.recall[keep], p[keep], style, color=colour, linewidth=1.6,
                        label=f"IoU {threshold:.2f}")
        ax.set_xlim(0, 1.01)
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, frameon=False, loc="lower left")
    for ax in axes[len(classes):]:
        ax.set_visible(False)
    for ax in axes[(rows - 1) * cols:]:
        ax.set_xlabel("recall")
    for ax in axes[::cols]:
        ax.set_ylabel("precision")
    return _png(fig)


# ---- HTML pieces ---------------------------------------------------------------------------------

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;
max-width:1180px;padding:0 16px;color:#1d1d1f;background:#fff}
h1{font-size:22px;margin:0 0 8px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;
padding-bottom:4px}table{border-collapse:collapse;margin:8px 0 12px;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}td{max-width:520px;overflow-wrap:anywhere}
table.metrics td{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;gap:10px;flex-wrap:wrap}.card{border:1px solid #ddd;border-radius:6px;
padding:8px 14px;min-width:110px}.card b{display:block;font-size:22px}.card span{color:#555}
.plots{display:flex;flex-wrap:wrap;gap:12px}.plots img{max-width:100%;height:auto}
.samples{display:grid;grid-template-columns:repeat(auto-fill,minmax(540px,1fr));gap:14px}
figure{margin:0}figure img{margin-right:6px;vertical-align:top;max-width:100%}
figcaption{font-size:12px;color:#444}pre{background:#f7f7f7;padding:8px;overflow:auto}
code{background:#f3f3f3;padding:0 3px}
"""


def _page(title: str, body: Sequence[str]) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{_e(title)}</title><style>{CSS}</style></head>\n<body>"
            f"<h1>{_e(title)}</h1>\n" + "\n".join(b for b in body if b) + "\n</body></html>\n")


def _h2(text: str) -> str:
    return f"<h2>{_e(text)}</h2>"


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    head_html = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table{attr}><tr>{head_html}</tr>{body}</table>"


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _img(png: bytes) -> str:
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _jpeg(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return (f'<img alt="overlay" width="{image.width}" height="{image.height}" '
            f'src="data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()}">')


def _metric(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _time(text: str | None) -> float | None:
    if not text:
        return None
    return dt.datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()


def _duration(record: dict) -> float | None:
    start, end = _run_interval(record)
    return None if start is None or end is None else max(end - start, 0.0)


def _run_interval(record: dict) -> tuple[float | None, float | None]:
    """(start, end) POSIX seconds of a run. started_at / ended_at are whole seconds; a run id
    made by `new_run_id` holds the start to the millisecond, used when it agrees."""
    import re

    start, end = _time(record.get("started_at")), _time(record.get("ended_at"))
    match = re.match(r"(\d{8}T\d{6}\.\d{3})Z", str(record.get("run_id", "")))
    if match and start is not None:
        precise = dt.datetime.strptime(match.group(1), "%Y%m%dT%H%M%S.%f").replace(
            tzinfo=dt.timezone.utc).timestamp()
        start = precise if start <= precise < start + 1 else start
    return start, end
