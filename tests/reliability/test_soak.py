"""Soak: thousands of small scenes through `maskray infer` on one machine, with a fault injected at
random into 1% of them. Opt-in (`pytest -m soak tests/reliability/test_soak.py -s`; scenes from
$MASKRAY_SOAK_SCENES, default 2000): it takes minutes. Figures go to docs/reliability.md.

Promise: every good scene committed exactly once with exactly its labelled instances, every
faulted scene an error row with its reason, memory flat over the run (RSS sampled every second
for the driver and for everything it started), and a re-run does nothing.
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
import pytest

from jobs import infer as infer_job
from jobs import synth as synth_job
from pipeline.dataset import read_instances, read_scenes

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from badinput import png_with_declared_size  # noqa: E402

pytestmark = pytest.mark.soak
SCENES = int(os.environ.get("MASKRAY_SOAK_SCENES", "2000"))
FAULT_RATE = 0.01
MIB = 1 << 20

# fault -> (how it is written over a scene file, the error type it must become)
FAULTS = {
    "zero_byte": (lambda p, rng: p.write_bytes(b""), "unreadable"),
    "random_bytes": (lambda p, rng: p.write_bytes(rng.bytes(4096)), "unreadable"),
    "truncated": (lambda p, rng: p.write_bytes(p.read_bytes()[: p.stat().st_size // 3]),
                  "read_failed"),
    "png_bomb": (lambda p, rng: p.write_bytes(png_with_declared_size(100_000, 100_000)),
                 "too_large"),
}


class Sampler(threading.Thread):
    """RSS (MiB) of this process, and of every process it started (Ray), once a second."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, float, float]] = []  # (seconds, driver, workers)
        self.stop = threading.Event()

    def run(self) -> None:
        me, start = psutil.Process(), time.monotonic()
        while not self.stop.wait(1.0):
            workers = 0
            for child in me.children(recursive=True):
                try:
                    workers += child.memory_info().rss
                except psutil.Error:
                    continue
            self.samples.append((time.monotonic() - start, me.memory_info().rss / MIB,
                                 workers / MIB))


def _quarter_medians(values: list[float]) -> list[float]:
    return [statistics.median(q) for q in np.array_split(np.asarray(values), 4) if len(q)]


def test_soak_thousands_of_scenes_with_one_percent_faulted(ray_local, tmp_path):
    archive = tmp_path / "archive"
    start = time.perf_counter()
    assert synth_job.main(["--out", str(archive), "--scenes", str(SCENES), "--size", "128",
                           "--seed", "41", "--density", "0.5", "--quiet"]) == 0
    generated = time.perf_counter() - start
    rng = np.random.default_rng(41)
    files = sorted((archive / "scenes").glob("*.tif"))
    chosen = rng.choice(len(files), size=max(1, round(FAULT_RATE * len(files))), replace=False)
    faulted = {}
    for k, index in enumerate(sorted(chosen)):
        kind = sorted(FAULTS)[k % len(FAULTS)]
        FAULTS[kind][0](files[index], rng)
        faulted[f"scenes/{files[index].name}"] = kind

    out = tmp_path / "out"
    args = ["--predictor", f"labels:{archive / 'annotations.json'}", "--input", str(archive),
            "--output", str(out), "--quiet", "--max-error-rate", "1",
            "--set", "tiling.tile_size=128", "--set", "tiling.overlap=32",
            "--set", "infer.shard_scenes=64"]
    sampler = Sampler()
    sampler.start()
    start = time.perf_counter()
    assert infer_job.main(args) == 0
    seconds = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()

    scenes = read_scenes(str(out)).to_pylist()
    ids = Counter(r["scene_id"] for r in scenes)
    assert len(ids) == len(files) and set(ids.values()) == {1}  # every scene exactly once
    errors = {r["scene_id"]: r["error_type"] for r in scenes if r["status"] != "ok"}
    assert errors == {s: FAULTS[kind][1] for s, kind in faulted.items()}
    truth = _labelled_counts(archive)
    got = Counter(read_instances(str(out), columns=["scene_id"]).column("scene_id").to_pylist())
    good = {s for s in ids if s not in faulted}
    assert {s: got.get(s, 0) for s in good} == {s: truth.get(s, 0) for s in good}
    assert not set(got) & set(faulted)

    again = time.perf_counter()
    assert infer_job.main(args) == 0  # a re-run finds everything done
    rerun = time.perf_counter() - again
    assert len(read_scenes(str(out))) == len(files)

    driver = [s[1] for s in sampler.samples]
    workers = [s[2] for s in sampler.samples]
    total = [d + w for d, w in zip(driver, workers)]
    report = {
        "scenes": len(files), "faulted": dict(Counter(faulted.values())),
        "instances": sum(got.values()), "generate_s": round(generated, 1),
        "run_s": round(seconds, 1), "scenes_per_s": round(len(files) / seconds, 1),
        "rerun_s": round(rerun, 2), "samples": len(total),
        "driver_rss_quarters_mib": [round(v) for v in _quarter_medians(driver)],
        "workers_rss_quarters_mib": [round(v) for v in _quarter_medians(workers)],
        "total_rss_max_mib": round(max(total)),
    }
    print("SOAK " + repr(report), file=sys.stderr)
    for t, d, w in sampler.samples[:: max(1, len(sampler.samples) // 20)]:
        print(f"SOAK-RSS t={t:6.0f}s driver={d:7.0f} MiB workers={w:7.0f} MiB", file=sys.stderr)
    # Flat: after the first quarter (imports, Ray workers starting, the actor warming up), the
    # last quarter's median is within 25% of the second's, for the driver and for everything.
    for series in (driver, total):
        q = _quarter_medians(series)
        assert q[-1] <= 1.25 * q[1], q


def _labelled_counts(archive: Path) -> Counter:
    import json

    coco = json.loads((archive / "annotations.json").read_text())
    names = {image["id"]: image["file_name"] for image in coco["images"]}
    return Counter(names[a["image_id"]] for a in coco["annotations"])
