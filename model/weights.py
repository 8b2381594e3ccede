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
import re
import warnings
from contextlib import contextmanager
from typing import BinaryIO, Iterator

import torch
from torch import Tensor

from pipeline.errors import BundleError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


def is_uri(path: str) -> bool:
    """True for `scheme://...` (handled by fsspec), False for a local path."""
    return "://" in str(path)


def read_bytes(path_or_uri: str, what: str = "weights file") -> bytes:
    """The whole file. One-line errors: BundleError "<what> not found: <path>" when it is
    missing; StorageError when object storage fails the request (credentials, endpoint)."""
    if is_uri(path_or_uri):
        with _remote(path_or_uri, what) as f:
            return f.read()
    try:
        with open(path_or_uri, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise BundleError(f"{what} not found: {path_or_uri}") from None
    except OSError as exc:
        raise BundleError(f"cannot read {path_or_uri}: {exc.strerror or exc}") from None


@contextmanager
def _remote(uri: str, what: str) -> Iterator[BinaryIO]:
    """An open fsspec file; a missing object is BundleError "<what> not found", any other failed
    request one StorageError line naming the fix (credentials, endpoint), never a botocore
    traceback."""
    import fsspec  # imported lazily: plain local use needs no fsspec

    from pipeline.storage import translating_errors

    with translating_errors(uri):
        try:
            with fsspec.open(uri, "rb") as f:
                yield f
        except FileNotFoundError:
            raise BundleError(f"{what} not found: {uri}") from None


def file_sha256(path_or_uri: str) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    if is_uri(path_or_uri):
        opener = _remote(path_or_uri, "file")
    else:
        try:
            opener = open(path_or_uri, "rb")
        except FileNotFoundError:
            raise BundleError(f"file not found: {path_or_uri}") from None
    with opener as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
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
        # torch warns on stderr about files it is about to refuse (e.g. "Detected pickle
        # protocol 4"); the refusal below is the one line the user needs.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError, ...
        raise BundleError(f"{what} is not a tensors-only state dict (torch.load weights_only=True "
                          f"refused it: {_refusal_reason(exc)})") from None
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


def _refusal_reason(exc: Exception) -> str:
    """The sentence of a torch.load error that says what is wrong with the file.

    torch's weights-only refusal is a page that opens with how to load the file anyway
    (weights_only=False, i.e. run its code) and states the reason after "WeightsUnpickler
    error:"; only the reason belongs in our one line.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # torch bolds a phrase with ANSI codes
    text = text.partition("WeightsUnpickler error:")[2] or text
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return lines[0].split(". ")[0].rstrip(".")[:200]
