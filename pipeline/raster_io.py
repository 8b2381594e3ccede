"""Open scenes and read tile windows with rasterio (GDAL), turning bad input into `SceneError`.

Adapters ring: I/O only, no Ray. Every header check (format, size, CRS, dtype) is made in
`open_raster` before a pixel is decoded; pixel reads are windowed (`read_window`), never the whole
scene. Frame: scene pixels, x right, y down; windows are half-open (x0, y0, x1, y1).

Remote URIs: `gdal_path` maps s3:// (gs://, http(s)://) to GDAL's /vsis3/ (/vsigs/, /vsicurl/)
for native range reads; every function also takes an `opener` (e.g. an fsspec filesystem's
`open`) that rasterio serves to GDAL as a virtual file. Reads stay windowed either way.
`configure_gdal` applies GDAL_OPTIONS once per process, at the entry point.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import rasterio
from affine import Affine
from rasterio._err import CPLE_BaseError
from rasterio.crs import CRS
from rasterio.enums import Interleaving, MaskFlags
from rasterio.errors import CRSError, NotGeoreferencedWarning, RasterioError
from rasterio.io import DatasetReader
from rasterio.windows import Window

from pipeline.errors import MaskrayError

# Short codes stored in the scenes table's error type column.
ERROR_TYPES = (
    "not_found",  # the file does not exist
    "unreadable",  # empty, not an image, or a format other than GeoTIFF / PNG / JPEG
    "too_large",  # header declares more pixels than ReadLimits allows, or a huge internal block
    "too_small",  # narrower than ReadLimits.min_side
    "unsupported_dtype",  # complex or otherwise non-numeric samples
    "bad_crs",  # georeferencing present but PROJ cannot make a CRS from it
    "band_count",  # the bundle asks for a band the scene does not have
    "read_failed",  # decoding a window failed (truncated or corrupt data)
    "all_nodata",  # every window of the scene is nodata (decided by the caller)
    "out_of_memory",  # the model ran out of memory on a single tile, after splitting its batch
    "bad_key",  # an unsafe path or object key (pipeline/scenes.py): refused, never opened
)

ALLOWED_DRIVERS = ("GTiff", "PNG", "JPEG")
SEQUENTIAL_DRIVERS = ("PNG", "JPEG")  # GDAL decodes these from the top for every window

# GDAL settings for archives in object storage. Without them GDAL lists the "directory" of every
# scene on open (one LIST request per scene, slow and billed) and probes for sidecar files.
GDAL_OPTIONS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.png,.jpg,.jpeg",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES", "GDAL_HTTP_MULTIPLEX": "YES",
    "GDAL_HTTP_MAX_RETRY": "3", "GDAL_HTTP_RETRY_DELAY": "1", "VSI_CACHE": "TRUE",
}

# Applied around every open and read, whatever the environment says: they turn GDAL's silent
# garbage into errors. GDAL 3.10 decodes a whole small PNG in one piece and returns whatever a
# truncated file gave, without an error; corrupt JPEG data is only a libjpeg *warning*, and the
# read "succeeds" with damaged pixels.
_STRICT_READ_OPTIONS = {"GDAL_PNG_WHOLE_IMAGE_OPTIM": "NO", "GDAL_ERROR_ON_LIBJPEG_WARNING": "TRUE"}

_VSI_PREFIXES = {"s3://": "/vsis3/", "gs://": "/vsigs/"}


class SceneError(MaskrayError):
    """A scene that can't be processed: it becomes a `scenes` row with status 'error' and the
    run goes on. `error_type` is one of ERROR_TYPES; `message` is one line."""

    def __init__(self, error_type: str, message: str):
        if error_type not in ERROR_TYPES:
            raise ValueError(f"unknown scene error type {error_type!r}; valid: {ERROR_TYPES}")
        message = " ".join(str(message).split())[:300]
        # Both in args so the exception pickles across Ray processes.
        super().__init__(error_type, message)
        self.error_type = error_type
        self.message = message

    def __str__(self) -> str:
        return f"{self.error_type}: {self.message}"


@dataclass(frozen=True)
class ReadLimits:
    """Header checks made before any pixel is read.

    max_pixels: width * height above this is refused ('too_large'). Default 2**32 (about
        65 536²): the largest scenes this project targets are 40 000² (1.6e9 px); the bound
        leaves room for long strips and refuses the 100 000² (1e10) class of headers, which
        are far more often corrupt or hostile than real.
    max_block_bytes: GDAL decodes whole internal blocks (TIFF tiles / strips), so a windowed
        read of a single-strip compressed TIFF decodes the scene. Blocks above this are refused
        ('too_large'). PNG / JPEG report one-line blocks and pass.
    min_side: width or height below this is refused ('too_small'): a 1-pixel image is a broken
        export or a thumbnail, not a scene anything can be detected in.
    """

    max_pixels: int = 2**32
    max_block_bytes: int = 1 << 30
    min_side: int = 8


DEFAULT_LIMITS = ReadLimits()


@dataclass(frozen=True)
class SceneInfo:
    """What the header says about a scene.

    width, height: pixels. count: bands. dtype: numpy name of the samples ('uint8', 'uint16',
    'int16', 'float32', ...). nodata: band 1's nodata value (may be NaN) or None. crs: rasterio
    CRS or None (PNG / JPEG, or a GeoTIFF without one). transform: pixel -> CRS affine; identity
    when the scene is not georeferenced. driver: 'GTiff' | 'PNG' | 'JPEG'.
    random_access: False for PNG / JPEG, whose every window is decoded from the top of the
        image: read all windows of such a scene in one task, in row-major order, so that GDAL's
        block cache serves the rows already decoded.
    """

    width: int
    height: int
    count: int
    dtype: str
    nodata: float | None
    crs: CRS | None
    transform: Affine
    driver: str
    random_access: bool


def gdal_path(uri: str) -> str:
    """The path GDAL opens natively for `uri`: s3://b/k -> /vsis3/b/k; local paths unchanged."""
    for prefix, vsi in _VSI_PREFIXES.items():
        if uri.startswith(prefix):
            return vsi + uri[len(prefix):]
    if uri.startswith(("http://", "https://")):
        return "/vsicurl/" + uri
    return uri[len("file://"):] if uri.startswith("file://") else uri


