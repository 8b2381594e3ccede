"""Object storage: the one place that turns the `storage` config and the environment into
filesystems for fsspec (s3fs), pyarrow (Ray Train checkpoints), GDAL (windowed scene reads) and
DuckDB (httpfs).

Adapters ring. Every path the project takes (inputs, outputs, bundles, checkpoints, labels) may be
a local path or an fsspec URI such as `s3://bucket/prefix`; S3 settings come from here:

    endpoint   storage.endpoint_url, else $AWS_ENDPOINT_URL_S3, else $AWS_ENDPOINT_URL, else AWS
    region     storage.region, else $AWS_REGION, else $AWS_DEFAULT_REGION, else us-east-1
    addressing storage.addressing: "auto" (path-style with a custom endpoint, as S3-compatible
               servers expect; virtual-hosted on AWS), "path" or "virtual"
    timeouts   storage.connect_timeout / read_timeout (seconds): a hung server fails the call
               instead of blocking forever; storage.retries attempts with AWS's standard backoff

Credentials never pass through here, a config file, a URI, a log line or a run record: every
client finds them itself in the standard AWS chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
AWS_SESSION_TOKEN, AWS_PROFILE and ~/.aws, IRSA web identity, instance metadata). DuckDB has no
such chain offline, so `duckdb_connect` resolves them with botocore at connect time and hands
them to DuckDB in memory only. A URI carrying credentials (`s3://key:secret@bucket`) is refused.

`configure(settings)` must run once per process that touches storage: the entry points call it,
and so do the Ray tasks and actors, which receive the settings (never credentials) as an argument
because a cluster's workers do not share the driver's environment.
"""

from __future__ import annotations

import os
import re
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Iterator
from urllib.parse import urlsplit

import fsspec

from pipeline.errors import MaskrayError, UsageError
from pipeline.raster_io import configure_gdal


class StorageError(MaskrayError):
    """Object storage refused or failed a request (credentials, missing bucket, unreachable
    endpoint); one line, exit code 1."""


@dataclass(frozen=True)
class StorageConfig:
    """S3 (and S3-compatible) settings; see the module docstring. No credentials: those come
    from the environment or the AWS credential chain only.

    endpoint_url: "" = $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL, else AWS itself.
    region: "" = $AWS_REGION / $AWS_DEFAULT_REGION, else us-east-1.
    addressing: "auto" | "path" | "virtual" (bucket in the path or in the host name).
    connect_timeout, read_timeout: seconds per request; retries: attempts per request.
    anonymous: unsigned requests, for public buckets.
    """

    endpoint_url: str = ""
    region: str = ""
    addressing: str = "auto"
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    retries: int = 5
    anonymous: bool = False

    def __post_init__(self) -> None:
        if self.addressing not in ("auto", "path", "virtual"):
            raise ValueError("addressing must be auto, path or virtual")
        if self.connect_timeout <= 0 or self.read_timeout <= 0 or self.retries < 1:
            raise ValueError("connect_timeout and read_timeout must be > 0, retries >= 1")
        if self.endpoint_url:
            _check_endpoint(self.endpoint_url)


@dataclass(frozen=True)
class Resolved:
    """StorageConfig with the environment's defaults filled in: what every client is built from.
    Holds no secret, so it is safe to pass to Ray tasks and to print."""

    endpoint_url: str  # "" = AWS
    region: str
    path_style: bool
    connect_timeout: float
    read_timeout: float
    retries: int
    anonymous: bool

    @property
    def insecure(self) -> bool:
        return self.endpoint_url.startswith("http://")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve(cfg: StorageConfig | Resolved | dict | None = None,
            environ: dict[str, str] | None = None) -> Resolved:
    """Fill `cfg`'s blanks from the environment. Accepts a Resolved (or its dict) unchanged."""
    if isinstance(cfg, Resolved):
        return cfg
    if isinstance(cfg, dict):
        return Resolved(**cfg)
    if cfg is None and _configured is not None and environ is None:
        return _configured
    cfg = cfg or StorageConfig()
    env = os.environ if environ is None else environ
    endpoint = cfg.endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL", "")
    if endpoint:
        _check_endpoint(endpoint)
    region = cfg.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    path_style = cfg.addressing == "path" or (cfg.addressing == "auto" and bool(endpoint))
    return Resolved(endpoint.rstrip("/"), region, path_style, float(cfg.connect_timeout),
                    float(cfg.read_timeout), int(cfg.retries), bool(cfg.anonymous))


