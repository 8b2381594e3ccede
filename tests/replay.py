"""A labels-replay output to test readers on (shared by several test modules)."""

from __future__ import annotations

from pathlib import Path


def replayed_archive(root: Path, size: int, seed: int, tile_size: int, overlap: int
                     ) -> tuple[Path, Path]:
    """A 2-scene synthetic archive under root/archive and its ground truth replayed through
    `maskray infer --predictor labels` into root/out (needs the `ray_local` fixture)."""
    from jobs import infer as infer_job
    from jobs import synth as synth_job

    archive, out = root / "archive", root / "out"
    assert synth_job.main(["--out", str(archive), "--scenes", "2", "--size", str(size),
                           "--seed", str(seed), "--quiet"]) == 0
    assert infer_job.main(["--predictor", f"labels:{archive / 'annotations.json'}",
                           "--input", str(archive), "--output", str(out), "--quiet",
                           "--set", f"tiling.tile_size={tile_size}",
                           "--set", f"tiling.overlap={overlap}"]) == 0
    return archive, out


def comparable_rows(root: str) -> list[tuple]:
    """Every instance row of the output at `root` (local or s3://), run_id and the `model`
    partition column left out, in a stable order: what "the same rows" means across runs."""
    import json

    from pipeline.dataset import read_instances

    table = read_instances(str(root)).drop_columns(["run_id", "model"])
    return sorted(tuple(json.dumps(v, default=str) for v in row.values())
                  for row in table.to_pylist())
