"""Exports of an inference output for other tools: COCO results / dataset JSON, GeoJSON,
GeoPackage and FlatGeobuf layers, and class-id GeoTIFFs.

Everything reads the output through `pipeline.dataset` (local or s3://, committed parts only),
one model at a time, streaming: instance rows come in small record batches and are written out as
they come, so memory is O(a batch of rows), never O(the output) and never O(a scene's pixels).

Frames: COCO in scene pixels; vector layers in the stored geometry's frame (scene CRS, or pixel
units), or reprojected to a CRS asked for; class rasters on the scene's own pixel grid.

Modules (each docstring has the details of its formats):
  - `source`: `open_source` -> `Source` (the selected `ok` scenes and their instance rows),
    `Written`, and the shared file helpers (per-scene file names, index.json, atomic writes).
  - `coco`: COCO results and COCO dataset JSON; image and category ids.
  - `vector`: GeoJSON / GeoPackage / FlatGeobuf layers; CRS policy and reprojection.
  - `raster`: class-id GeoTIFFs, painted window by window; overlap order.

The public names of those modules are re-exported here (`from pipeline import export`).
"""

from pipeline.export.source import (BATCH_ROWS, FORMATS, Scene, Source, Written, open_source,
                                    scene_file_names)
from pipeline.export.coco import export_coco, export_coco_results
from pipeline.export.vector import (ATTRIBUTES, LAYER, VECTOR_FORMATS, VECTOR_SCHEMA,
                                    export_vector)
from pipeline.export.raster import (RASTER_BLOCK, RASTER_WINDOW, class_raster_dtype,
                                    export_class_rasters, paint_window, write_class_raster)

__all__ = [
    "ATTRIBUTES", "BATCH_ROWS", "FORMATS", "LAYER", "RASTER_BLOCK", "RASTER_WINDOW",
    "VECTOR_FORMATS", "VECTOR_SCHEMA", "Scene", "Source", "Written", "class_raster_dtype",
    "export_class_rasters", "export_coco", "export_coco_results", "export_vector", "open_source",
    "paint_window", "scene_file_names", "write_class_raster",
]
