"""The README's query cookbook, read from README.md and run with `maskray query` against a
generated output holding two model versions; each answer is checked against pyarrow. Also the
Python API (pipeline/output.py) on the same output."""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from jobs import infer as infer_job
from jobs import query as query_job
from pipeline.dataset import decode_full_mask, read_instances, read_scenes
from pipeline.errors import UsageError
from pipeline.output import geometries, mask, open_output

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from replay import replayed_archive  # noqa: E402

README = Path(__file__).resolve().parents[2] / "README.md"


def cookbook() -> list[str]:
    """The ```sql blocks of README's "### Cookbook" section, in order."""
    text = README.read_text()
    section = text.split("### Cookbook", 1)[1].split("\n### ", 1)[0]
    return [block.strip() for block in re.findall(r"```sql\n(.*?)```", section, re.S)]


@pytest.fixture(scope="module")
def output(ray_local, tmp_path_factory):
    """Synthetic scenes (UTM 33N, 0.5 m pixels) replayed twice: model A with every label, then
    model B with every other one (another labels file is another model id)."""
    root = tmp_path_factory.mktemp("cookbook")
    archive, out = replayed_archive(root, size=384, seed=31, tile_size=128, overlap=32)
    coco = json.loads((archive / "annotations.json").read_text())
    coco["annotations"] = coco["annotations"][::2]
    half = root / "half.json"
    half.write_text(json.dumps(coco))
    assert infer_job.main(["--predictor", f"labels:{half}", "--input", str(archive),
                           "--output", str(out), "--quiet", "--set", "tiling.tile_size=128",
                           "--set", "tiling.overlap=32"]) == 0
    return out


def _query(out: Path, sql: str, capsys) -> list[dict]:
    capsys.readouterr()
    assert query_job.main([str(out), sql, "--format", "json", "--max-rows", "1000"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]


def test_every_cookbook_query_gives_what_pyarrow_gives(output, tmp_path, monkeypatch, capsys):
    queries = cookbook()
    assert len(queries) == 7
    inst = read_instances(str(output)).to_pylist()
    scenes = {(s["scene_id"], s["model_id"]): s for s in read_scenes(str(output)).to_pylist()}
    models = sorted({r["model_id"] for r in inst})
    assert len(models) == 2

    per_class_scene, histogram, bbox, area, latest, pairs, external = queries
    got = _query(output, per_class_scene, capsys)
    assert Counter({(r["scene_id"], r["class_name"]): r["n"] for r in got}) == \
        Counter((r["scene_id"], r["class_name"]) for r in inst)

    got = _query(output, histogram, capsys)
    want = Counter(np.floor(np.float32(r["score"]) * 10) / 10 for r in inst)
    assert {round(r["score_from"], 6): r["n"] for r in got} == \
        {round(float(k), 6): v for k, v in want.items()}

    got = _query(output, bbox, capsys)
    want = [(r["scene_id"], r["instance_id"]) for r in inst
            if r["bbox"]["xmin"] <= 305160 and r["bbox"]["xmax"] >= 305100
            and r["bbox"]["ymin"] <= 5935230 and r["bbox"]["ymax"] >= 5935150]
    assert want, "the cookbook's box must hold objects of the test scenes"
    assert sorted((r["scene_id"], r["instance_id"]) for r in got) == sorted(want)

    got = _query(output, area, capsys)
    totals: Counter = Counter()
    for r in inst:
        t = scenes[(r["scene_id"], r["model_id"])]["transform"]
        totals[r["class_name"]] += r["area_px"] * abs(t[1] * t[5] - t[2] * t[4])
    assert {r["class_name"]: r["total_m2"] for r in got} == pytest.approx(dict(totals), abs=0.01)
    assert all(r["n"] * r["mean_m2"] == pytest.approx(r["total_m2"], rel=1e-3) for r in got)

    got = _query(output, latest, capsys)
    last_run = max(r["run_id"] for r in inst)
    assert Counter({(r["scene_id"], r["class_name"]): r["n"] for r in got}) == \
        Counter((r["scene_id"], r["class_name"]) for r in inst if r["run_id"] == last_run)

    got = _query(output, pairs, capsys)
    counts = Counter((r["scene_id"], r["model_id"]) for r in inst)
    assert [(r["scene_id"], r["n_a"], r["n_b"]) for r in got] == [
        (s, counts[(s, models[0])], counts[(s, models[1])])
        for s in sorted({r["scene_id"] for r in inst})]

    monkeypatch.chdir(tmp_path)
    sensors = {s: "sensor-" + "ab"[i % 2] for i, s in enumerate(sorted({r["scene_id"] for r in inst}))}
    (tmp_path / "scene_metadata.csv").write_text(
        "scene_id,sensor\n" + "".join(f"{s},{v}\n" for s, v in sensors.items()))
    got = _query(output, external, capsys)
    assert Counter({(r["sensor"], r["class_name"]): r["n"] for r in got}) == \
        Counter((sensors[r["scene_id"]], r["class_name"]) for r in inst)


def test_the_python_api(output):
    import geopandas as gpd
    import polars as pl
    import shapely

    out = open_output(str(output))
    assert len(out.models) == 2
    one = open_output(str(output), model_id=out.models[0])
    everything = out.dataset().to_table()
    assert one.dataset().count_rows() < everything.num_rows
    assert out.sql("select count(*) from instances").fetchone()[0] == everything.num_rows
    by_class = out.polars().group_by("class_name").len().collect()
    assert dict(zip(by_class["class_name"], by_class["len"])) == \
        dict(Counter(everything.column("class_name").to_pylist()))
    assert isinstance(out.polars("scenes").collect(), pl.DataFrame)

    scene = everything.column("scene_id")[0].as_py()
    gdf = one.geopandas(scene_id=scene)
    assert isinstance(gdf, gpd.GeoDataFrame) and gdf.crs.to_epsg() == 32633
    rows = one.table(filter=pc.field("scene_id") == scene)
    assert len(gdf) == rows.num_rows
    assert all(a.equals_exact(b, 0) for a, b in zip(gdf.geometry, geometries(rows)))
    assert len(one.geopandas()) == one.dataset().count_rows()  # both scenes are in UTM 33N
    wgs84 = one.geopandas(crs="EPSG:4326")
    assert wgs84.crs.to_epsg() == 4326 and wgs84.total_bounds[0] > 5  # lon in degrees east

    height = width = 384
    window = one.window(scene, 0, 0, 128, 128)
    assert 0 < window.num_rows < rows.num_rows
    for row in window.to_pylist():
        box = row["px_bbox"]
        assert box["x0"] < 128 and box["y0"] < 128
        local = mask(row)
        assert local.shape == (box["y1"] - box["y0"], box["x1"] - box["x0"])
        full = mask(row, full=(height, width))
        assert np.array_equal(full, decode_full_mask(row, height, width))
        assert full[box["y0"]:box["y1"], box["x0"]:box["x1"]].sum() == local.sum() == row["area_px"]
        assert shapely.from_wkb(row["geometry"]).area > 0
    with pytest.raises(UsageError, match="no inference output"):
        open_output(str(output / "nope"))
