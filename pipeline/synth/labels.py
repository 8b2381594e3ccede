"""Streaming label writers: one COCO JSON per archive, one GeoJSON per scene.

Both write annotations as they come (memory O(one block's objects), not O(archive)) to a
temporary name and rename when complete, so a reader never sees half a file. Output bytes depend
only on what is written: no timestamps, fixed key order.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pipeline.synth import masks
from pipeline.synth.layout import Instance

GENERATOR = "maskray synth"


def categories(classes: tuple[str, ...]) -> list[dict]:
    """COCO categories: ids 1..K in the order of `classes`."""
    return [{"id": k + 1, "name": name, "supercategory": "object"}
            for k, name in enumerate(classes)]


class CocoWriter:
    """Writes {"info", "licenses", "categories", "annotations": [...], "images": [...]}; the
    annotations stream out, the (few) image records are written at the end."""

    def __init__(self, path: Path, classes: tuple[str, ...], description: str):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".partial")
        self.classes = classes
        self.file = open(self.tmp, "w", encoding="utf-8")
        info = {"description": description, "version": "1.0", "contributor": GENERATOR}
        head = {"info": info, "licenses": [], "categories": categories(classes)}
        self.file.write(json.dumps(head)[:-1] + ', "annotations": [')
        self.images: list[dict] = []
        self.next_id = 1

    def add_image(self, file_name: str, width: int, height: int, **extra) -> int:
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "file_name": file_name, "width": width,
                            "height": height, **extra})
        return image_id

    def add(self, image_id: int, inst: Instance, offset: tuple[int, int], size: tuple[int, int]
            ) -> int:
        """Annotate `inst` on an image of `size` (width, height) whose pixel (0, 0) is scene
        pixel `offset`. The segmentation is a compressed RLE of the whole image (COCO style),
        built from the box-local mask without an image-sized array."""
        x0, y0 = inst.box[0] - offset[0], inst.box[1] - offset[1]
        rle = masks.place_rle(masks.decode(inst.rle), x0, y0, size[1], size[0])
        w, h = inst.box[2] - inst.box[0], inst.box[3] - inst.box[1]
        record = {"id": self.next_id, "image_id": image_id,
                  "category_id": self.classes.index(inst.class_name) + 1,
                  "segmentation": {"size": [size[1], size[0]],
                                   "counts": rle["counts"].decode("ascii")},
                  "area": inst.area, "bbox": [float(x0), float(y0), float(w), float(h)],
                  "iscrowd": 0}
        self.file.write(("\n" if self.next_id == 1 else ",\n") + json.dumps(record))
        self.next_id += 1
        return record["id"]

    def close(self) -> None:
        self.file.write('\n], "images": ' + json.dumps(self.images) + "}\n")
        self.file.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


class GeoJsonWriter:
    """A FeatureCollection of instance polygons in the scene CRS, with an old-style (2008)
    "crs" member naming the EPSG code, which GDAL, QGIS and GeoPandas read."""

    def __init__(self, path: Path, epsg: int):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".partial")
        self.file = open(self.tmp, "w", encoding="utf-8")
        crs = {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{epsg}"}}
        self.file.write('{"type": "FeatureCollection", "crs": ' + json.dumps(crs)
                        + ', "features": [')
        self.count = 0

    def add(self, inst: Instance, transform, class_id: int, annotation_id: int) -> None:
        geometry = masks.geojson_polygon(masks.to_crs(inst.polygon, transform))
        feature = {"type": "Feature", "id": self.count, "geometry": geometry,
                   "properties": {"instance": self.count, "class_id": class_id,
                                  "class_name": inst.class_name, "annotation_id": annotation_id,
                                  "area_px": inst.area}}
        self.file.write(("\n" if self.count == 0 else ",\n") + json.dumps(feature))
        self.count += 1

    def close(self) -> None:
        self.file.write("\n]}\n")
        self.file.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)