def configure_gdal(environ: dict | None = None) -> None:
    """Set GDAL_OPTIONS in the process environment (once, at the entry point), keeping any value
    the user already set."""
    environ = os.environ if environ is None else environ
    for key, value in GDAL_OPTIONS.items():
        environ.setdefault(key, value)


@contextmanager
def open_raster(
    uri: str | os.PathLike, *, limits: ReadLimits = DEFAULT_LIMITS, opener: Callable | None = None
) -> Iterator[DatasetReader]:
    """Open a scene for windowed reads after every header check passed; close it on exit.

    uri: local path, file:// or s3:// URI (GDAL /vsis3/), or, with `opener` (a callable
    `(path, mode) -> file object`, e.g. an fsspec filesystem's `open`), any path that opener
    understands. Raises SceneError: 'not_found', 'unreadable', 'too_large', 'too_small',
    'unsupported_dtype' or 'bad_crs'. No pixel has been decoded when it returns.
    """
    src = _open_checked(os.fspath(uri), limits, opener)
    try:
        yield src
    finally:
        src.close()


def open_scene(
    uri: str | os.PathLike, *, limits: ReadLimits = DEFAULT_LIMITS, opener: Callable | None = None
) -> SceneInfo:
    """The header facts of one scene (see `open_raster` for the checks and errors)."""
    with open_raster(uri, limits=limits, opener=opener) as src:
        return scene_info(src)