def _check_endpoint(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"storage endpoint must be http(s)://host[:port], got {url!r}")
    if parts.username or parts.password:
        raise UsageError("storage endpoint must not carry credentials; set them in the "
                         "environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) or an AWS profile")


# ----------------------------------------------------------------------------- clients

_lock = threading.Lock()
_configured: Resolved | None = None


def configure(settings: StorageConfig | Resolved | dict | None = None) -> Resolved:
    """Make `settings` this process's storage defaults: fsspec's s3 options (so every
    `fsspec.core.url_to_fs("s3://...")` gets the endpoint, addressing, timeouts and retries),
    GDAL's /vsis3/ options (these override the same GDAL variables in the environment) and
    `raster_io.GDAL_OPTIONS`. Idempotent and cheap; returns the resolved settings. `None`
    resolves from the environment alone."""
    global _configured
    resolved = resolve(settings)
    with _lock:
        if resolved == _configured:
            return resolved
        fsspec.config.conf["s3"] = s3fs_options(resolved)
        _single_retry_policy()
        os.environ.update(gdal_options(resolved))
        configure_gdal()  # no directory listing on open, range-merging: kept if the user set them
        if resolved.anonymous:
            os.environ["AWS_NO_SIGN_REQUEST"] = "YES"
        else:
            os.environ.pop("AWS_NO_SIGN_REQUEST", None)
        _configured = resolved
    return resolved


def _single_retry_policy() -> None:
    """botocore's standard retry mode (storage.retries attempts, exponential backoff) is the one
    retry policy. s3fs wraps every call in a loop of its own (5 more attempts of each botocore
    sequence), which multiplies a dead endpoint's timeouts into minutes; turn it off."""
    try:
        import s3fs
    except ImportError:  # no S3 support installed: nothing to tune
        return
    s3fs.S3FileSystem.retries = 1


def s3fs_options(s: Resolved) -> dict[str, Any]:
    """Keyword arguments for `s3fs.S3FileSystem` (botocore timeouts, retries and addressing)."""
    options: dict[str, Any] = {
        "anon": s.anonymous,
        "client_kwargs": {"region_name": s.region},
        "config_kwargs": {
            "connect_timeout": s.connect_timeout, "read_timeout": s.read_timeout,
            "retries": {"max_attempts": s.retries, "mode": "standard"},
            "s3": {"addressing_style": "path" if s.path_style else "virtual"},
        },
    }
    if s.endpoint_url:
        options["endpoint_url"] = s.endpoint_url
    return options


def gdal_options(s: Resolved) -> dict[str, str]:
    """GDAL config options for /vsis3/ range reads (credentials: GDAL's own AWS chain)."""
    options = {"AWS_REGION": s.region, "AWS_VIRTUAL_HOSTING": "FALSE" if s.path_style else "TRUE",
               "GDAL_HTTP_CONNECTTIMEOUT": str(int(round(s.connect_timeout))),
               "GDAL_HTTP_TIMEOUT": str(int(round(s.read_timeout))),
               "GDAL_HTTP_MAX_RETRY": str(s.retries - 1), "GDAL_HTTP_RETRY_DELAY": "1"}
    if s.endpoint_url:
        parts = urlsplit(s.endpoint_url)
        options["AWS_S3_ENDPOINT"] = parts.netloc + parts.path.rstrip("/")
        options["AWS_HTTPS"] = "NO" if s.insecure else "YES"
    return options


def filesystem(uri: str, settings: StorageConfig | Resolved | dict | None = None
               ) -> tuple[fsspec.AbstractFileSystem, str]:
    """(fsspec filesystem, path without protocol) for a local path or any fsspec URI."""
    check_uri(uri)
    if settings is not None or _configured is None:
        configure(settings)
    fs, path = fsspec.core.url_to_fs(str(uri))
    return fs, path


