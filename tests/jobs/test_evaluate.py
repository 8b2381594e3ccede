"""`maskray evaluate`: its numbers are pycocotools' numbers on the same detections, for real
labels (iSAID, DOTA) and for synthetic scenes with COCO or GeoJSON ground truth."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from jobs import evaluate as evaluate_job
from jobs import infer as infer_job
from jobs import synth as synth_job
from model.evaluate import METRICS, coco_metrics, match_scenes
from pipeline.dataset import read_instances, read_scenes, to_coco_results
from tests.replay import replayed_archive

TILING = ["--set", "tiling.tile_size=256", "--set", "tiling.overlap=64"]


def direct_cocoeval(gt: dict, results: list[dict], iou_type: str, max_dets: int | None = None) -> dict:
    """The reference: pycocotools straight, the way its README runs it, with maxDets
    [1, 10, every detection of an image] unless `max_dets` is given."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = json.loads(json.dumps(gt))
        coco_gt.createIndex()
        dets = [{k: v for k, v in r.items() if k != ("bbox" if iou_type == "segm" else "segmentation")}
                for r in results]
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        per_image = [sum(r["image_id"] == i for r in results) for i in coco_gt.getImgIds()]
        ev.params.maxDets = [1, 10, max_dets or max(100, *per_image)]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    if ev.params.maxDets[-1] == 100:
        stats = [float(v) for v in ev.stats[:6]]  # summarize()'s own numbers
    else:  # summarize() hard-codes 100 in its first line; the same formula at maxDets[-1]
        stats = []
        for iou, area in ((None, 0), (0.5, 0), (0.75, 0), (None, 1), (None, 2), (None, 3)):
            p = ev.eval["precision"]
            p = p if iou is None else p[np.where(iou == ev.params.iouThrs)[0]]
            p = p[:, :, :, area, -1]
            stats.append(float(np.mean(p[p > -1])) if (p > -1).any() else -1.0)
    out = dict(zip(METRICS, stats))
    names = {c["id"]: c["name"] for c in coco_gt.dataset["categories"]}
    per_class = {}
    for k, cat in enumerate(ev.params.catIds):
        p = ev.eval["precision"][:, :, k, 0, -1]
        per_class[names[cat]] = float(p[p > -1].mean()) if (p > -1).any() else None
    out["per_class"] = per_class
    return out


def assert_same(ours: dict, ref: dict) -> None:
    for key in METRICS:
        assert ours[key] == pytest.approx(ref[key], abs=1e-6), key
    assert ours["per_class"].keys() == ref["per_class"].keys()
    for name, ap in ref["per_class"].items():
        assert (ours["per_class"][name] is None) == (ap is None), name
        if ap is not None:
            assert ours["per_class"][name] == pytest.approx(ap, abs=1e-6), name


def perturbed(gt: dict, seed: int) -> list[dict]:
    """Detections made from the ground truth: some dropped, some eroded, some relabelled, scores
    random (float32-exact, as the output stores them)."""
    rng = np.random.default_rng(seed)
    images = {img["id"]: img for img in gt["images"]}
    cat_ids = sorted({a["category_id"] for a in gt["annotations"]})
    out = []
    for ann in gt["annotations"]:
        if rng.random() < 0.1:
            continue
        img = images[ann["image_id"]]
        seg = ann["segmentation"]
        if isinstance(seg, list):
            rles = mask_utils.frPyObjects(seg, img["height"], img["width"])
            full = mask_utils.merge(rles)
        elif isinstance(seg["counts"], list):
            full = mask_utils.frPyObjects(seg, *seg["size"])
        else:
            full = seg
        m = mask_utils.decode(full).astype(bool)
        if rng.random() < 0.3:
            eroded = m.copy()
            for axis, shift in ((0, 1), (0, -1), (1, 1), (1, -1)):
                eroded &= np.roll(m, shift, axis=axis)
            m = eroded if eroded.sum() >= 10 else m
        category = ann["category_id"]
        if rng.random() < 0.1 and len(cat_ids) > 1:
            category = cat_ids[(cat_ids.index(category) + 1) % len(cat_ids)]
        enc = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        out.append({"id": len(out) + 1, "image_id": ann["image_id"], "category_id": category,
                     "score": float(np.float32(rng.uniform(0.05, 1.0))),
                     "segmentation": {"size": enc["size"], "counts": enc["counts"].decode()},
                     "bbox": [float(v) for v in mask_utils.toBbox(enc)],
                     "area": float(mask_utils.area(enc)), "iscrowd": 0})
    return out


