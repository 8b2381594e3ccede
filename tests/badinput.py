"""A corpus of bad (and two good) input scenes, written into a directory in well under a second.

`write_corpus(dest)` writes every file of EXPECTED; `expected_error_type(path)` says which
`SceneError.error_type` the input side must report for it when reading bands CORPUS_BANDS
(None: the file is good). A test scans each file as a run would: open the header, check the
bands, read every window, and call the scene all-nodata when no window had a valid pixel.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from affine import Affine

CORPUS_BANDS = (1, 2, 3)

EXPECTED: dict[str, str | None] = {
    "zero_byte.tif": "unreadable",
    "random_bytes.png": "unreadable",
    "text_named.jpg": "unreadable",
    "truncated.png": "read_failed",
    "truncated.jpg": "read_failed",
    "truncated.tif": "read_failed",
    "corrupt_scan.jpg": "read_failed",  # garbage mid-scan: libjpeg only warns unless told not to
    "bomb_100000.png": "too_large",  # IHDR declares 100 000 x 100 000; the file is 100 bytes
    "bomb_100000.tif": "too_large",  # sparse GeoTIFF declaring 100 000 x 100 000; ~5 KB
    "one_pixel.png": "too_small",
    "gray_one_band.tif": "band_count",
    "all_nodata.tif": "all_nodata",
    "bad_crs.tif": "bad_crs",  # ProjectedCSTypeGeoKey patched to EPSG:9999, which PROJ lacks
    "all_nan_float32.tif": "all_nodata",  # every sample NaN: nothing to predict on
    "nan_inf_float32.tif": None,  # NaN / +-inf samples are invalid pixels; the rest is predicted
    "good_rgb.tif": None,
    "good_rgbn_uint16.tif": None,
}

_UTM16N = "EPSG:32616"


def expected_error_type(path: str | Path) -> str | None:
    """The error_type the input side must report for a corpus file (None: a good file)."""
    return EXPECTED[Path(path).name]


def write_corpus(dest: str | Path) -> list[Path]:
    """Write every corpus file into `dest` (created if needed); return their paths, sorted."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1234)
    rgb = rng.integers(0, 256, (3, 128, 128), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        (dest / "zero_byte.tif").write_bytes(b"")
        (dest / "random_bytes.png").write_bytes(rng.bytes(4096))
        (dest / "text_named.jpg").write_text("this is not a JPEG\n1 2 3\n4 5 6\n")
        _write_truncated(dest / "truncated.png", "PNG", rgb)
        _write_truncated(dest / "truncated.jpg", "JPEG", _smooth_rgb(128))
        _write_truncated(dest / "truncated.tif", "GTiff", rgb, tiled=True, blockxsize=32,
                         blockysize=32, compress="deflate")
        _write_corrupt_jpeg(dest / "corrupt_scan.jpg", rgb)
        (dest / "bomb_100000.png").write_bytes(png_with_declared_size(100_000, 100_000))
        _write_sparse_tiff(dest / "bomb_100000.tif", 100_000)
        _write(dest / "one_pixel.png", "PNG", rgb[:, :1, :1])
        _write(dest / "gray_one_band.tif", "GTiff", rgb[:1, :64, :64], crs=_UTM16N)
        _write(dest / "all_nodata.tif", "GTiff", np.zeros((3, 64, 64), np.uint8), crs=_UTM16N,
               nodata=0)
        _write_bad_crs(dest / "bad_crs.tif", rgb[:, :64, :64])
        _write(dest / "all_nan_float32.tif", "GTiff", np.full((3, 64, 64), np.nan, np.float32),
               crs=_UTM16N)
        floats = rgb[:, :64, :64].astype(np.float32)
        floats[:, :16, :] = np.nan
        floats[0, 20:30, 20:30], floats[1, 40:, 40:] = np.inf, -np.inf
        _write(dest / "nan_inf_float32.tif", "GTiff", floats, crs=_UTM16N)
        _write(dest / "good_rgb.tif", "GTiff", rgb[:, :80, :96], crs=_UTM16N)
        rgbn = rng.integers(1, 4096, (4, 72, 60), dtype=np.uint16)
        rgbn[:, :10, :] = 0  # a nodata strip along the top
        _write(dest / "good_rgbn_uint16.tif", "GTiff", rgbn, nodata=0, tiled=True,
               blockxsize=32, blockysize=32)
    return sorted(dest / name for name in EXPECTED)


def png_with_declared_size(width: int, height: int) -> bytes:
    """A tiny valid-looking PNG whose IHDR declares width x height RGB8 (a decompression bomb
    header): correct CRCs, one small IDAT, IEND."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _write(path: Path, driver: str, data: np.ndarray, crs=None, nodata=None, **options) -> None:
    count, height, width = data.shape
    transform = Affine(0.5, 0, 500_000, 0, -0.5, 4_000_000) if crs else None
    with rasterio.open(path, "w", driver=driver, width=width, height=height, count=count,
                       dtype=data.dtype, crs=crs, transform=transform, nodata=nodata,
                       **options) as dst:
        dst.write(data)


def _write_truncated(path: Path, driver: str, data: np.ndarray, **options) -> None:
    """A valid file cut in half: the header survives, the second half of the pixels don't."""
    _write(path, driver, data, **options)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _write_corrupt_jpeg(path: Path, data: np.ndarray) -> None:
    """A complete JPEG with 200 bytes of its entropy-coded data scrambled half way through."""
    _write(path, "JPEG", data)
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    for i in range(middle, middle + 200):
        raw[i] = 0xFF if i % 7 == 0 else raw[i] ^ 0x55
    path.write_bytes(bytes(raw))


def _write_sparse_tiff(path: Path, side: int) -> None:
    # SPARSE_OK leaves every tile unwritten, so the file is just a header and tile tables.
    with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=1,
                       dtype="uint8", crs=_UTM16N, transform=Affine(1, 0, 0, 0, -1, side),
                       tiled=True, blockxsize=4096, blockysize=4096, sparse_ok=True):
        pass


def _write_bad_crs(path: Path, data: np.ndarray) -> None:
    """A UTM GeoTIFF whose ProjectedCSTypeGeoKey (3072) names EPSG:9999, which does not exist:
    GDAL logs a PROJ error and falls back to a bare LOCAL_CS."""
    _write(path, "GTiff", data, crs=_UTM16N)
    raw = bytearray(path.read_bytes())
    key = struct.pack("<4H", 3072, 0, 1, 32616)  # (key id, tag location, count, value)
    assert raw.count(key) == 1, "GeoKey entry for EPSG:32616 not found exactly once"
    at = raw.index(key)
    raw[at:at + 8] = struct.pack("<4H", 3072, 0, 1, 9999)
    path.write_bytes(bytes(raw))


def _smooth_rgb(side: int) -> np.ndarray:
    """A gradient: JPEG-friendly, so the truncated JPEG is cut inside its scan data."""
    ramp = np.add.outer(np.arange(side), np.arange(side)).astype(np.uint8)
    return np.stack([ramp, ramp[::-1], ramp.T])
