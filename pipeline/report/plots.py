"""The report's plots: matplotlib Figure objects (no pyplot, no global backend) saved as PNG."""

from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from matplotlib.ticker import MaxNLocator

from pipeline.report.evaluation import KIND, Evaluation

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
    kind = KIND.get(ev.metrics.iou_type, ev.metrics.iou_type)
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
