"""Overlay pictures: masks are drawn where the instances are, nowhere else."""

import numpy as np
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from pipeline.overlay import PALETTE, render_overlay
from pipeline.rle import encode


def test_masks_are_drawn_on_their_objects_only(tmp_path):
    scene = tmp_path / "s.tif"
    data = np.full((3, 64, 96), 100, dtype=np.uint8)
    data[:, :, 48:] = 160  # two grey levels so the contrast stretch keeps them apart
    with rasterio.open(scene, "w", driver="GTiff", width=96, height=64, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500000, 4000000, 0.5, 0.5)) as dst:
        dst.write(data)
    mask = np.zeros((20, 30), dtype=bool)
    mask[2:18, 3:27] = True
    row = {"class_id": 2, "px_bbox": {"x0": 10, "y0": 20, "x1": 40, "y1": 40},
           "mask_rle": encode(mask)}
    assert render_overlay(str(scene), [row], str(tmp_path / "o.png")) == (96, 64)
    picture = np.asarray(Image.open(tmp_path / "o.png")).astype(int)
    inside, outside = picture[30, 25], picture[5, 5]
    assert tuple(outside) == tuple(picture[5, 6])  # untouched background
    assert not np.array_equal(inside, outside)
    assert np.argmax(inside - outside) == np.argmax(np.array(PALETTE[1]) - 100)  # tinted blue
    assert tuple(picture[22, 13 + 10]) == PALETTE[1]  # the outline is the class colour