def scene_info(src: DatasetReader) -> SceneInfo:
    """The header facts of an open dataset (from `open_raster`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        transform = src.transform  # identity for PNG / JPEG without a world file
    return SceneInfo(width=src.width, height=src.height, count=src.count, dtype=src.dtypes[0],
                     nodata=None if src.nodata is None else float(src.nodata), crs=src.crs,
                     transform=transform, driver=src.driver,
                     random_access=src.driver not in SEQUENTIAL_DRIVERS)


def require_bands(count: int | SceneInfo, bands: Sequence[int]) -> None:
    """Raise SceneError('band_count') unless every 1-based band in `bands` exists."""
    count = count.count if isinstance(count, SceneInfo) else int(count)
    if not bands:
        raise ValueError("bands must name at least one 1-based band")
    missing = [b for b in bands if not 1 <= b <= count]
    if missing:
        raise SceneError("band_count", f"scene has {count} band(s) but bands {tuple(bands)} "
                                       f"are read (no band {missing[0]})")


def read_window(source: str | os.PathLike | DatasetReader, window, bands: Sequence[int], *,
                opener: Callable | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read one window of selected bands; only the blocks under the window are decoded.

    source: an open dataset (from `open_raster`; reuse it for all windows of a scene) or a URI.
    window: (x0, y0, x1, y1) half-open in scene pixels (or an object with those attributes);
        it may extend past the scene on any side.
    bands: 1-based band indexes, in the order the model wants them.
    Returns (image, valid): image float32 (C, y1 - y0, x1 - x0) with C = len(bands), raw sample
    values (no normalisation); valid bool (y1 - y0, x1 - x0). A sample is missing when it equals
    its band's nodata or is NaN / inf; a pixel is invalid when it lies outside the scene, all its
    selected bands are missing (GDAL's dataset-mask rule), or the alpha band / internal mask says
    so. Invalid pixels and NaN / inf samples are 0 in `image`. The caller skips a tile whose
    `valid` is all False and raises `all_nodata_error()` when it skipped every tile of a scene.
    Raises SceneError('band_count') or SceneError('read_failed') (truncated or corrupt data).
    """
    if isinstance(source, (str, os.PathLike)):
        with open_raster(source, opener=opener) as src:
            return read_window(src, window, bands)
    x0, y0, x1, y1 = _window_bounds(window)
    require_bands(source.count, bands)
    image = np.zeros((len(bands), y1 - y0, x1 - x0), np.float32)
    valid = np.zeros((y1 - y0, x1 - x0), bool)
    ix0, iy0 = max(x0, 0), max(y0, 0)
    ix1, iy1 = min(x1, source.width), min(y1, source.height)
    if ix0 >= ix1 or iy0 >= iy1:
        return image, valid  # entirely outside the scene: nothing to decode
    inside = (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))
    inside_window = Window(ix0, iy0, ix1 - ix0, iy1 - iy0)
    image[(slice(None), *inside)], valid[inside] = _read_inside(source, inside_window, bands)
    return image, valid


def all_nodata_error() -> SceneError:
    """The error a caller raises when every tile of a scene was skipped as nodata."""
    return SceneError("all_nodata", "every pixel of the scene is nodata (no tile to run)")


MAX_WINDOW_SIDE = 16384  # a larger window is a caller bug (a scene-sized read), not a tile


def _window_bounds(window) -> tuple[int, int, int, int]:
    if hasattr(window, "x0"):
        window = (window.x0, window.y0, window.x1, window.y1)
    x0, y0, x1, y1 = (int(v) for v in window)
    if not (0 < x1 - x0 <= MAX_WINDOW_SIDE and 0 < y1 - y0 <= MAX_WINDOW_SIDE):
        raise ValueError(f"window {(x0, y0, x1, y1)} must be non-empty, sides <= {MAX_WINDOW_SIDE}")
    return x0, y0, x1, y1


def _read_inside(src: DatasetReader, win: Window, bands: Sequence[int]):
    """(image float32 (C, h, w), valid bool (h, w)) for a window that lies inside the scene."""
    per_dataset = MaskFlags.per_dataset in src.mask_flag_enums[bands[0] - 1]
    try:
        with rasterio.Env(**_STRICT_READ_OPTIONS):
            raw = src.read(list(bands), window=win)
            # Alpha band or internal mask; nodata masks are computed below from `raw`.
            mask = src.read_masks(bands[0], window=win) > 0 if per_dataset else None
    except (RasterioError, CPLE_BaseError) as exc:
        raise _read_error(exc) from exc
    missing = np.stack([_is_nodata(raw[i], src.nodatavals[b - 1]) for i, b in enumerate(bands)])
    image = raw.astype(np.float32)
    finite = np.isfinite(image)  # NaN / inf, including float64 values beyond float32's range
    valid = ~(missing | ~finite).all(axis=0)
    if mask is not None:
        valid &= mask
    # A nodata value in one band of a valid pixel stays: 255 in a uint8 RGB scene with nodata
    # 255 is also a saturated red. Only non-finite samples and invalid pixels become 0.
    image[~finite] = 0
    image[:, ~valid] = 0
    return image, valid


