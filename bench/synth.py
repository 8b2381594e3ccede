"""Throughput and peak memory of the synthetic scene generator.

Each size runs in a fresh interpreter, so its peak RSS is its own:

    python bench/synth.py                       # 2 000, 5 000 and 20 000 px scenes
    python bench/synth.py --sizes 2000 5000 --compress none

Prints one row per size: pixels, instances, seconds, Mpx/s and peak RSS. Timings are wall-clock
on whatever else the machine is doing; run it on a quiet machine for numbers to compare.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import json, resource, sys, time
from pipeline.synth import SynthConfig, generate_archive
size, density, compress, out = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
start, cpu = time.perf_counter(), time.process_time()
summary = generate_archive(out, SynthConfig(scenes=1, size=size, seed=0, density=density,
                                            compress=compress))
print(json.dumps({"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu,
                  "instances": sum(summary.instances.values()),
                  "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(size: int, density: float, compress: str) -> dict:
    """Generate one size x size scene in a child interpreter; returns its figures."""
    with tempfile.TemporaryDirectory(prefix="maskray-bench-") as out:
        done = subprocess.run([sys.executable, "-c", CHILD, str(size), str(density), compress,
                               out], cwd=REPO, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"size {size} failed:\n{done.stderr}")
        return json.loads(done.stdout.splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 5000, 20000])
    parser.add_argument("--density", type=float, default=1.0)
    parser.add_argument("--compress", choices=("deflate", "none"), default="deflate")
    args = parser.parse_args(argv)
    print(f"{'size px':>8} {'Mpx':>7} {'instances':>10} {'wall s':>8} {'cpu s':>8} "
          f"{'Mpx/s':>6} {'peak RSS MiB':>13}")
    for size in args.sizes:
        r = measure(size, args.density, args.compress)
        mpx = size * size / 1e6
        print(f"{size:>8} {mpx:>7.1f} {r['instances']:>10} {r['seconds']:>8.1f} {r['cpu']:>8.1f} "
              f"{mpx / r['seconds']:>6.2f} {r['rss_mib']:>13.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
