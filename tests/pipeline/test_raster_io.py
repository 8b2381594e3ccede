"""Scene headers and tile windows: bad input becomes SceneError, good input reads exactly."""

from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.errors import NotGeoreferencedWarning

from pipeline.raster_io import (
    GDAL_OPTIONS,
    ReadLimits,
    SceneError,
    SceneInfo,
    all_nodata_error,
    configure_gdal,
    gdal_path,
    open_raster,
    open_scene,
    read_window,
    require_bands,
    scene_info,
)
from tests.badinput import CORPUS_BANDS, EXPECTED, expected_error_type, write_corpus

UTM = "EPSG:32616"


def write_tif(path: Path, data: np.ndarray, crs=UTM, nodata=None, driver="GTiff", **options):
    count, height, width = data.shape
    transform = Affine(0.3, 0, 600_000, 0, -0.3, 4_100_000) if crs else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver=driver, width=width, height=height, count=count,
                           dtype=data.dtype, crs=crs, transform=transform, nodata=nodata,
                           **options) as dst:
            dst.write(data)
    return path


def full_read(path: Path, bands) -> np.ndarray:
    """The whole raster through plain rasterio: the reference for small images only."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            return src.read(list(bands)).astype(np.float32)


def padded(full: np.ndarray, window) -> tuple[np.ndarray, np.ndarray]:
    """Slice `full` (C, H, W) at a window that may pass its edges: 0 and invalid outside."""
    x0, y0, x1, y1 = window
    _, height, width = full.shape
    image = np.zeros((full.shape[0], y1 - y0, x1 - x0), np.float32)
    valid = np.zeros((y1 - y0, x1 - x0), bool)
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if ix0 < ix1 and iy0 < iy1:
        image[:, iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = full[:, iy0:iy1, ix0:ix1]
        valid[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = True
    return image, valid


def scan_scene(path: Path, bands, tile: int = 48, step: int = 40) -> SceneInfo:
    """Process a scene's input the way a run does: header, bands, every window, nodata rule."""
    with open_raster(path) as src:
        info = scene_info(src)
        require_bands(info, bands)
        any_valid = False
        for y in range(0, info.height, step):
            for x in range(0, info.width, step):
                _, valid = read_window(src, (x, y, x + tile, y + tile), bands)
                any_valid |= bool(valid.any())
    if not any_valid:
        raise all_nodata_error()
    return info


class CountingOpener:
    """An fsspec-like opener for rasterio that counts the bytes GDAL reads through it."""

    def __init__(self):
        self.bytes_read = 0

    def __call__(self, path, mode="rb"):
        opener = self

        class Counting(io.FileIO):
            def read(self, size=-1):
                data = super().read(size)
                opener.bytes_read += len(data)
                return data

            def readinto(self, buffer):
                count = super().readinto(buffer)
                opener.bytes_read += count or 0
                return count

        return Counting(path, "rb")


# ---- the bad-input corpus ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("corpus")
    write_corpus(directory)
    return directory


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_file_reports_its_error_type(corpus, name):
    expected = expected_error_type(name)
    if expected is None:
        assert scan_scene(corpus / name, CORPUS_BANDS).count >= len(CORPUS_BANDS)
        return
    with pytest.raises(SceneError) as caught:
        scan_scene(corpus / name, CORPUS_BANDS)
    assert caught.value.error_type == expected
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 400


@pytest.mark.parametrize("name", ["bomb_100000.png", "bomb_100000.tif"])
def test_declared_100000_squared_is_refused_from_the_header(corpus, name):
    opener = CountingOpener()
    with pytest.raises(SceneError, match="100000 x 100000") as caught:
        open_scene(str(corpus / name), opener=opener)
    assert caught.value.error_type == "too_large"
    # GDAL re-reads the first bytes while probing, but never goes far: the header, nothing more.
    assert 0 < opener.bytes_read < 16 * 1024


def test_corpus_generator_is_complete_and_deterministic(tmp_path):
    first = write_corpus(tmp_path / "a")
    second = write_corpus(tmp_path / "b")
    assert [p.name for p in first] == sorted(EXPECTED)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    assert (tmp_path / "a" / "bomb_100000.png").stat().st_size < 200


# ---- good files read exactly ------------------------------------------------------------------