def _is_nodata(band: np.ndarray, nodata: float | None) -> np.ndarray:
    """bool mask of samples equal to `nodata`, compared in the band's own dtype."""
    if nodata is None:
        return np.zeros(band.shape, bool)
    if math.isnan(nodata):
        return np.isnan(band) if band.dtype.kind == "f" else np.zeros(band.shape, bool)
    if band.dtype.kind in "iu":
        info = np.iinfo(band.dtype)
        if not (float(nodata).is_integer() and info.min <= nodata <= info.max):
            return np.zeros(band.shape, bool)  # no sample of this dtype can equal it
        return band == int(nodata)
    return band == band.dtype.type(nodata)


def _open_checked(uri: str, limits: ReadLimits, opener: Callable | None) -> DatasetReader:
    driver = _sniff_local_file(uri) if opener is None else None
    with rasterio.Env(**_STRICT_READ_OPTIONS), _capture_gdal_warnings() as messages:
        with warnings.catch_warnings():
            # GDAL gives PNG / JPEG an identity transform; that is what we want, quietly.
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            path = gdal_path(uri) if opener is None else uri
            try:
                src = rasterio.open(path, driver=driver, opener=opener)
            except (RasterioError, CPLE_BaseError, OSError) as exc:
                error = _open_error(exc)
                if not (isinstance(error, SceneError) and path.startswith("/vsi")):
                    raise error from exc
                # GDAL may answer from what it cached after an earlier failed request ("does
                # not exist"): a remote scene is judged bad only after asking the store again.
                forget_remote(uri)
                try:
                    src = rasterio.open(path, driver=driver, opener=opener)
                except (RasterioError, CPLE_BaseError, OSError) as again:
                    raise _open_error(again) from again
        try:
            _check_header(src, limits)
            _check_crs(src, messages)
        except BaseException:
            src.close()
            raise
    return src


_MAGIC = {b"II*\x00": "GTiff", b"MM\x00*": "GTiff", b"II+\x00": "GTiff", b"MM\x00+": "GTiff",
          b"\x89PNG": "PNG", b"\xff\xd8\xff": "JPEG"}


def _sniff_local_file(uri: str) -> str | None:
    """The GDAL driver for a local file from its first bytes, so GDAL tries no other driver
    (its XYZ / ASCII-grid drivers would otherwise parse any text file); None for remote URIs."""
    path = gdal_path(uri)
    if path.startswith("/vsi") or "://" in path:
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except FileNotFoundError:
        raise SceneError("not_found", "file not found") from None
    except OSError as exc:
        raise SceneError("unreadable", f"cannot read file: {exc.strerror}") from None
    if not head:
        raise SceneError("unreadable", "empty file (0 bytes)")
    for magic, driver in _MAGIC.items():
        if head.startswith(magic):
            return driver
    raise SceneError("unreadable", "not a GeoTIFF, PNG or JPEG file (unrecognised header)")


# GDAL's words for an object store that did not answer, as opposed to a bad file.
_UNAVAILABLE = ("CURL error", "Could not connect", "Connection refused", "Connection reset",
                "timed out", "Timeout was reached", "HTTP response code: 5", "HTTP error code: 5",
                "HTTP response code: 429", "HTTP response code: 403")


class StorageUnavailable(MaskrayError):
    """The object store did not answer a scene read (connection refused or reset, timeout,
    HTTP 5xx / 429, or 403 when credentials expire): a fact about the store, not the scene, so
    it never becomes an error row. Callers retry, then fail the run; a re-run picks it up."""


def forget_remote(uri: str) -> None:
    """Drop what GDAL's /vsicurl/ layer cached about `uri` (existence, size, data chunks).
    After a failed request GDAL remembers the object as missing, so a retry must forget it or
    it reports "does not exist" without asking the store again. No-op for local paths."""
    path = gdal_path(os.fspath(uri))
    if not path.startswith("/vsi"):
        return
    clear = _vsicurl_clear()
    if clear is not None:
        clear(path.encode())


_VSICURL_CLEAR: list = []


def _vsicurl_clear():
    """GDAL's C `VSICurlPartialClearCache` from the libgdal rasterio loaded (ctypes: rasterio
    does not wrap it); None when that library cannot be found."""
    if not _VSICURL_CLEAR:
        import ctypes
        import ctypes.util
        import glob

        base = os.path.dirname(rasterio.__file__)
        candidates = sorted(glob.glob(os.path.join(base, os.pardir, "rasterio.libs", "libgdal*.so*")))
        candidates.append(ctypes.util.find_library("gdal") or "")
        function = None
        for name in filter(None, candidates):
            try:
                function = ctypes.CDLL(name).VSICurlPartialClearCache
                break
            except (OSError, AttributeError):
                continue
        if function is not None:
            function.argtypes, function.restype = [ctypes.c_char_p], None
        _VSICURL_CLEAR.append(function)
    return _VSICURL_CLEAR[0]


