"""Synthetic aerial archives with exact instance labels.

    from pipeline.synth import SynthConfig, ChipsConfig, generate_archive, generate_chips
    summary = generate_archive("out/synth", SynthConfig(scenes=2, size=2048, seed=7))
    summary = generate_chips("out/chips", ChipsConfig(count=500, chip_size=256, seed=7))

A scene is a georeferenced tiled GeoTIFF (a UTM CRS by default) that looks like aerial imagery:
textured ground with land use (town blocks, industry, parks, forest, fields), roads, a river, sun
shadows, and objects of four classes (category ids 1..4): building, vehicle, ship, tree, from a
few pixels to larger than a 512 px tile, touching in rows and clusters, never overlapping.

Modules: noise, shapes, masks (pure maths); plan (a scene's roads, river, land use); layout,
objects, blocks (placement); texture, looks, paint (appearance); labels, writer, chips (files).
"""

from pipeline.synth.chips import generate_chips
from pipeline.synth.config import CLASS_NAMES, ChipsConfig, SynthConfig
from pipeline.synth.writer import SynthSummary, generate_archive

__all__ = ["CLASS_NAMES", "ChipsConfig", "SynthConfig", "SynthSummary", "generate_archive",
           "generate_chips"]