def is_remote(uri: str) -> bool:
    """True for URIs with a protocol other than file://."""
    return "://" in str(uri) and not str(uri).startswith("file://")


def check_uri(uri: str) -> None:
    """UsageError for URIs that carry credentials (`s3://key:secret@bucket/...`)."""
    if is_remote(uri):
        netloc = urlsplit(str(uri)).netloc
        if "@" in netloc:
            raise UsageError("URIs must not carry credentials (found '@' in the bucket part); "
                             "set them in the environment or an AWS profile")


def arrow_filesystem(settings: StorageConfig | Resolved | dict | None = None):
    """`pyarrow.fs.S3FileSystem` for the same settings (Ray Train's `storage_filesystem`)."""
    from pyarrow import fs as pafs

    s = resolve(settings)
    kwargs: dict[str, Any] = {
        "region": s.region, "connect_timeout": s.connect_timeout, "request_timeout": s.read_timeout,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=s.retries),
        "force_virtual_addressing": not s.path_style, "anonymous": s.anonymous,
    }
    if s.endpoint_url:
        parts = urlsplit(s.endpoint_url)
        kwargs.update(endpoint_override=parts.netloc, scheme=parts.scheme)
    return pafs.S3FileSystem(**kwargs)


def duckdb_connect(settings: StorageConfig | Resolved | dict | None = None, database: str = ":memory:"):
    """A DuckDB connection that can read s3:// (httpfs loaded from the installed
    `duckdb-extension-httpfs` package, offline; credentials from the AWS chain, in memory)."""
    import duckdb

    s = resolve(settings)
    con = duckdb.connect(database)
    con.execute(f"LOAD '{_httpfs_path(duckdb.__version__)}'")
    options = {"TYPE": "s3", "REGION": s.region, "URL_STYLE": "path" if s.path_style else "vhost"}
    if s.endpoint_url:
        parts = urlsplit(s.endpoint_url)
        options.update(ENDPOINT=parts.netloc, USE_SSL="false" if s.insecure else "true")
    if not s.anonymous:
        creds = _aws_credentials()
        if creds is not None:
            options.update(KEY_ID=creds.access_key, SECRET=creds.secret_key)
            if creds.token:
                options["SESSION_TOKEN"] = creds.token
    body = ", ".join(f"{k} {_sql_literal(v)}" if k != "TYPE" else f"TYPE {v}"
                     for k, v in options.items())
    con.execute(f"CREATE OR REPLACE SECRET maskray_s3 ({body})")
    return con


def _httpfs_path(version: str) -> str:
    try:
        import duckdb_extension_httpfs
    except ImportError:
        raise StorageError("reading s3:// with DuckDB needs the duckdb-extension-httpfs package "
                           f"(pip install duckdb-extension-httpfs=={version})") from None
    base = os.path.dirname(duckdb_extension_httpfs.__file__)
    path = os.path.join(base, "extensions", f"v{version}", "httpfs.duckdb_extension")
    if not os.path.isfile(path):
        raise StorageError(f"duckdb-extension-httpfs does not match duckdb {version}")
    return path.replace("'", "''")


def _aws_credentials():
    import botocore.session

    creds = botocore.session.get_session().get_credentials()
    return creds.get_frozen_credentials() if creds is not None else None


def _sql_literal(value: Any) -> str:
    return "'" + str(value).replace("'", "''") + "'"


# ----------------------------------------------------------------------------- errors

# Whole words only: a bare "403" inside a message also matches a port such as ":54037".
_CREDENTIAL_CODES = re.compile(r"\b(InvalidAccessKeyId|SignatureDoesNotMatch|AccessDenied|Forbidden"
                               r"|403|ExpiredToken|InvalidToken)\b")
_UNREACHABLE_WORDS = ("could not connect", "connect timeout", "read timeout", "timed out",
                      "connection refused", "connection reset")


@contextmanager
def translating_errors(uri: str) -> Iterator[None]:
    """Turn a failed storage call inside the block into one `StorageError` line about `uri`
    (credentials, missing bucket, unreachable endpoint); our own errors pass through."""
    try:
        yield
    except MaskrayError:
        raise
    except (OSError, ValueError) as exc:  # s3fs maps botocore errors to OSError subclasses
        raise storage_error(exc, uri) from None
    except Exception as exc:  # noqa: BLE001 - botocore's own exception classes
        if type(exc).__module__.split(".")[0] in ("botocore", "aiobotocore", "s3fs", "aiohttp"):
            raise storage_error(exc, uri) from None
        raise