def _unavailable(message: str) -> bool:
    return any(text in message for text in _UNAVAILABLE)


def _read_error(exc: BaseException) -> MaskrayError:
    message = _gdal_message(exc)
    if _unavailable(message):
        return StorageUnavailable(message)
    return SceneError("read_failed", message)


def _open_error(exc: BaseException) -> MaskrayError:
    message = _gdal_message(exc)
    if _unavailable(message):
        return StorageUnavailable(message)
    if isinstance(exc, FileNotFoundError) or any(
            text in message for text in ("No such file", "404", "key does not exist", "NoSuchKey")):
        return SceneError("not_found", message)
    if "not recognized as being in a supported file format" in message:
        return SceneError("unreadable", "not a GeoTIFF, PNG or JPEG file (unrecognised header)")
    return SceneError("unreadable", message)


def _check_header(src: DatasetReader, limits: ReadLimits) -> None:
    """Refuse what would be unsafe or pointless to read, from header fields only."""
    if src.driver not in ALLOWED_DRIVERS:
        raise SceneError("unreadable", f"{src.driver} files are not supported (GeoTIFF, PNG, JPEG)")
    width, height = src.width, src.height
    if width * height > limits.max_pixels:
        raise SceneError("too_large", f"header declares {width} x {height} px "
                         f"({width * height:.3g}), above max_pixels {limits.max_pixels:.3g}")
    if min(width, height) < limits.min_side:
        raise SceneError("too_small", f"{width} x {height} px is below min_side {limits.min_side}")
    dtype = np.dtype(src.dtypes[0])
    if dtype.kind not in "uif":
        raise SceneError("unsupported_dtype", f"{dtype.name} samples are not supported")
    block_h, block_w = src.block_shapes[0]
    bands_per_block = src.count if src.interleaving == Interleaving.pixel else 1
    block_bytes = block_h * block_w * bands_per_block * dtype.itemsize
    if block_bytes > limits.max_block_bytes:
        raise SceneError("too_large", f"internal block of {block_w} x {block_h} px "
                         f"({block_bytes / 2**20:.0f} MiB) is above max_block_bytes; "
                         "re-save the file tiled")


def _check_crs(src: DatasetReader, gdal_messages: list[str]) -> None:
    """Raise 'bad_crs' when the file has georeferencing that PROJ can't turn into a CRS.

    GDAL doesn't fail on a CRS it can't read: it logs a PROJ error and returns no CRS or a bare
    LOCAL_CS named after the file's citation. A PROJ error while opening plus such a result is
    the signal; a proper engineering CRS (no PROJ error) or a file without one passes.
    """
    proj_errors = [m for m in gdal_messages if "PROJ:" in m]
    try:
        crs = src.crs
        if crs is not None:
            crs.to_wkt()
    except (CRSError, RasterioError, CPLE_BaseError) as exc:
        raise SceneError("bad_crs", f"unreadable CRS: {_gdal_message(exc)}") from exc
    if proj_errors and (crs is None or not (crs.is_projected or crs.is_geographic)):
        reason = proj_errors[0].split("PROJ:", 1)[1].strip()
        raise SceneError("bad_crs", f"PROJ cannot build the scene's CRS: {reason}")


@contextmanager
def _capture_gdal_warnings() -> Iterator[list[str]]:
    """This thread's GDAL warnings while the block runs: rasterio logs GDAL's CPLError warnings
    to 'rasterio._env', which must be enabled for WARNING (the default)."""
    logger, thread, messages = logging.getLogger("rasterio._env"), threading.get_ident(), []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: record.thread == thread and messages.append(record.getMessage())
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def _gdal_message(exc: BaseException) -> str:
    """The most specific GDAL message in an exception chain (rasterio wraps it in 'Read failed.
    See previous exception for details.')."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, CPLE_BaseError):
            return str(cause)
        cause = cause.__cause__ or cause.__context__
    return str(exc)
