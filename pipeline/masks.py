"""Box-local instance masks: Mask R-CNN's M x M mask probabilities -> binary masks inside their own
boxes -> COCO RLE, without ever building torchvision's N x H x W full-tile float tensor.

torchvision's postprocess (`roi_heads.paste_masks_in_image`, torchvision 0.29) does, per detection:
  1. pad the M x M probability map with `padding` zeros on every side (`expand_masks`);
  2. scale its box by (M + 2 * padding) / M about the box centre (`expand_boxes`), then truncate the
     coordinates to int64 (`.to(torch.int64)`, i.e. towards zero);
  3. resize the padded map to (y1 - y0 + 1) x (x1 - x0 + 1) px (at least 1 x 1) with
     `interpolate(mode="bilinear", align_corners=False)`;
  4. paste that into a zeroed H x W canvas, clipped to the image.
Every canvas pixel outside the pasted box is 0, i.e. never above the threshold, so the same binary
mask is obtained by steps 1-3 alone, cropped to the part of the box inside the image. That costs
time and memory proportional to the box instead of N x H x W floats (419 MB for 100 detections on a
1024 px tile). Step 3 calls the very same `interpolate` with the same input and output sizes, so
the values, and therefore the thresholded masks, are bit-identical to torchvision's.

Frames: boxes and returned detections are in the image (tile) frame, pixels, x right, y down.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline import rle
from pipeline.detection import Detection

# torchvision's default: paste_masks_in_image(..., padding=1).
PADDING = 1


def expand_boxes(boxes: torch.Tensor, mask_size: int, padding: int = PADDING) -> torch.Tensor:
    """The integer paste boxes torchvision uses for M x M masks padded by `padding` px.

    boxes: (N, 4) float xyxy, image px. Returns (N, 4) int64 xyxy, *inclusive* of x1 and y1 (the
    pasted region is x0..x1, y0..y1), possibly outside the image. The arithmetic repeats
    `roi_heads.expand_masks` / `expand_boxes` op for op, in the boxes' dtype, so the float rounding
    and the truncation towards zero match exactly.
    """
    scale = float(mask_size + 2 * padding) / mask_size
    w_half = (boxes[:, 2] - boxes[:, 0]) * 0.5
    h_half = (boxes[:, 3] - boxes[:, 1]) * 0.5
    x_c = (boxes[:, 2] + boxes[:, 0]) * 0.5
    y_c = (boxes[:, 3] + boxes[:, 1]) * 0.5
    w_half *= scale
    h_half *= scale
    expanded = torch.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], dim=1)
    return expanded.to(torch.int64)


def paste_box_probs(
    padded_probs: torch.Tensor, box: Sequence[int], image_size: tuple[int, int]
) -> tuple[int, int, np.ndarray] | None:
    """The pasted probabilities of one detection, cut to the part of its paste box in the image.

    padded_probs: (1, 1, M + 2p, M + 2p) float32 or float64 CPU tensor, one padded probability map.
    box: int paste box from `expand_boxes` (x0, y0, x1, y1 inclusive), image px.
    Returns (x, y, probs): probs (h, w) float numpy view, equal to
    `paste_masks_in_image(...)[i, 0]` over rows y..y+h-1 and columns x..x+w-1 of the image
    (everything else there is 0); None when the box misses the image.
    """
    bx0, by0, bx1, by1 = box
    im_h, im_w = image_size
    x_0, x_1 = max(bx0, 0), min(bx1 + 1, im_w)
    y_0, y_1 = max(by0, 0), min(by1 + 1, im_h)
    if x_1 <= x_0 or y_1 <= y_0:
        return None
    # Same output size as torchvision's resize, including its "at least one pixel" rule: the
    # bilinear source coordinates depend on the output size, so it can't be shrunk to the crop.
    size = (max(by1 - by0 + 1, 1), max(bx1 - bx0 + 1, 1))
    resized = F.interpolate(padded_probs, size=size, mode="bilinear", align_corners=False)
    # numpy from here on: slicing and comparing small arrays costs less per call than in torch.
    return x_0, y_0, resized.numpy()[0, 0, y_0 - by0 : y_1 - by0, x_0 - bx0 : x_1 - bx0]


def encode_mask_at(
    mask: np.ndarray, x: int, y: int, class_id: int, score: float
) -> Detection | None:
    """A Detection for a binary mask whose top-left pixel sits at (x, y): tighten, crop, encode.

    mask: (h, w) bool in any memory order. Returns None when the mask is empty.
    """
    bounds = rle.tight_bounds(mask)
    if bounds is None:
        return None
    x0, y0, x1, y1 = bounds
    return Detection(
        class_id=int(class_id), score=float(score),
        x0=x + x0, y0=y + y0, x1=x + x1, y1=y + y1,
        rle=rle.encode(mask[y0:y1, x0:x1]),
    )


def encode_box_masks(
    mask_probs: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    scores: torch.Tensor,
    image_size: tuple[int, int],
    threshold: float = 0.5,
) -> list[Detection]:
    """Turn Mask R-CNN's per-detection mask probabilities into box-local RLE detections.

    mask_probs: (N, 1, M, M) float in [0, 1] (after sigmoid, as `roi_heads` returns them).
    boxes: (N, 4) float xyxy in image px (the frame the masks are pasted into).
    labels: (N,) int64 class ids. scores: (N,) float.
    image_size: (H, W) of the image the boxes refer to.
    Returns one Detection per input whose mask is not empty, in input order, in the image frame:
    its mask equals `paste_masks_in_image(mask_probs, boxes, (H, W), padding=1)[i, 0] > threshold`
    cropped to the mask's tight box. Work is per detection and proportional to its box; tensors on
    a GPU are brought to the CPU once (N x M x M floats) and the work runs there. float32/float64
    probabilities match torchvision's CPU paste bit for bit; half and bfloat16 ones are upcast to
    float32 first (torchvision would resize them in reduced precision). The resizes run on torch's
    intra-op pool and are small: give the caller one torch thread per CPU it owns (on a busy
    2-core machine, 2 threads made this 25x slower than 1 in bench/postprocess.py).
    """
    if mask_probs.ndim != 4 or mask_probs.shape[1] != 1:
        raise ValueError(f"mask_probs must be (N, 1, M, M), got {tuple(mask_probs.shape)}")
    n = mask_probs.shape[0]
    if not boxes.shape[0] == labels.shape[0] == scores.shape[0] == n:
        raise ValueError("mask_probs, boxes, labels and scores must have the same length")
    if n == 0:
        return []
    with torch.no_grad():
        probs = mask_probs.detach().cpu()
        if probs.dtype not in (torch.float32, torch.float64):
            probs = probs.float()
        padded = F.pad(probs, (PADDING,) * 4).split(1)
        paste_boxes = expand_boxes(boxes.detach().cpu(), probs.shape[-1]).tolist()
    class_ids = labels.detach().cpu().tolist()
    confidences = scores.detach().cpu().tolist()
    detections = []
    for padded_i, box, class_id, score in zip(padded, paste_boxes, class_ids, confidences):
        pasted = paste_box_probs(padded_i, box, image_size)
        if pasted is None:
            continue
        x, y, values = pasted
        # numpy compares a float32 array with a Python float in float32, as torch's
        # `masks > threshold` does, so the two agree even for thresholds like 0.3.
        det = encode_mask_at(values > threshold, x, y, class_id, score)
        if det is not None:
            detections.append(det)
    return detections
