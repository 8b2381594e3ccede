"""Options of the synthetic generator (frozen dataclasses) and their validation."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from pipeline.errors import UsageError

# Category ids are 1..K in the order of `classes` (by default this order).
CLASS_NAMES: tuple[str, ...] = ("building", "vehicle", "ship", "tree")
DTYPES = ("uint8", "uint16")
COMPRESSIONS = ("deflate", "none")
# uint16 output stores reflectance x 10 000 (the Sentinel-2 / Landsat convention).
UINT16_SCALE = 10000
BAND_NAMES = ("red", "green", "blue", "nir", "swir1", "swir2", "red_edge", "coastal")
MAX_SIDE = 100_000


@dataclass(frozen=True)
class CommonConfig:
    """Options shared by scenes and chips.

    seed: one integer decides everything; same seed and options -> byte-identical output.
    dtype: "uint8" (display values 0..255) or "uint16" (reflectance x 10 000).
    bands: 3 (RGB) or more; band 4 is near-infrared, then SWIR-like bands.
    pixel_size: metres per pixel; object sizes are drawn in metres, so 2.0 makes small objects.
    crs: a projected CRS in metres with an EPSG code; scene origins are drawn per scene.
    density: multiplies the number of objects tried per block (1.0 is a busy town).
    classes: the classes to generate; category ids are 1..K in this order.
    """

    seed: int = 0
    dtype: str = "uint8"
    bands: int = 3
    pixel_size: float = 0.5
    crs: str = "EPSG:32633"
    density: float = 1.0
    classes: tuple[str, ...] = CLASS_NAMES

    def validate(self) -> None:
        if self.dtype not in DTYPES:
            raise UsageError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not 3 <= self.bands <= 16:
            raise UsageError(f"bands must be between 3 and 16, got {self.bands}")
        if not 0.05 <= self.pixel_size <= 10.0:
            raise UsageError(f"pixel size must be between 0.05 and 10 m, got {self.pixel_size}")
        if not 0.0 <= self.density <= 10.0:
            raise UsageError(f"density must be between 0 and 10, got {self.density}")
        if self.seed < 0:
            raise UsageError(f"seed must be >= 0, got {self.seed}")
        unknown = [c for c in self.classes if c not in CLASS_NAMES]
        if unknown or not self.classes or len(set(self.classes)) != len(self.classes):
            raise UsageError(f"classes must be distinct names from {', '.join(CLASS_NAMES)}, "
                             f"got {', '.join(self.classes) or 'none'}")
        epsg_of(self.crs)

    def class_id(self, name: str) -> int:
        """Category id of a class name (1..K), 0 when the class is not generated."""
        return self.classes.index(name) + 1 if name in self.classes else 0


@dataclass(frozen=True)
class SynthConfig(CommonConfig):
    """A synthetic archive of georeferenced scenes.

    scenes: number of scenes. size: side in pixels, or (width, height).
    compress: GeoTIFF compression, "deflate" (default) or "none".
    window: side of the render windows and of the GeoTIFF tiles, in pixels (multiple of 16).
    """

    scenes: int = 2
    size: int | tuple[int, int] = 2048
    compress: str = "deflate"
    window: int = 512

    @property
    def width(self) -> int:
        return self.size if isinstance(self.size, int) else int(self.size[0])

    @property
    def height(self) -> int:
        return self.size if isinstance(self.size, int) else int(self.size[1])

    def validate(self) -> None:
        super().validate()
        if self.scenes < 1:
            raise UsageError(f"scenes must be >= 1, got {self.scenes}")
        if not (16 <= self.width <= MAX_SIDE and 16 <= self.height <= MAX_SIDE):
            raise UsageError(f"scene size must be between 16 and {MAX_SIDE} px, "
                             f"got {self.width}x{self.height}")
        if self.compress not in COMPRESSIONS:
            raise UsageError(f"compress must be one of {', '.join(COMPRESSIONS)}, "
                             f"got {self.compress!r}")
        if self.window % 16 or not 64 <= self.window <= 4096:
            raise UsageError(f"window must be a multiple of 16 between 64 and 4096, "
                             f"got {self.window}")


@dataclass(frozen=True)
class ChipsConfig(CommonConfig):
    """A training set of small images cut from virtual scenes.

    count: number of chips. chip_size: side in pixels.
    empty_fraction: share of chips rendered with no objects at all (negatives).
    """

    count: int = 64
    chip_size: int = 256
    empty_fraction: float = 0.1

    def validate(self) -> None:
        super().validate()
        if self.count < 1:
            raise UsageError(f"count must be >= 1, got {self.count}")
        if not 32 <= self.chip_size <= 2048:
            raise UsageError(f"chip size must be between 32 and 2048 px, got {self.chip_size}")
        if not 0.0 <= self.empty_fraction <= 1.0:
            raise UsageError(f"empty fraction must be between 0 and 1, got {self.empty_fraction}")


@lru_cache(maxsize=32)
def epsg_of(crs: str) -> int:
    """EPSG code of a projected CRS in metres; UsageError otherwise."""
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        parsed = CRS.from_user_input(crs)
    except CRSError as exc:
        raise UsageError(f"unknown CRS {crs!r}: {exc}") from None
    code = parsed.to_epsg()
    if code is None or not parsed.is_projected or parsed.linear_units not in ("metre", "meter"):
        raise UsageError(f"CRS must be a projected CRS in metres with an EPSG code, got {crs!r}")
    return code


def band_names(bands: int) -> tuple[str, ...]:
    """Descriptions written into the GeoTIFF, e.g. ("red", "green", "blue", "nir")."""
    names = list(BAND_NAMES[:bands])
    names += [f"band{i + 1}" for i in range(len(names), bands)]
    return tuple(names)
