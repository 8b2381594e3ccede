"""Fault-injecting stand-ins for pipeline parts, for the reliability tests.

`OutOfMemoryPredictor` is the real `TilePredictor` (a real bundle, a real forward) whose device
"runs out of memory" the way CUDA does (`torch.OutOfMemoryError`) when asked for more than
`fits` tiles at once, and always for a tile whose pixels all equal `poison`: a tile that can
never fit. `SlowLabelsPredictor` is the labels replay taking `delay_s` per batch, so that a
fault injected "mid-run" lands mid-run on any machine. Hand them to Ray by value
(`ray.cloudpickle.register_pickle_by_value(faults)`): Ray's workers cannot import this test module.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from pipeline.predictor import LabelsPredictor, TilePredictor


class OutOfMemoryPredictor(TilePredictor):
    def __init__(self, *args, fits: int = 1, poison: int = 7, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fits, self.poison = fits, poison
        self.forwards: list[int] = []  # the size of every forward asked for, in order

    def _predict(self, images: np.ndarray):
        self.forwards.append(len(images))
        if len(images) > self.fits or any((im == self.poison).all() for im in images):
            raise torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB (simulated by the tests)")
        return super()._predict(images)


class SlowLabelsPredictor(LabelsPredictor):
    def __init__(self, *args, delay_s: float = 0.5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.delay_s = delay_s

    def __call__(self, batch):
        time.sleep(self.delay_s)
        return super().__call__(batch)
