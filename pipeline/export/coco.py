"""COCO exports: results JSON (what `COCO.loadRes` and `maskray evaluate` take) and a COCO
dataset JSON of the predictions (for relabelling tools).

Frame: scene pixels; `bbox` [x, y, w, h] from `px_bbox`; `segmentation` a full-image compressed
RLE {"size": [height, width], "counts": str}, column-major.

Image ids: 1 + the position of the scene id in the sorted list of every scene of the model in the
output (whatever `scene_ids` selects), so two exports of one output agree on ids; or, for COCO
results matched to a ground truth (`gt`), that ground truth's image and category ids, matched by
file name and class name exactly as `maskray evaluate` matches them.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Iterator, Mapping, Sequence

import pyarrow as pa
import pyarrow.dataset as ds

from pipeline import rle, storage
from pipeline.dataset import full_image_rle, to_coco_results
from pipeline.errors import MaskrayError, UsageError
from pipeline.export.source import Scene, Source, Written, writing

_COCO_COLUMNS = ["scene_id", "instance_id", "class_id", "class_name", "score", "px_bbox",
                 "mask_rle", "area_px"]


def export_coco_results(src: Source, out: str, gt: str | None = None) -> Written:
    """COCO results JSON (a list; what `COCO.loadRes` takes), streamed one entry at a time.

    Each entry: image_id, category_id, score, bbox [x, y, w, h] (px, from px_bbox), segmentation
    (full-image compressed RLE, counts as str). Without `gt`: category_id = class_id, image ids
    as in the module docstring, and a sidecar `<out minus .json>.images.json` (a COCO dataset
    without annotations: images and categories) says which scene each image id is. With `gt` (a
    COCO JSON): image and category ids of that ground truth, matched by file name and class name
    like `maskray evaluate`; scenes and classes it lacks are left out (noted).

    pycocotools' `loadRes` takes an entry's area from its bbox when it has one, which moves
    objects between the small / medium / large ranges of mask AP (AP, AP50, AP75 do not change).
    For mask APs / APm / APl as `maskray evaluate` (and Detectron2) report them, drop `bbox`
    from the entries before `loadRes`; box AP uses the file as it is.
    """
    from model.evaluate import match_classes, match_scenes, output_results

    written = Written(notes=list(src.notes))
    sizes = {s.scene_id: (s.height, s.width) for s in src.scenes}
    if gt is None:
        image_of = {s.scene_id: s.image_id for s in src.scenes}
        selected, classes = src.scene_ids, None
    else:
        coco_gt = _read_json(gt, "COCO ground truth")
        image_of, notes = match_scenes(coco_gt.get("images", []), src.scene_ids)
        category_of, class_notes = match_classes(coco_gt.get("categories", []),
                                                 set(src.class_names.values()))
        written.notes += notes + class_notes
        selected = [s for s in src.scene_ids if s in image_of]
        classes = ds.field("class_name").isin(pa.array(list(category_of), pa.string()))

    def entries() -> Iterator[dict[str, Any]]:
        # the very functions `maskray evaluate` scores, one small batch at a time
        for batch in src.batches(_COCO_COLUMNS, selected, classes):
            table = pa.Table.from_batches([batch])
            if gt is None:
                yield from to_coco_results(table, sizes, image_of)
            else:
                yield from output_results(table, sizes, image_of, category_of)

    with writing(out) as local, open(local, "w", encoding="utf-8") as f:
        written.instances = _write_json_list(f, entries())
    written.files.append(out)
    written.scenes = len(selected)
    if gt is None:
        sidecar = _sidecar_name(out)
        with writing(sidecar) as local, open(local, "w", encoding="utf-8") as f:
            json.dump({"images": _coco_images(src.scenes), "categories": _coco_categories(src)},
                      f, indent=1)
        written.files.append(sidecar)
    return written


def export_coco(src: Source, out: str) -> Written:
    """A COCO dataset JSON of the predictions (for relabelling tools), streamed.

    images: one per selected scene, {id, file_name = scene_id, width, height} plus `crs`
    ("EPSG:<n>" or WKT; absent for pixel units) and `transform` (rasterio Affine order a, b, c,
    d, e, f, as `maskray synth` writes them). categories: the model's classes {id = class_id,
    name}. annotations: {id (1..n), image_id, category_id = class_id, segmentation (full-image
    compressed RLE, counts str), area = area_px, bbox [x, y, w, h] px from px_bbox, iscrowd 0},
    plus the extra fields score, instance_id (COCO readers ignore extra fields).
    """
    written = Written(notes=list(src.notes), scenes=len(src.scenes))
    scenes = {s.scene_id: s for s in src.scenes}
    header = {"info": {"description": f"maskray predictions of model {src.model_id}",
                       "model_id": src.model_id},
              "licenses": [], "images": _coco_images(src.scenes),
              "categories": _coco_categories(src)}

    def annotations() -> Iterator[dict[str, Any]]:
        number = 0
        for batch in src.batches(_COCO_COLUMNS):
            for row in batch.to_pylist():
                number += 1
                yield _coco_annotation(row, scenes[row["scene_id"]], number)

    with writing(out) as local, open(local, "w", encoding="utf-8") as f:
        head = json.dumps(header, separators=(",", ":"))
        f.write(head[:-1] + ',"annotations":')  # the annotations list is streamed after it
        written.instances = _write_json_list(f, annotations())
        f.write("}\n")
    written.files.append(out)
    return written


def _coco_annotation(row: Mapping[str, Any], scene: Scene, number: int) -> dict[str, Any]:
    box = row["px_bbox"]
    seg = full_image_rle(row, scene.height, scene.width)
    return {"id": number, "image_id": scene.image_id, "category_id": int(row["class_id"]),
            "segmentation": {"size": [scene.height, scene.width],
                             "counts": rle.counts_to_str(seg["counts"])},
            "area": int(row["area_px"]),
            "bbox": [box["x0"], box["y0"], box["x1"] - box["x0"], box["y1"] - box["y0"]],
            "iscrowd": 0, "score": float(row["score"]), "instance_id": int(row["instance_id"])}


def _coco_images(scenes: Sequence[Scene]) -> list[dict[str, Any]]:
    images = []
    for s in scenes:
        image: dict[str, Any] = {"id": s.image_id, "file_name": s.scene_id, "width": s.width,
                                 "height": s.height}
        if s.crs_wkt is not None:
            image["crs"] = s.crs_key
        if s.transform is not None:
            image["transform"] = list(s.transform)[:6]
        images.append(image)
    return images


def _coco_categories(src: Source) -> list[dict[str, Any]]:
    return [{"id": cid, "name": name} for cid, name in src.class_names.items()]


def _write_json_list(f, items: Iterable[Mapping[str, Any]]) -> int:
    """Write a JSON list one item per line as the items come; returns how many."""
    count = 0
    f.write("[")
    for item in items:
        f.write(",\n" if count else "\n")
        f.write(json.dumps(item, separators=(",", ":")))
        count += 1
    f.write("\n]" if count else "]")
    return count


def _sidecar_name(out: str) -> str:
    base = out[:-5] if out.lower().endswith(".json") else out
    return base + ".images.json"


def _read_json(uri: str, what: str) -> Any:
    fs, path = storage.filesystem(uri)
    with storage.translating_errors(uri):
        if fs.isdir(path):
            raise UsageError(f"{what} must be a JSON file, {uri} is a directory")
        if not fs.isfile(path):
            raise UsageError(f"{what} not found: {uri}")
        with fs.open(path, "rb") as f:
            data = f.read()
    try:
        return json.loads(data)
    except ValueError as exc:
        raise MaskrayError(f"cannot read {what} {uri}: {exc}") from None