def evaluate_json(pred: Path, gt: Path, iou_type: str, capsys, *extra: str) -> dict:
    capsys.readouterr()
    assert evaluate_job.main(["--pred", str(pred), "--gt", str(gt), "--iou-type", iou_type,
                              "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def isaid_replay(shared_data, tmp_path_factory, ray_local):
    """Perturbed iSAID detections written by `maskray infer --predictor labels:` (so they went
    through tiling, stitching and the Parquet round trip), with the source detections."""
    root = tmp_path_factory.mktemp("isaid-eval")
    inp = root / "in"
    inp.mkdir()
    for name in ("P0003.png", "P0004.png", "P0005.png"):
        shutil.copy(shared_data / "isaid" / name, inp / name)
    gt_path = shared_data / "isaid" / "isaid_sample_rle_coco.json"
    gt = json.loads(gt_path.read_text())
    dets = perturbed(gt, seed=11)
    labels = root / "detections.json"
    labels.write_text(json.dumps({**gt, "annotations": dets}))
    out = root / "out"
    assert infer_job.main(["--predictor", f"labels:{labels}", "--input", str(inp),
                           "--output", str(out), "--quiet", *TILING]) == 0
    return gt_path, gt, dets, out


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_isaid_output_metrics_equal_pycocotools(isaid_replay, iou_type, capsys):
    gt_path, gt, dets, out = isaid_replay
    ours = evaluate_json(out, gt_path, iou_type, capsys)
    # the same detections as the output holds them ...
    image_ids = {img["file_name"]: img["id"] for img in gt["images"]}
    names = {c["name"]: c["id"] for c in gt["categories"]}
    instances = read_instances(str(out))
    results = to_coco_results(instances, read_scenes(str(out)), image_ids=image_ids)
    for r, name in zip(results, instances.column("class_name").to_pylist()):
        r["category_id"] = names[name]
    assert_same(ours, direct_cocoeval(gt, results, iou_type))
    # ... and the source detections before tiling and stitching: the replay is exact
    assert len(results) == len(dets)
    assert_same(ours, direct_cocoeval(gt, dets, iou_type))
    assert 0.3 < ours["AP"] < 0.95  # perturbed: neither perfect nor noise
    # COCO's own cap of 100 detections per image, when asked for
    capped = evaluate_json(out, gt_path, iou_type, capsys, "--max-dets", "100")
    assert_same(capped, direct_cocoeval(gt, dets, iou_type, max_dets=100))


def test_dota_polygons_equal_pycocotools(shared_data):
    gt = json.loads((shared_data / "dota" / "DERIVED_dota_poly_coco.json").read_text())
    dets = perturbed(gt, seed=5)
    for iou_type in ("segm", "bbox"):
        ours = coco_metrics(gt, dets, iou_type).to_json()
        assert_same(ours, direct_cocoeval(gt, dets, iou_type))


@pytest.fixture(scope="module")
def synth_replay(tmp_path_factory, ray_local):
    return replayed_archive(tmp_path_factory.mktemp("synth-eval"), 700, 3, 256, 64)


@pytest.mark.parametrize("gt_name", ["annotations.json", "labels"])
def test_ground_truth_replayed_scores_one_against_coco_or_geojson(synth_replay, gt_name, capsys):
    archive, out = synth_replay
    for iou_type in ("segm", "bbox"):
        ours = evaluate_json(out, archive / gt_name, iou_type, capsys)
        assert ours["AP"] == pytest.approx(1.0) and ours["AP50"] == pytest.approx(1.0)
        present = [ap for ap in ours["per_class"].values() if ap is not None]
        assert present and all(ap == pytest.approx(1.0) for ap in present)
    # COCO's cap of 100 per image (and class) would miss most of the ~270 trees of a scene
    capped = evaluate_json(out, archive / gt_name, "segm", capsys, "--max-dets", "100")
    assert capped["per_class"]["tree"] < 0.5 and capped["per_class"]["ship"] == pytest.approx(1.0)


def test_human_output_names_what_it_evaluated(synth_replay, capsys):
    archive, out = synth_replay
    assert evaluate_job.main(["--pred", str(out), "--gt", str(archive / "labels")]) == 0
    text = capsys.readouterr().out
    assert text.startswith("segm: 2 scene(s), ")
    most = max(read_instances(str(out)).group_by("scene_id").aggregate([("scene_id", "count")])
               .column("scene_id_count").to_pylist())
    assert f"up to {most} per scene" in text and most > 100  # nothing cut at COCO's 100
    assert f"Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets={most:>3d} ]" in text
    assert "per-class AP:" in text and "building" in text


def test_errors_are_one_line(synth_replay, tmp_path, capsys):
    archive, out = synth_replay
    assert evaluate_job.main(["--pred", str(out), "--gt", str(tmp_path / "nope.json")]) == 2
    assert capsys.readouterr().err.strip() == f"maskray: error: ground truth not found: {tmp_path / 'nope.json'}"
    assert evaluate_job.main(["--pred", str(tmp_path), "--gt", str(archive / "annotations.json")]) == 2
    assert "no scenes in" in capsys.readouterr().err
    other = json.loads((archive / "annotations.json").read_text())
    other["categories"] = [{"id": c["id"], "name": f"not-{c['name']}"} for c in other["categories"]]
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert evaluate_job.main(["--pred", str(out), "--gt", str(tmp_path / "other.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("maskray: error: no predicted class") and "\n" not in err


def test_scene_matching_by_relative_path_then_unique_file_name():
    images = [{"id": 1, "file_name": "scenes/a.tif"}, {"id": 2, "file_name": "./b.tif"},
              {"id": 3, "file_name": "x/c.tif"}, {"id": 4, "file_name": "y/c.tif"},
              {"id": 5, "file_name": "d.tif"}]
    image_of, notes = match_scenes(images, ["scenes/a.tif", "b.tif", "z/c.tif", "e.tif"])
    assert image_of == {"scenes/a.tif": 1, "b.tif": 2}  # c.tif is ambiguous, e.tif unknown
    assert notes == ["3 ground-truth scene(s) are not in the output and are left out",
                     "2 output scene(s) have no ground truth and are left out"]
