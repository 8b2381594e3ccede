"""One writer per (output, model) at a time: a lease object under `_locks/`.

A run creates `<root>/_locks/model=<id>.json` with an exclusive create (O_EXCL locally; a
conditional PUT, `If-None-Match: *`, on S3) and rewrites its heartbeat every `stale_s / 4`
seconds from a background thread. A second run that finds a live lease stops at once and does
nothing (exit 0: a scheduler firing twice is not an error). A lease whose heartbeat is older than
`stale_s` belongs to a killed run and is taken over; so is one whose process, on this host, is
gone. Even without the lease nothing is duplicated
(shard names are deterministic); the lease saves the second run's work and keeps runs that list
at different moments from planning different shards over the same scenes.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from pipeline import commit
from pipeline.errors import MaskrayError

log = logging.getLogger(__name__)

LOCKS = "_locks"


class LeaseHeld(MaskrayError):
    """Another live run holds the lease; `holder` is its lease record."""

    exit_code = 0

    def __init__(self, message: str, holder: dict[str, Any]):
        super().__init__(message)
        self.holder = holder


class Lease:
    """Context manager: holds the lease for (root, model_id) while the block runs."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, model_id: str, run_id: str,
                 stale_s: float = 120.0) -> None:
        self.fs, self.run_id, self.stale_s = fs, run_id, stale_s
        self.path = commit.partition_dir(root, LOCKS, model_id) + ".json"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "Lease":
        if self._thread is None:  # not acquired yet
            self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def record(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(),
                "heartbeat": time.time()}

    def acquire(self) -> None:
        for attempt in range(2):
            if _create_exclusive(self.fs, self.path, json.dumps(self.record()).encode()):
                self._thread = threading.Thread(target=self._beat, daemon=True,
                                                name="maskray-lease")
                self._thread.start()
                return
            holder = self._read()
            age = time.time() - float(holder.get("heartbeat", 0))
            if holder and age <= self.stale_s and not _dead_here(holder):
                raise LeaseHeld(f"run {holder.get('run_id')} on {holder.get('host')} is writing "
                                f"this output for this model (heartbeat {age:.0f} s ago); "
                                "nothing to do", holder)
            log.warning("taking over the lease of run %s (killed: no heartbeat for %.0f s, or "
                        "its process on this host is gone)", holder.get("run_id", "?"), age)
            self._remove_if(holder)
        raise LeaseHeld("another run took the lease at the same moment; nothing to do", {})

    def release(self) -> None:
        """Stop the heartbeat and delete the lease. Never raises: a run ending because the store
        went away cannot delete it either, and its own error is the one to report; the lease
        then goes stale (or is taken over at once from this host once the process is gone)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            holder = self._read()
            if holder.get("run_id") == self.run_id:
                self._remove_if(holder)
        except Exception as exc:  # noqa: BLE001 - see the docstring
            log.warning("could not release the output lease (%s); it expires in %.0f s",
                        exc, self.stale_s)

    def _beat(self) -> None:
        while not self._stop.wait(self.stale_s / 4):
            try:
                if self._read().get("run_id") != self.run_id:
                    log.error("lost the output lease to another run; finishing this shard")
                    return
                self.fs.pipe_file(self.path, json.dumps(self.record()).encode())
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried next period
                log.warning("lease heartbeat failed: %s", exc)

    def _read(self) -> dict[str, Any]:
        try:
            return json.loads(self.fs.cat_file(self.path))
        except (FileNotFoundError, ValueError):
            return {}

    def _remove_if(self, holder: dict[str, Any]) -> None:
        try:
            if self._read() == holder:
                self.fs.rm(self.path)
        except FileNotFoundError:
            pass


def _dead_here(holder: dict[str, Any]) -> bool:
    """Whether the holder ran on this host and its process is gone (a killed driver's lease need
    not wait out `stale_s` when it is rerun on the same machine)."""
    import psutil

    try:
        return holder.get("host") == socket.gethostname() and not psutil.pid_exists(
            int(holder.get("pid", -1)))
    except (TypeError, ValueError):
        return False


def _create_exclusive(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> bool:
    """Create `path` holding `data` unless it exists; True when this call created it."""
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    if isinstance(fs, LocalFileSystem):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    try:
        fs.pipe_file(path, data, mode="create")  # s3fs: a conditional PUT (If-None-Match: *)
    except FileExistsError:
        return False
    except OSError as exc:  # 412 Precondition Failed reaches s3fs's caller as EINVAL
        if "pre-condition" in str(exc).lower() or "precondition" in str(exc).lower():
            return False
        raise
    except TypeError:  # a filesystem without exclusive create: best effort
        if fs.exists(path):
            return False
        fs.pipe_file(path, data)
    return True
