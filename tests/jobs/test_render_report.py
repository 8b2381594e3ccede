"""`maskray render` and `maskray report` on a real output: synthetic ground truth replayed through
`maskray infer --predictor labels:` (two runs; the second meets a zero-byte scene)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.windows import Window

from jobs import infer as infer_job
from jobs import render as render_job
from jobs import report as report_job
from pipeline.dataset import decode_mask, read_instances
from pipeline.overlay import Shape, View, class_colour, sample_mask, to_rgb8
from pipeline.render import resolve_model, window_instances
from tests.replay import replayed_archive

REPO = Path(__file__).resolve().parents[2]
SCENE = "scenes/scene_0000.tif"
WINDOW = (60, 60, 220, 200)  # 160 x 140 px of a 300 px scene
GAP, TITLE = 6, 24  # overlay.side_by_side gap; overlay.titled bar at its default 14 px font


@pytest.fixture(scope="module")
def made(ray_local, tmp_path_factory):
    """(archive, output): run 1 replays two scenes; run 2 finds a zero-byte scene added since."""
    archive, out = replayed_archive(tmp_path_factory.mktemp("render"), 300, 3, 128, 32)
    (archive / "scenes" / "broken.tif").write_bytes(b"")
    assert infer_job.main(["--predictor", f"labels:{archive / 'annotations.json'}",
                           "--input", str(archive), "--output", str(out), "--quiet",
                           "--set", "tiling.tile_size=128", "--set", "tiling.overlap=32",
                           "--max-error-rate", "1"]) == 0
    return archive, out


def _picture(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def _scene_pixels(archive: Path, window) -> np.ndarray:
    x0, y0, x1, y1 = window
    with rasterio.open(archive / SCENE) as src:
        data = src.read([1, 2, 3], window=Window(x0, y0, x1 - x0, y1 - y0))
    return np.transpose(data, (1, 2, 0)).astype(int)


def test_window_render_tints_masks_and_leaves_the_rest_untouched(made, tmp_path):
    archive, out = made
    png = tmp_path / "w.png"
    assert render_job.main([str(out), "--scene", SCENE, "--window", ",".join(map(str, WINDOW)),
                            "--no-labels", "--out", str(png)]) == 0
    picture, raw = _picture(png), _scene_pixels(archive, WINDOW)
    assert picture.shape == (140, 160, 3)  # the window, at native size

    rows = window_instances(str(out), SCENE, WINDOW, None).to_pylist()
    x0, y0 = WINDOW[:2]
    # Pixels at least a pixel away from every instance box show the scene exactly (uint8 as stored).
    near = np.zeros(picture.shape[:2], bool)
    for r in rows:
        b = r["px_bbox"]
        near[max(b["y0"] - y0 - 1, 0):max(b["y1"] - y0 + 1, 0),
             max(b["x0"] - x0 - 1, 0):max(b["x1"] - x0 + 1, 0)] = True
    assert (~near).sum() > 2000
    assert np.array_equal(picture[~near], raw[~near])

    # Inside a mask (not on its outline, under no other box): 45 % of the class colour.
    checked = 0
    for k, r in enumerate(rows):
        b = r["px_bbox"]
        if not (b["x0"] >= x0 and b["y0"] >= y0 and b["x1"] <= WINDOW[2] and b["y1"] <= WINDOW[3]):
            continue
        mask = decode_mask(r)
        inner = mask.copy()
        inner[1:-1, 1:-1] &= mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
        inner[[0, -1], :] = inner[:, [0, -1]] = False
        for i, j in zip(*np.nonzero(inner)):
            y, x = b["y0"] + i, b["x0"] + j
            others = [o["px_bbox"] for m, o in enumerate(rows) if m != k]
            if any(o["x0"] <= x < o["x1"] and o["y0"] <= y < o["y1"] for o in others):
                continue
            expected = 0.55 * raw[y - y0, x - x0] + 0.45 * np.array(class_colour(r["class_id"]))
            assert np.abs(picture[y - y0, x - x0] - expected).max() <= 1
            checked += 1
            break
    assert checked >= 3


def test_labels_draw_boxes_and_captions(made, tmp_path):
    _, out = made
    plain, labelled = tmp_path / "plain.png", tmp_path / "labelled.png"
    window = ",".join(map(str, WINDOW))
    for png, flag in ((plain, "--no-labels"), (labelled, "--labels")):
        assert render_job.main([str(out), "--scene", SCENE, "--window", window, flag,
                                "--out", str(png)]) == 0
    changed = np.any(_picture(plain) != _picture(labelled), axis=2)
    assert changed.sum() > 500  # boxes and caption boxes
    # a caption box is dark: its background is the darkest colour drawn
    assert (_picture(labelled)[changed].sum(axis=1) < 150).sum() > 100


def test_overview_fits_max_side(made, tmp_path):
    _, out = made
    png = tmp_path / "overview.png"
    assert render_job.main([str(out), "--scene", SCENE, "--max-side", "100",
                            "--out", str(png)]) == 0
    assert Image.open(png).size == (100, 100)  # a 300 px scene, decimated 3x


def test_only_instances_meeting_the_window_are_read(made):
    _, out = made
    model = resolve_model(str(out), None)
    used = window_instances(str(out), SCENE, WINDOW, model)
    everything = read_instances(str(out)).to_pylist()

    def meets(b):
        return b["x0"] < WINDOW[2] and b["x1"] > WINDOW[0] and b["y0"] < WINDOW[3] \
            and b["y1"] > WINDOW[1]

    expected = sorted(r["instance_id"] for r in everything
                      if r["scene_id"] == SCENE and meets(r["px_bbox"]))
    assert sorted(used.column("instance_id").to_pylist()) == expected
    assert 0 < len(expected) < sum(r["scene_id"] == SCENE for r in everything)
    assert set(used.column_names) == {"scene_id", "instance_id", "class_id", "class_name",
                                      "score", "px_bbox", "mask_rle"}  # no geometry read


def test_ground_truth_panel_left_of_predictions(made, tmp_path):
    archive, out = made
    window = ",".join(map(str, WINDOW))
    png = tmp_path / "gt.png"
    assert render_job.main([str(out), "--scene", SCENE, "--window", window, "--no-labels",
                            "--gt", str(archive / "annotations.json"), "--out", str(png)]) == 0
    picture = _picture(png)
    assert picture.shape == (140 + TITLE, 2 * 160 + GAP, 3)
    left, right = picture[TITLE:, :160], picture[TITLE:, 160 + GAP:]
    # replayed ground truth: the model's masks are the labels' masks, pixel for pixel
    assert np.array_equal(left, right)
    assert not np.array_equal(right, _scene_pixels(archive, WINDOW))
    # GeoJSON ground truth (polygons in the scene CRS) draws too
    assert render_job.main([str(out), "--scene", SCENE, "--window", window,
                            "--gt", str(archive / "labels"), "--out", str(png)]) == 0
    assert Image.open(png).size == (2 * 160 + GAP, 140 + TITLE)


@pytest.mark.parametrize("args, message", [
    (["--scene", "scenes/nope.tif"], "scene 'scenes/nope.tif' is not in"),
    (["--scene", SCENE, "--window", "10,10,5,20"], "--window must be x0,y0,x1,y1"),
    (["--scene", SCENE, "--window", "0,0,400,100"], "is not inside scene"),
    (["--scene", SCENE, "--bands", "4,5,6"], "--bands must name"),
])
def test_bad_scene_or_window_is_one_line_exit_2(made, tmp_path, capsys, args, message):
    _, out = made
    assert render_job.main([str(out), *args, "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


def test_report_is_self_contained_with_failures_and_metrics(made, tmp_path, capsys):
    from model.evaluate import evaluate_output
    from pipeline.report import build_report

    archive, out = made
    gt = archive / "annotations.json"
    report = build_report(str(out), str(tmp_path / "r"), gt=str(gt), samples=2)
    page = Path(report.path).read_text()
    assert report.path == str(tmp_path / "r" / "index.html")
    assert not re.search(r"https?://", page)
    sources = re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"' >]*)""", page)
    assert sources and all(s.startswith("data:image/") for s in sources)
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert (report.samples, page.count("data:image/jpeg")) == (2, 4)  # overview + detail each
    assert "scenes/broken.tif" in page and "empty file (0 bytes)" in page
    assert (report.scenes_ok, report.scenes_error) == (2, 1)
    # the metrics table: the numbers `maskray evaluate` prints
    assert "Accuracy against ground truth" in page and "<th>AP50</th>" in page
    expected = evaluate_output(str(out), gt, "segm")
    assert report.metrics["segm"].metrics == expected.metrics
    assert report.metrics["segm"].per_class == expected.per_class
    assert f"<td>{expected.metrics['AP']:.3f}</td>" in page

    assert report_job.main([str(out), "--out", str(tmp_path / "plain"), "--samples", "0"]) == 0
    assert "2 scene(s) ok, 1 failed" in capsys.readouterr().out
    plain = (tmp_path / "plain" / "index.html").read_text()
    assert "Accuracy against ground truth" not in plain and "data:image/jpeg" not in plain
    assert plain.count("data:image/png") == 5  # classes, scores, areas, commits, read time


@pytest.mark.parametrize("module", ["jobs.render", "jobs.report"])
def test_help_exits_0(module):
    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--out" in done.stdout


def test_tiny_objects_stay_visible_in_an_overview():
    """A 2 x 2 px object in a 1:10 overview: no pixel centre hits it, it still gets a pixel."""
    from pipeline.rle import encode

    shape = Shape(1, 55, 55, 57, 57, encode(np.ones((2, 2), bool)))
    row0, col0, mask = sample_mask(shape, View.fit((0, 0, 1000, 1000), 100))
    assert mask.sum() == 1 and (row0 + 1, col0 + 1) == (5, 5)


def test_percentile_stretch_for_wide_types():
    pixels = np.stack([np.linspace(1000, 5000, 100, dtype=np.float32).reshape(10, 10)] * 3)
    rgb = to_rgb8(pixels, stretch=True)
    assert rgb.shape == (10, 10, 3) and rgb.min() == 0 and rgb.max() == 255
