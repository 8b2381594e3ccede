"""Augmentations for overhead imagery, which has no "up": flips and 90-degree rotations, scale
jitter (zoom by a factor in [1/(1+j), 1+j], then crop or pad back to the original size, so objects
cut by the edge keep their visible part) and brightness / contrast (each x [1-p, 1+p]).
Pure numpy / torch on one image and its instance masks; the caller owns the random generator.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def augment(image: np.ndarray, masks: np.ndarray, rng: np.random.Generator,
            scale_jitter: float = 0.0, photometric: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Random flips, 90-degree rotation (square images), zoom and brightness / contrast.

    image: float32 (C, H, W) raw band values; masks: uint8 (N, H, W) of the same H, W. Returns
    arrays of the same shapes (views where possible). Masks may come back empty (cut off by a
    zoom): the caller drops them.
    """
    if rng.random() < 0.5:
        image, masks = image[:, :, ::-1], masks[:, :, ::-1]
    if rng.random() < 0.5:
        image, masks = image[:, ::-1, :], masks[:, ::-1, :]
    k = int(rng.integers(4))
    if k and image.shape[1] == image.shape[2]:  # square chips keep their size when rotated
        image, masks = np.rot90(image, k, axes=(1, 2)), np.rot90(masks, k, axes=(1, 2))
    if scale_jitter > 0:
        factor = float(np.exp(rng.uniform(-1, 1) * np.log1p(scale_jitter)))
        image, masks = zoom(image, masks, factor, rng)
    if photometric > 0:
        contrast, brightness = 1 + rng.uniform(-1, 1, 2) * photometric
        mean = image.mean(axis=(1, 2), keepdims=True)
        image = (image - mean) * np.float32(contrast) + mean * np.float32(brightness)
    return image, masks


def zoom(image: np.ndarray, masks: np.ndarray, factor: float, rng: np.random.Generator
         ) -> tuple[np.ndarray, np.ndarray]:
    """Scale (C, H, W) float image and (N, H, W) uint8 masks by `factor` (bilinear / nearest),
    then crop (factor > 1) or pad with each band's mean (factor < 1) at a random offset back to
    (H, W). Masks cut by the crop keep their visible part; some may become empty."""
    height, width = image.shape[1:]
    new_h, new_w = max(1, round(height * factor)), max(1, round(width * factor))
    if (new_h, new_w) == (height, width):
        return image, masks
    img = F.interpolate(torch.from_numpy(np.ascontiguousarray(image))[None], (new_h, new_w),
                        mode="bilinear", align_corners=False)[0].numpy()
    if len(masks):
        msk = F.interpolate(torch.from_numpy(np.ascontiguousarray(masks))[None].float(),
                            (new_h, new_w), mode="nearest")[0].numpy().astype(np.uint8)
    else:  # an image without objects (torch refuses to resize zero channels)
        msk = np.zeros((0, new_h, new_w), np.uint8)
    out_img = np.empty_like(image)
    out_img[:] = image.mean(axis=(1, 2), keepdims=True)
    out_msk = np.zeros_like(masks)
    # offsets of the overlap in the zoomed (src) and output (dst) frames
    sy, dy = _offsets(new_h, height, rng)
    sx, dx = _offsets(new_w, width, rng)
    h, w = min(new_h, height), min(new_w, width)
    out_img[:, dy:dy + h, dx:dx + w] = img[:, sy:sy + h, sx:sx + w]
    out_msk[:, dy:dy + h, dx:dx + w] = msk[:, sy:sy + h, sx:sx + w]
    return out_img, out_msk


def _offsets(zoomed: int, size: int, rng: np.random.Generator) -> tuple[int, int]:
    """(start in the zoomed image, start in the output) along one axis."""
    if zoomed >= size:
        return int(rng.integers(zoomed - size + 1)), 0
    return 0, int(rng.integers(size - zoomed + 1))
