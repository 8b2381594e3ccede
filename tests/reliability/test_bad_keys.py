"""Unsafe scene names in an archive: '..', a leading '/', '//', backslashes, control characters
(NUL, newline), bytes that are not UTF-8, a symlink loop, a URI in a list file. Each becomes an
error row with its reason (never opened, nothing written outside the output root) and the rest of
the archive completes; a re-run finds them all recorded and does nothing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from jobs import infer as infer_job
from pipeline.dataset import read_instances, read_scenes
from pipeline.scenes import list_scenes, unsafe_reason

TILING = ["--set", "tiling.tile_size=128", "--set", "tiling.overlap=16"]


def _good_tif(path: Path) -> None:
    rng = np.random.default_rng(3)
    with rasterio.open(path, "w", driver="GTiff", width=160, height=160, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=Affine(0.5, 0, 500000, 0, -0.5, 4000000)) as dst:
        dst.write(rng.integers(0, 256, (3, 160, 160), dtype=np.uint8))


@pytest.fixture
def archive(tmp_path) -> Path:
    """tmp/in: two good scenes and every unsafe local name; tmp/outside.tif: a target to escape
    to; tmp/in/list.txt names good and unsafe entries."""
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    _good_tif(root / "good.tif")
    _good_tif(root / "sub" / "good2.tif")
    _good_tif(tmp_path / "outside.tif")
    for name in ("back\\slash.tif", "new\nline.tif", "tab\tname.tif"):
        shutil.copy(root / "good.tif", root / name)
    bad_utf8 = os.path.join(os.fsencode(root), b"latin1-\xff.tif")
    with open(bad_utf8, "wb") as f:
        f.write((root / "good.tif").read_bytes())
    os.symlink("loop.tif", root / "loop.tif")  # resolves to itself: ELOOP
    os.symlink("ping.tif", root / "pong.tif")
    os.symlink("pong.tif", root / "ping.tif")
    (root / "list.txt").write_text("\n".join([
        "good.tif", "sub/good2.tif", "../outside.tif", "sub/../../outside.tif",
        str(tmp_path / "outside.tif"), "s3://bucket/key.tif", "back\\slash.tif",
        "nul\x00byte.tif", "loop.tif", ""]))
    return root


def _infer(inp: str, out: Path, *extra: str) -> int:
    """`maskray infer` replaying an empty COCO labels file (one class): every good scene is ok,
    with no instances."""
    labels = out.parent / "labels" / "empty.json"
    labels.parent.mkdir(exist_ok=True)
    labels.write_text('{"images": [], "annotations": [], "categories": [{"id": 1, "name": "x"}]}')
    return infer_job.main(["--predictor", f"labels:{labels}", "--input", inp,
                           "--output", str(out), "--quiet", *TILING, *extra])


def test_unsafe_reasons():
    assert unsafe_reason("a/b.tif") is None and unsafe_reason("é/ü.tif") is None
    for bad in ("../a.tif", "a/../../b.tif", "/abs.tif", "a//b.tif", "./a.tif", "a\\b.tif",
                "nul\x00.tif", "new\nline.tif", "x\udcff.tif"):
        assert unsafe_reason(bad), bad


def test_unsafe_local_names_are_error_rows_and_the_rest_completes(ray_local, archive, tmp_path):
    before = sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / "out"
    assert _infer(str(archive), out) == 1  # errors fail the exit code, after every commit
    rows = {r["scene_id"]: r for r in read_scenes(str(out)).to_pylist()}
    ok = {s for s, r in rows.items() if r["status"] == "ok"}
    assert ok == {"good.tif", "sub/good2.tif"}
    refused = {s: r for s, r in rows.items() if r["error_type"] == "bad_key"}
    assert set(refused) == {"back\\\\slash.tif", "new\\nline.tif", "tab\\tname.tif",
                            "latin1-\\udcff.tif"}
    for scene_id, row in refused.items():
        assert scene_id.isprintable() and row["error_message"].startswith("unsafe name:")
        assert "\n" not in row["error_message"]
    # the symlink loops are listed under their names and fail to open, with a reason
    for name in ("loop.tif", "ping.tif", "pong.tif"):
        assert rows[name]["status"] == "error" and rows[name]["error_message"], rows[name]
    assert len(rows) == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before + ["labels", "out"])
    assert read_instances(str(out)).num_rows == 0
    # re-run: every scene is recorded, nothing to do
    assert _infer(str(archive), out, "--max-error-rate", "1") == 0
    assert len(read_scenes(str(out))) == 9


def test_unsafe_list_file_entries_are_error_rows(ray_local, archive, tmp_path):
    refs = {r.scene_id: r for r in list_scenes(str(archive / "list.txt"))}
    assert {s for s, r in refs.items() if not r.refused} == {"good.tif", "sub/good2.tif",
                                                             "loop.tif"}
    assert all(r.uri == "" for r in refs.values() if r.refused)  # never opened
    out = tmp_path / "out"
    assert _infer(str(archive / "list.txt"), out, "--max-error-rate", "1") == 0
    rows = {r["scene_id"]: r for r in read_scenes(str(out)).to_pylist()}
    assert {s for s, r in rows.items() if r["status"] == "ok"} == {"good.tif", "sub/good2.tif"}
    bad = {s: r["error_message"] for s, r in rows.items() if r["error_type"] == "bad_key"}
    assert bad["../outside.tif"] == "unsafe name: outside the list file's directory"
    assert bad["sub/../../outside.tif"] == bad["../outside.tif"]
    assert bad[str(tmp_path / "outside.tif")] == bad["../outside.tif"]
    assert "URI" in bad["s3://bucket/key.tif"]
    assert "backslash" in bad["back\\\\slash.tif"] and "control" in bad["nul\\x00byte.tif"]
    assert len(rows) == 9


def test_unsafe_object_keys_are_error_rows(ray_local, moto_s3, archive, tmp_path):
    from objectstore import client

    s3 = client(moto_s3.endpoint)
    good = (archive / "good.tif").read_bytes()
    keys = ["keys/in/good.tif", "keys/in//double.tif", "keys/in/./dot.tif", "keys/in/../up.tif",
            "keys/in/back\\slash.tif", "keys/in/tab\tname.tif"]
    for key in keys:
        s3.put_object(Bucket=moto_s3.bucket, Key=key, Body=good)
    listed = {o["Key"] for o in s3.list_objects_v2(Bucket=moto_s3.bucket,
                                                   Prefix="keys/")["Contents"]}
    assert listed == set(keys)  # the store keeps each key as written
    out = tmp_path / "out"
    assert _infer(moto_s3.uri("keys/in"), out, "--max-error-rate", "1",
                  "--set", f"storage.endpoint_url={moto_s3.endpoint}") == 0
    rows = {r["scene_id"]: r for r in read_scenes(str(out)).to_pylist()}
    assert rows.pop("good.tif")["status"] == "ok"
    assert {s: r["error_type"] for s, r in rows.items()} == {
        "/double.tif": "bad_key", "./dot.tif": "bad_key", "../up.tif": "bad_key",
        "back\\\\slash.tif": "bad_key", "tab\\tname.tif": "bad_key"}
