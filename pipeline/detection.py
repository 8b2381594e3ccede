"""The one record every stage after the model passes along: a detected object (or a piece of one).

Coordinate frame: scene pixels, x right, y down, boxes half-open [x0, x1) x [y0, y1). A predictor
emits detections in its tile's frame; `shifted(dx, dy)` moves them into the scene frame without
touching the mask, because the mask is stored relative to its own box (box-local RLE).
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class Detection:
    """One instance mask with its class and score.

    class_id: model class (1..K; 0 is background and never appears here).
    score: confidence in [0, 1].
    x0, y0, x1, y1: tight bounding box of the mask's pixels, half-open, int.
    rle: COCO compressed RLE of the mask cropped to the box, column-major as pycocotools
        expects: {"size": [y1 - y0, x1 - x0], "counts": bytes}.
    """

    class_id: int
    score: float
    x0: int
    y0: int
    x1: int
    y1: int
    rle: dict

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def shifted(self, dx: int, dy: int) -> "Detection":
        """The same detection with its box moved by (dx, dy) pixels (tile frame -> scene frame)."""
        return replace(self, x0=self.x0 + dx, y0=self.y0 + dy, x1=self.x1 + dx, y1=self.y1 + dy)