def storage_error(exc: BaseException, uri: str) -> StorageError:
    """One line for a failed storage call on `uri`, naming the likely fix; never includes
    credentials (botocore's messages don't carry them)."""
    text = " ".join(str(exc).split())[:300] or type(exc).__name__
    unreachable = StorageError(f"{uri}: storage endpoint unreachable ({text}); check "
                               "storage.endpoint_url / AWS_ENDPOINT_URL and the network")
    if "locate credentials" in text or "NoCredentials" in text:
        return StorageError(f"{uri}: no credentials found; set AWS_ACCESS_KEY_ID / "
                            "AWS_SECRET_ACCESS_KEY or AWS_PROFILE in the environment")
    if _is_transport_error(exc):  # no answer came back, so nothing was refused
        return unreachable
    if isinstance(exc, PermissionError) or _CREDENTIAL_CODES.search(text):
        return StorageError(f"{uri}: access denied ({text}); check the credentials in the "
                            "environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE)")
    if isinstance(exc, FileNotFoundError) or "NoSuchBucket" in text:
        return StorageError(f"{uri}: not found ({text})")
    if any(word in text.lower() for word in _UNREACHABLE_WORDS):
        return unreachable
    return StorageError(f"{uri}: storage request failed: {type(exc).__name__}: {text}")


def _is_transport_error(exc: BaseException) -> bool:
    """True for botocore's "no HTTP answer" errors (connect/read timeouts, refused or reset
    connections, DNS), which carry no S3 error code."""
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError
    except ImportError:  # pragma: no cover - botocore comes with s3fs
        return False
    return isinstance(exc, (BotoConnectionError, HTTPClientError))


# ----------------------------------------------------------------------------- local copies


def cache_root() -> str:
    """Node-local cache for copies of remote training data: $MASKRAY_CACHE, else
    ~/.cache/maskray."""
    return os.environ.get("MASKRAY_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                           "maskray")


def local_copy(uri: str, name: str | None = None) -> str:
    """A local directory holding every object under the prefix `uri` (or the one object `uri`),
    downloaded once per machine and version: the cache key covers each object's key, size and
    ETag, so a changed prefix is fetched again. Processes on one machine (training workers)
    share it: one downloads under a file lock while the others wait. `name`: the last path
    component of the copy (default: the prefix's own), so sibling folders can be laid out as
    they are remotely. Returns the local path of `uri`'s copy."""
    import fcntl
    import hashlib
    import json
    import shutil
    import tempfile

    fs, path = filesystem(uri)
    path = path.rstrip("/")
    with translating_errors(uri):
        found = fs.find(path, detail=True) or ({path: fs.info(path)} if fs.isfile(path) else {})
    found = {k: v for k, v in found.items() if v.get("type") != "directory"}
    if not found:
        raise StorageError(f"{uri}: not found or empty")
    single = list(found) == [path]
    listing = sorted((k, v.get("size"), str(v.get("ETag") or v.get("etag") or "")) for k, v in found.items())
    digest = hashlib.sha256(json.dumps([uri, listing]).encode()).hexdigest()[:16]
    base = os.path.join(cache_root(), "data", digest)
    target = os.path.join(base, name or path.rsplit("/", 1)[-1])
    if os.path.exists(target):
        return target
    os.makedirs(base, exist_ok=True)
    with open(os.path.join(base, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if os.path.exists(target):
            return target
        tmp = tempfile.mkdtemp(prefix=".partial-", dir=base)
        try:
            with translating_errors(uri):
                for key in sorted(found):
                    rel = os.path.basename(key) if single else key[len(path):].lstrip("/")
                    dest = os.path.join(tmp, rel)
                    os.makedirs(os.path.dirname(dest), exist_ok=True)
                    fs.get_file(key, dest)
            os.replace(os.path.join(tmp, os.path.basename(path)) if single else tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