WINDOWS = [
    (3, 4, 20, 17),  # inside
    (25, 20, 45, 35),  # past the right and bottom edges
    (-6, -3, 10, 8),  # before the left and top edges
    (-2, -2, 40, 32),  # larger than the scene on every side
    (40, 0, 50, 10),  # entirely outside: nothing decoded, all invalid
]


def random_raster(dtype: str, count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "float32":
        return rng.normal(100, 50, (count, 29, 37)).astype(np.float32)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -3000), min(info.max, 6000), (count, 29, 37), dtype=dtype)


@pytest.mark.parametrize("crs", [UTM, None])
@pytest.mark.parametrize("count", [1, 3, 4])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
def test_geotiff_windows_equal_a_full_read(tmp_path, dtype, count, crs):
    path = write_tif(tmp_path / "s.tif", random_raster(dtype, count), crs=crs)
    info = open_scene(path)
    assert (info.width, info.height, info.count, info.dtype) == (37, 29, count, dtype)
    assert (info.crs is not None) == (crs is not None) and info.random_access
    bands = tuple(range(count, 0, -1))  # any order the bundle asks for
    full = full_read(path, bands)
    with open_raster(path) as src:
        for window in WINDOWS:
            image, valid = read_window(src, window, bands)
            want_image, want_valid = padded(full, window)
            assert image.dtype == np.float32 and image.shape == want_image.shape
            np.testing.assert_array_equal(valid, want_valid)
            np.testing.assert_array_equal(image, want_image)


@pytest.mark.parametrize("driver, suffix, dtype, count", [
    ("PNG", "png", "uint8", 1), ("PNG", "png", "uint8", 3), ("PNG", "png", "uint8", 4),
    ("PNG", "png", "uint16", 3), ("JPEG", "jpg", "uint8", 1), ("JPEG", "jpg", "uint8", 3),
])
def test_png_and_jpeg_windows_equal_a_full_read(tmp_path, driver, suffix, dtype, count):
    data = random_raster(dtype, count)
    if count == 4:
        data[3] = np.iinfo(dtype).max  # opaque alpha: every pixel valid
    path = write_tif(tmp_path / f"s.{suffix}", data, crs=None, driver=driver)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NotGeoreferencedWarning escapes
        info = open_scene(path)
    assert info.crs is None and info.transform.is_identity and not info.random_access
    bands = tuple(range(1, count + 1))
    full = full_read(path, bands)  # JPEG is lossy: compare with GDAL's own decode
    with open_raster(path) as src:
        for window in WINDOWS:
            image, valid = read_window(src, window, bands)
            want_image, want_valid = padded(full, window)
            np.testing.assert_array_equal(valid, want_valid)
            np.testing.assert_array_equal(image, want_image)


