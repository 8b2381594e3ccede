"""Reading weight files safely: named by the user, checked by sha256, tensors only.

Nothing here downloads from a model hub. A path or URI (anything fsspec opens: s3://, gs://,
file://, memory://) is read into memory, hashed, and handed to `torch.load(weights_only=True)`,
which refuses pickled code objects, so a weights file can never run code on load.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os

import torch
from torch import Tensor

from pipeline.errors import BundleError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


def is_uri(path: str) -> bool:
    """True for `scheme://...` (handled by fsspec), False for a local path."""
    return "://" in str(path)


def read_bytes(path_or_uri: str, what: str = "weights file") -> bytes:
    """The whole file; BundleError "<what> not found: <path>" (one line) when it is missing."""
    try:
        if is_uri(path_or_uri):
            import fsspec  # imported lazily: plain local use needs no fsspec

            with fsspec.open(path_or_uri, "rb") as f:
                return f.read()
        with open(path_or_uri, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise BundleError(f"{what} not found: {path_or_uri}") from None
    except OSError as exc:
        raise BundleError(f"cannot read {path_or_uri}: {exc.strerror or exc}") from None


def file_sha256(path_or_uri: str) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    try:
        if is_uri(path_or_uri):
            import fsspec

            opener = fsspec.open(path_or_uri, "rb")
        else:
            opener = open(path_or_uri, "rb")
        with opener as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    except FileNotFoundError:
        raise BundleError(f"file not found: {path_or_uri}") from None
    return digest.hexdigest()


def check_sha256(data: bytes, expected: str, what: str) -> str:
    """Return the actual hex sha256 of `data`; BundleError when it is not `expected`."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected.lower():
        raise BundleError(f"checksum mismatch for {what}: expected sha256 {expected[:16]}..., "
                          f"got {actual[:16]}...")
    return actual


def load_state_dict_bytes(data: bytes, what: str) -> dict[str, Tensor]:
    """Deserialize a state dict with `weights_only=True` onto the CPU.

    Accepts a plain {name: Tensor} dict, or a training checkpoint holding one under "model" or
    "state_dict" (torchvision references / Lightning layouts). Anything else is a BundleError.
    """
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError, ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"{what} is not a tensors-only state dict "
                          f"(torch.load weights_only=True refused it: {reason[:200]})") from None
    if _is_state_dict(obj):
        return obj
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if _is_state_dict(obj.get(key)):
                log.info("%s: using the state dict under %r", what, key)
                return obj[key]
    raise BundleError(f"{what} holds a {type(obj).__name__}, not a state dict of tensors")


def load_state_dict_file(path_or_uri: str | os.PathLike, sha256: str | None = None,
                         ) -> dict[str, Tensor]:
    """Read, verify (when `sha256` is given) and deserialize a state dict.

    Returns {parameter or buffer name: CPU Tensor}. Raises BundleError for a missing file, a
    checksum mismatch or a file that is not a tensors-only state dict.
    """
    path = os.fspath(path_or_uri)
    data = read_bytes(path)
    if sha256 is not None:
        check_sha256(data, sha256, path)
    return load_state_dict_bytes(data, path)


def _is_state_dict(obj: object) -> bool:
    return (isinstance(obj, dict) and bool(obj)
            and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()))
