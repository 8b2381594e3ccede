"""maskray inference pipeline: tiling, box-local masks, stitching, GeoParquet output, synthetic archives."""