@pytest.fixture(scope="module")
def tiled_scene(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A 3-band int16 scene, tiled 16 px with nodata, and its full read as the reference."""
    data = random_raster("int16", 3, seed=7)
    data[:, 20:, :5] = -9999
    path = write_tif(tmp_path_factory.mktemp("tiled") / "t.tif", data, nodata=-9999,
                     tiled=True, blockxsize=16, blockysize=16)
    return path, full_read(path, (3, 1))


@settings(max_examples=60, deadline=None)
@given(x0=st.integers(-45, 45), y0=st.integers(-35, 35), w=st.integers(1, 70),
       h=st.integers(1, 50))
def test_any_window_equals_the_padded_full_read(tiled_scene, x0, y0, w, h):
    path, full = tiled_scene
    with open_raster(path) as src:
        image, valid = read_window(src, (x0, y0, x0 + w, y0 + h), (3, 1))
    want_image, inside = padded(full, (x0, y0, x0 + w, y0 + h))
    want_valid = inside & ~(want_image == -9999).all(axis=0)
    want_image[:, ~want_valid] = 0
    np.testing.assert_array_equal(valid, want_valid)
    np.testing.assert_array_equal(image, want_image)


def test_read_window_takes_a_uri_or_an_object_with_bounds(tmp_path):
    path = write_tif(tmp_path / "s.tif", random_raster("uint16", 3))

    class Tile:
        x0, y0, x1, y1 = 30, 20, 46, 36

    by_path, valid = read_window(str(path), Tile(), (1, 2))
    with open_raster(path) as src:
        by_dataset, _ = read_window(src, (30, 20, 46, 36), (1, 2))
    np.testing.assert_array_equal(by_path, by_dataset)
    assert valid[:9, :7].all() and not valid[9:, :].any() and not valid[:, 7:].any()
    assert not by_path[:, 9:, :].any()  # padding is 0


# ---- validity: nodata, NaN, alpha, masks -------------------------------------------------------

def test_nodata_pixels_are_invalid_and_zero(tmp_path):
    data = np.full((3, 16, 16), 500, np.int16)
    data[:, :4, :] = -9999  # all bands nodata: invalid
    data[0, 8, 8] = -9999  # one band nodata: the pixel stays valid (GDAL's dataset-mask rule)
    path = write_tif(tmp_path / "n.tif", data, nodata=-9999)
    assert open_scene(path).nodata == -9999
    image, valid = read_window(path, (0, 0, 16, 16), (1, 2, 3))
    assert not valid[:4].any() and valid[4:].all()
    assert not image[:, :4].any()
    assert image[0, 8, 8] == -9999 and image[1, 8, 8] == 500


def test_nan_and_inf_are_invalid_and_zero(tmp_path):
    data = np.ones((2, 8, 8), np.float32)
    data[:, 0, 0] = np.nan
    data[:, 0, 1] = np.inf
    data[0, 5, 5] = np.nan  # one band: pixel valid, the sample becomes 0
    path = write_tif(tmp_path / "f.tif", data)
    image, valid = read_window(path, (0, 0, 8, 8), (1, 2))
    assert np.isfinite(image).all()
    assert not valid[0, 0] and not valid[0, 1] and valid[5, 5] and valid.sum() == 62
    assert image[0, 5, 5] == 0 and image[1, 5, 5] == 1


def test_nan_nodata(tmp_path):
    data = np.ones((1, 8, 8), np.float32)
    data[0, 2] = np.nan
    path = write_tif(tmp_path / "f.tif", data, nodata=float("nan"))
    _, valid = read_window(path, (0, 0, 8, 8), (1,))
    assert not valid[2].any() and valid.sum() == 56


def test_transparent_png_pixels_are_invalid(tmp_path):
    data = np.full((4, 12, 12), 200, np.uint8)
    data[3, :, :6] = 0  # left half transparent
    path = write_tif(tmp_path / "a.png", data, crs=None, driver="PNG")
    image, valid = read_window(path, (0, 0, 12, 12), (1, 2, 3))
    assert not valid[:, :6].any() and valid[:, 6:].all()
    assert not image[:, :, :6].any() and (image[:, :, 6:] == 200).all()


def test_internal_mask_marks_invalid(tmp_path):
    path = tmp_path / "m.tif"
    with rasterio.open(path, "w", driver="GTiff", width=10, height=10, count=1, dtype="uint8",
                       crs=UTM, transform=Affine(1, 0, 0, 0, -1, 10)) as dst:
        dst.write(np.full((1, 10, 10), 7, np.uint8))
        mask = np.full((10, 10), 255, np.uint8)
        mask[:, :3] = 0
        dst.write_mask(mask)
    _, valid = read_window(path, (0, 0, 10, 10), (1,))
    assert not valid[:, :3].any() and valid[:, 3:].all()


# ---- reads stay windowed ----------------------------------------------------------------------

def test_window_of_a_large_geotiff_reads_a_small_part_of_the_file(tmp_path):
    data = np.zeros((1, 2048, 2048), np.uint8)
    data[0, 1024:1280, 1024:1280] = 9
    path = write_tif(tmp_path / "big.tif", data, tiled=True, blockxsize=256, blockysize=256)
    opener = CountingOpener()
    with open_raster(str(path), opener=opener) as src:
        image, valid = read_window(src, (1024, 1024, 1280, 1280), (1,))
    assert (image == 9).all() and valid.all()
    size = path.stat().st_size  # 4 MiB of pixels; one 256² tile is 64 KiB
    assert opener.bytes_read < size / 8, (opener.bytes_read, size)


# ---- header checks and errors -----------------------------------------------------------------

def test_limits_are_configurable(tmp_path):
    path = write_tif(tmp_path / "s.tif", random_raster("uint8", 3))
    with pytest.raises(SceneError) as caught:
        open_scene(path, limits=ReadLimits(max_pixels=1000))
    assert caught.value.error_type == "too_large"
    with pytest.raises(SceneError) as caught:
        open_scene(path, limits=ReadLimits(min_side=30))
    assert caught.value.error_type == "too_small"


def test_a_huge_internal_block_is_refused(tmp_path):
    # One compressed strip: any window would decode the whole scene.
    path = write_tif(tmp_path / "strip.tif", random_raster("uint8", 3), compress="deflate",
                     blockysize=29)
    with pytest.raises(SceneError, match="re-save the file tiled") as caught:
        open_scene(path, limits=ReadLimits(max_block_bytes=1024))
    assert caught.value.error_type == "too_large"


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(SceneError) as caught:
        open_scene(tmp_path / "nope.tif")
    assert caught.value.error_type == "not_found"
    with pytest.raises(SceneError) as caught:
        read_window(str(tmp_path), (0, 0, 8, 8), (1,))
    assert caught.value.error_type == "unreadable"


def test_band_count_error_names_the_band(tmp_path):
    path = write_tif(tmp_path / "s.tif", random_raster("uint8", 3))
    with pytest.raises(SceneError, match="no band 4") as caught:
        read_window(path, (0, 0, 8, 8), (1, 2, 4))
    assert caught.value.error_type == "band_count"
    with pytest.raises(ValueError):
        require_bands(3, ())


def test_bad_windows_are_caller_bugs(tmp_path):
    path = write_tif(tmp_path / "s.tif", random_raster("uint8", 1))
    for window in [(5, 5, 5, 9), (0, 0, 100_000, 8)]:
        with pytest.raises(ValueError):
            read_window(path, window, (1,))


def test_scene_error_is_one_line_and_pickles():
    error = SceneError("read_failed", "GDAL said\nsomething   long\n")
    assert str(error) == "read_failed: GDAL said something long"
    again = pickle.loads(pickle.dumps(error))
    assert (again.error_type, again.message) == ("read_failed", "GDAL said something long")
    with pytest.raises(ValueError, match="unknown scene error type"):
        SceneError("oops", "x")


def test_gdal_paths_and_options():
    assert gdal_path("s3://bucket/a/b.tif") == "/vsis3/bucket/a/b.tif"
    assert gdal_path("gs://bucket/b.tif") == "/vsigs/bucket/b.tif"
    assert gdal_path("https://host/b.tif") == "/vsicurl/https://host/b.tif"
    assert gdal_path("file:///data/b.tif") == "/data/b.tif"
    assert gdal_path("rel/b.tif") == "rel/b.tif"
    environ = {"GDAL_HTTP_MAX_RETRY": "9"}
    configure_gdal(environ)
    assert environ["GDAL_HTTP_MAX_RETRY"] == "9"  # a user's setting wins
    assert environ["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
    assert set(GDAL_OPTIONS) <= set(environ)


# ---- the real data beside the repo ------------------------------------------------------------

@pytest.mark.shared_data
def test_solaris_uint16_geotiff(shared_data):
    path = shared_data / "solaris" / "sample_geotiff.tif"
    info = open_scene(path)
    assert (info.width, info.height, info.count, info.dtype) == (900, 900, 1, "uint16")
    assert info.nodata == 0 and info.crs.to_epsg() == 32616 and not info.transform.is_identity
    full = full_read(path, (1,))
    image, valid = read_window(path, (800, 850, 1056, 1106), (1,))
    want, inside = padded(full, (800, 850, 1056, 1106))
    np.testing.assert_array_equal(valid, inside & (want[0] != 0))
    np.testing.assert_array_equal(image, want)


@pytest.mark.shared_data
def test_solaris_custom_projection_int16(shared_data):
    info = open_scene(shared_data / "solaris" / "sample_geotiff_custom_proj.tif")
    assert (info.count, info.dtype, info.nodata) == (3, "int16", -9999)
    assert info.crs.is_projected and info.crs.to_epsg() is None  # custom Albers, not bad_crs


@pytest.mark.shared_data
def test_isaid_png_has_no_crs_and_no_warning(shared_data):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        info = open_scene(shared_data / "isaid" / "P0003.png")
    assert info.crs is None and info.transform.is_identity and info.driver == "PNG"


@pytest.mark.shared_data
def test_deepforest_jpeg_compressed_geotiff_window(shared_data):
    path = shared_data / "deepforest" / "5b90f92da0d7280005fab355_4310.tif"
    window = (1900, 700, 2156, 956)
    with open_raster(path) as src:
        image, valid = read_window(src, window, (1, 2, 3))
        want = src.read(window=rasterio.windows.Window(1900, 700, 148, 256)).astype(np.float32)
    np.testing.assert_array_equal(image[:, :, :148], want)
    assert valid[:, :148].all() and not valid[:, 148:].any()
