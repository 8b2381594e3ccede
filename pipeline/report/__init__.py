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

Modules:
  - `build`: `build_report` -> `Report`, and the page's sections (summary, runs, failed scenes,
    instances, throughput, sample overlays, accuracy, configuration).
  - `evaluation`: `evaluate_with_curves` -> `Evaluation` (COCOeval, keeping the precision arrays).
  - `plots`: the matplotlib figures, as PNG bytes.
  - `html`: the page's HTML pieces (inline CSS, tables, embedded images) and time helpers.

The public names of those modules are re-exported here (`from pipeline.report import ...`).
"""

from pipeline.report.evaluation import Evaluation, evaluate_with_curves
from pipeline.report.build import (Report, build_report, densest_window, latest_scene_rows,
                                   shard_commit_times)

__all__ = [
    "Evaluation", "Report", "build_report", "densest_window", "evaluate_with_curves",
    "latest_scene_rows", "shard_commit_times",
]
