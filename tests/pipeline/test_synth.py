"""The synthetic archive generator: exact labels, determinism, formats, CLI, bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import rasterio
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from rasterio import features

from pipeline.errors import UsageError
from pipeline.synth import CLASS_NAMES, ChipsConfig, SynthConfig, generate_archive, generate_chips
from pipeline.synth.chips import chip_window
from pipeline.synth.masks import encode, place_rle

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """One 600 px scene with every class (seed chosen for that, and deterministic)."""
    out = tmp_path_factory.mktemp("archive")
    summary = generate_archive(out, SynthConfig(scenes=1, size=600, seed=1))
    return out, summary


def _read_labels(out: Path):
    coco = json.loads((out / "annotations.json").read_text())
    geo = json.loads((out / "labels" / "scene_0000.geojson").read_text())
    return coco, geo


def test_masks_equal_rasterised_geojson_polygons(archive):
    out, _ = archive
    coco, geo = _read_labels(out)
    with rasterio.open(out / "scenes" / "scene_0000.tif") as src:
        transform, shape = src.transform, (src.height, src.width)
    anns = {a["id"]: a for a in coco["annotations"]}
    assert len(geo["features"]) == len(anns) > 100
    labels = np.zeros(shape, np.int32)
    for feat in geo["features"]:
        ann = anns[feat["properties"]["annotation_id"]]
        assert ann["category_id"] == feat["properties"]["class_id"]
        rle = dict(ann["segmentation"], counts=ann["segmentation"]["counts"].encode())
        mask = mask_utils.decode(rle).astype(bool)
        burnt = features.rasterize([(feat["geometry"], 1)], out_shape=shape, transform=transform,
                                   all_touched=False, dtype="uint8").astype(bool)
        np.testing.assert_array_equal(mask, burnt, err_msg=f"instance {feat['id']}")
        assert ann["area"] == mask.sum() > 0
        rows, cols = np.nonzero(mask)
        assert ann["bbox"] == [cols.min(), rows.min(), cols.max() - cols.min() + 1,
                               rows.max() - rows.min() + 1]
        assert not (labels[mask]).any(), "instances must not share pixels"
        labels[mask] = ann["id"]
    # Touching pairs: 4-neighbours that belong to two different instances.
    across = (labels[:, 1:] != labels[:, :-1]) & (labels[:, 1:] > 0) & (labels[:, :-1] > 0)
    down = (labels[1:] != labels[:-1]) & (labels[1:] > 0) & (labels[:-1] > 0)
    assert across.sum() + down.sum() > 20


def test_scene_has_every_class_and_a_spread_of_sizes(archive):
    out, summary = archive
    coco, _ = _read_labels(out)
    assert [c["name"] for c in coco["categories"]] == list(CLASS_NAMES)
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3, 4]
    present = {a["category_id"] for a in coco["annotations"]}
    assert present == {1, 2, 3, 4}
    assert all(summary.instances[name] > 0 for name in CLASS_NAMES)
    areas = np.array([a["area"] for a in coco["annotations"]])
    assert areas.min() <= 12 and areas.max() >= 5000
    assert all(a["iscrowd"] == 0 and isinstance(a["segmentation"]["counts"], str)
               for a in coco["annotations"])


def test_geotiff_and_label_files_are_georeferenced(archive):
    out, _ = archive
    coco, geo = _read_labels(out)
    with rasterio.open(out / "scenes" / "scene_0000.tif") as src:
        assert src.crs.to_epsg() == 32633
        assert src.transform.a == 0.5 and src.transform.e == -0.5
        assert src.profile["tiled"] and src.count == 3 and src.dtypes[0] == "uint8"
        bounds = src.bounds
        pixels = src.read()
    assert pixels.std() > 20  # textured, not flat
    assert geo["crs"] == {"type": "name",
                          "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}}
    xs = [x for f in geo["features"] for x, _ in f["geometry"]["coordinates"][0]]
    assert bounds.left - 100 < min(xs) and max(xs) < bounds.right + 100
    image = coco["images"][0]
    assert image["file_name"] == "scenes/scene_0000.tif" and (out / image["file_name"]).exists()
    assert (image["width"], image["height"]) == (600, 600)
    record = json.loads((out / "synth.json").read_text())
    assert record["options"]["seed"] == 1 and record["options"]["size"] == 600


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path):
    cfg = SynthConfig(scenes=2, size=(300, 200), seed=5)
    generate_archive(tmp_path / "a", cfg)
    generate_archive(tmp_path / "b", cfg)
    generate_archive(tmp_path / "c", SynthConfig(scenes=2, size=(300, 200), seed=6))
    a, b, c = (_files(tmp_path / k) for k in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert a["scenes/scene_0001.tif"] != c["scenes/scene_0001.tif"]
    assert a["annotations.json"] != c["annotations.json"]


def test_pixels_do_not_depend_on_the_window_size(tmp_path):
    """Windows are rendered from global coordinates: 64 px windows give the 128 px image."""
    for window in (64, 128):
        generate_archive(tmp_path / str(window), SynthConfig(scenes=1, size=(200, 150), seed=2,
                                                             window=window, compress="none"))
    read = []
    for window in ("64", "128"):
        with rasterio.open(tmp_path / window / "scenes" / "scene_0000.tif") as src:
            read.append(src.read())
    np.testing.assert_array_equal(read[0], read[1])
    labels = [(tmp_path / w / "annotations.json").read_text() for w in ("64", "128")]
    assert labels[0] == labels[1]


def test_uint16_with_near_infrared(tmp_path):
    generate_archive(tmp_path, SynthConfig(scenes=1, size=128, seed=3, dtype="uint16", bands=4))
    with rasterio.open(tmp_path / "scenes" / "scene_0000.tif") as src:
        assert src.count == 4 and src.dtypes == ("uint16",) * 4
        assert src.descriptions == ("red", "green", "blue", "nir")
        pixels = src.read()
    assert pixels.max() > 1000  # reflectance x 10 000, not 8-bit values


def test_chips_load_in_pycocotools(tmp_path):
    cfg = ChipsConfig(count=8, chip_size=128, seed=4, empty_fraction=0.3)
    summary = generate_chips(tmp_path, cfg)
    coco = COCO(str(tmp_path / "annotations.json"))
    assert len(coco.getImgIds()) == 8 == summary.images
    flagged = {k + 1 for k in range(8) if chip_window(cfg, k)[1]}
    empty = {i for i in coco.getImgIds() if not coco.getAnnIds(imgIds=[i])}
    assert flagged and flagged <= empty and len(empty) < 8
    for ann in coco.loadAnns(coco.getAnnIds()):
        assert coco.annToMask(ann).sum() == ann["area"] > 0
    image = coco.loadImgs([1])[0]
    assert image["file_name"].startswith("images/chip_00000.png")
    assert (tmp_path / image["file_name"]).exists()


def test_multiband_chips_are_geotiffs(tmp_path):
    generate_chips(tmp_path, ChipsConfig(count=1, chip_size=64, seed=1, bands=5))
    with rasterio.open(tmp_path / "images" / "chip_00000.tif") as src:
        assert src.count == 5 and src.crs.to_epsg() == 32633


def test_full_image_rle_from_a_box():
    rng = np.random.default_rng(0)
    for _ in range(200):
        height, width = rng.integers(1, 9, 2)
        h, w = rng.integers(1, height + 1), rng.integers(1, width + 1)
        x0, y0 = rng.integers(0, width - w + 1), rng.integers(0, height - h + 1)
        box = rng.random((h, w)) < 0.5
        full = np.zeros((height, width), bool)
        full[y0:y0 + h, x0:x0 + w] = box
        assert place_rle(box, x0, y0, height, width) == encode(full)


def test_config_errors_are_usage_errors():
    with pytest.raises(UsageError, match="bands"):
        SynthConfig(bands=2).validate()
    with pytest.raises(UsageError, match="classes"):
        SynthConfig(classes=("building", "cat")).validate()
    with pytest.raises(UsageError, match="CRS"):
        SynthConfig(crs="EPSG:4326").validate()


def test_cli(tmp_path, capsys):
    from jobs.synth import main

    assert main(["--out", str(tmp_path / "a"), "--scenes", "1", "--size", "96x64", "--seed",
                 "1", "--classes", "vehicle,building", "--quiet"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("synth: 1 scenes") and "vehicle" in line and "tree" not in line
    coco = json.loads((tmp_path / "a" / "annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["vehicle", "building"]
    assert main(["--out", str(tmp_path / "a"), "--size", "96"]) == 2  # not empty
    assert main(["--out", str(tmp_path / "b"), "--bands", "2"]) == 2
    with pytest.raises(SystemExit) as exc:  # argparse's own usage error
        main(["--out", str(tmp_path / "b"), "--dtype", "float32"])
    assert exc.value.code == 2
    assert main(["--out", str(tmp_path / "c"), "--chips", "--count", "2", "--chip-size", "64",
                 "--quiet"]) == 0
    assert "2 chips" in capsys.readouterr().out


PEAK_RSS = textwrap.dedent("""
    import resource, sys
    from pipeline.synth import SynthConfig, generate_archive
    size, density, bands, dtype = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), \
        sys.argv[4]
    generate_archive(sys.argv[5], SynthConfig(scenes=1, size=size, seed=11, density=density,
                                              bands=bands, dtype=dtype, compress="none"))
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux
""")


def peak_rss_mib(size: int, out: Path, density: float, bands: int = 3,
                 dtype: str = "uint8") -> float:
    """Peak resident memory of a fresh interpreter generating one scene of size x size px."""
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, str(size), str(density), str(bands),
                           dtype, str(out)], cwd=REPO, capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1]) / 1024


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is KiB on Linux")
def test_memory_does_not_grow_with_scene_pixels(tmp_path):
    small = peak_rss_mib(700, tmp_path / "small", density=0.1, bands=4, dtype="uint16")
    large = peak_rss_mib(3500, tmp_path / "large", density=0.1, bands=4, dtype="uint16")
    # The 3500 px raster alone is 93 MiB (4 bands uint16): 25x the pixels of the small scene
    # cost a few MiB (the band of objects is wider), not the raster.
    assert large - small < 40, (small, large)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is KiB on Linux")
def test_20000_px_scene_in_bounded_memory(tmp_path):
    small = peak_rss_mib(2000, tmp_path / "small", density=0.3)
    large = peak_rss_mib(20000, tmp_path / "large", density=0.3)
    # 20 000 px x 3 bands is 1.1 GiB of pixels; the objects in reach of a row of windows grow
    # with the width (about 60 MiB here at full density), never with the area.
    assert large - small < 150, (small, large)
    with rasterio.open(tmp_path / "large" / "scenes" / "scene_0000.tif") as src:
        assert (src.width, src.height) == (20000, 20000)
        assert src.read(1, window=((19990, 20000), (19990, 20000))).shape == (10, 10)
    coco = json.loads((tmp_path / "large" / "annotations.json").read_text())
    assert len(coco["annotations"]) > 10_000
