"""List the scenes of an input: a directory, a glob, a .txt list file, or one image file.

Adapters ring: filesystem I/O only, no Ray. Every scene gets a stable `scene_id`, its path
relative to the input root with forward slashes (DESIGN.md), so the same archive lists the same
ids on every run and machine. The result is sorted by scene_id: deterministic.

- directory: every file below it, recursively, whose extension is one of IMAGE_EXTENSIONS
  (case-insensitive). Names starting with '.' are skipped (dotfiles, macOS '._x.tif' forks,
  '.git'), as pyarrow's dataset discovery does. A symlinked directory is followed when it
  leads outside the input (inside, it is an alias or a loop), each physical directory once, so
  a symlink loop ends the walk instead of hanging it.
- glob: the leading components without '*', '?' or '[' are the root; '**' matches any number of
  directories; matches are filtered by extension like a directory.
- list file (.txt): one path per line, relative to the list file's directory; blank lines and
  '#' comments skipped. Every listed path is kept, whatever its extension, since the user named
  it; a missing file is kept too (size and mtime None) and becomes an error row when opened.

Unsafe names are listed but *refused* (`SceneRef.refused` says why): they become `bad_key`
error rows and are never opened, so a run over an archive holding them completes and says
what it left out. Unsafe: a list entry that escapes the root ('..' past it, an absolute path
outside it, a URI), and any name whose relative part has an empty, '.' or '..' segment (a
leading '/', '//'), a backslash, a control character such as NUL, or bytes that are not UTF-8.
GDAL and fsspec normalise such names, so they could read an object other than the one listed.
A refused scene's id is its name with those characters escaped (`\\x00`): printable, stable.

Object storage (s3:// and any fsspec URI, settings from pipeline/storage.py): a prefix is listed
recursively (one paginated LIST, no per-object HEAD), a glob with fsspec's glob, a list file is
read from the store with entries relative to its folder. Remote refs carry the object's ETag
beside size and mtime, so a replaced object is seen as changed.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator

from pipeline.errors import UsageError

IMAGE_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
LIST_FILE_EXTENSION = ".txt"
_GLOB_CHARS = frozenset("*?[")

log = logging.getLogger(__name__)


class InputError(UsageError):
    """An input that can't be listed: missing, unsupported scheme, or a key outside the root."""


@dataclass(frozen=True)
class SceneRef:
    """One scene to process.

    scene_id: path relative to the input root, '/'-separated, never absolute, never '..'.
    uri: absolute local path (symlinks kept as listed), or the object's full URI
        (s3://bucket/key), that `raster_io.open_scene` opens.
    size: bytes, or None when the file can't be stat'ed (listed but missing, broken symlink).
    mtime: modification time, seconds since the epoch, or None like size.
    etag: the object's ETag (quotes stripped) on object storage; None for local files.
    refused: why the name is unsafe (then the scene is an error row, never opened), else None.
    """

    scene_id: str
    uri: str
    size: int | None
    mtime: float | None
    etag: str | None = None
    refused: str | None = None


def list_scenes(input_uri: str) -> list[SceneRef]:
    """The scenes of `input_uri` (directory, glob, .txt list or image file), sorted by
    scene_id. Raises InputError (one line) when the input can't be listed."""
    path = input_uri[len("file://"):] if input_uri.startswith("file://") else input_uri
    if "://" in path:
        return _sorted_unique(_list_remote(input_uri))
    if os.path.isdir(path):  # an existing path is literal, even with '[' in its name
        refs = [_ref(rel, full) for rel, full in _walk_files(Path(path)) if _is_image(rel)]
    elif os.path.isfile(path) and path.lower().endswith(LIST_FILE_EXTENSION):
        refs = _list_file(Path(path))
    elif os.path.isfile(path):
        refs = [_ref(os.path.basename(path), Path(path))]
    elif _GLOB_CHARS & set(path):
        refs = _list_glob(path)
    else:
        raise InputError(f"input not found: {input_uri}")
    return _sorted_unique(refs)


def _list_remote(uri: str) -> list[SceneRef]:
    from pipeline import storage

    fs, path = storage.filesystem(uri)
    protocol = uri.split("://", 1)[0]
    path = path.rstrip("/")
    try:
        if _GLOB_CHARS & set(path):
            root = path[:min(path.find(c) for c in _GLOB_CHARS if c in path)].rsplit("/", 1)[0]
            found = fs.glob(path, detail=True)
        elif path.lower().endswith(LIST_FILE_EXTENSION):
            return _list_remote_file(fs, protocol, path)
        else:
            root = path
            found = fs.find(path, detail=True)
            if not found and fs.isfile(path):  # one object named directly
                root, found = path.rsplit("/", 1)[0], {path: fs.info(path)}
    except Exception as exc:  # noqa: BLE001 - one line naming the input, whatever the backend
        raise storage.storage_error(exc, uri) from None
    if not found:
        raise InputError(f"input not found or empty: {uri}")
    refs = []
    for key, info in found.items():
        if info.get("type") == "directory":
            continue
        # Exactly one '/' after the root: "in//a.tif" is the key "/a.tif" below "in", not "a.tif".
        rel = key[len(root) + 1:] if key.startswith(root + "/") else key[len(root):]
        if not _is_image(rel):
            continue
        ref = _remote_ref(rel, f"{protocol}://{key}", info)
        reason = unsafe_reason(rel)
        if reason is not None:  # before the hidden-name rule, which '..' and '.' would pass
            refs.append(_refused(ref, reason))
        elif not any(part.startswith(".") for part in rel.split("/")):
            refs.append(ref)
    return refs


def _list_remote_file(fs, protocol: str, path: str) -> list[SceneRef]:
    root = path.rsplit("/", 1)[0]
    text = fs.cat_file(path).decode("utf-8", errors="replace")
    refs = []
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        reason = ("a URI, not a key relative to the list file's folder" if "://" in entry
                  else unsafe_reason(entry))
        if reason is not None:
            refs.append(_refused(SceneRef(entry, "", None, None), reason))
            continue
        key = f"{root}/{entry}"
        try:
            info = fs.info(key)
        except FileNotFoundError:
            info = {}  # kept: becomes a not_found error row, like a missing local file
        refs.append(_remote_ref(entry, f"{protocol}://{key}", info))
    return refs


def unsafe_reason(rel: str) -> str | None:
    """Why a relative name is not a safe scene id ('/'-separated), or None when it is."""
    if not _is_utf8(rel):
        return "the name is not valid UTF-8"
    if not rel.isprintable():
        return "the name holds a control character (e.g. NUL or a newline)"
    if "\\" in rel:
        return "the name holds a backslash"
    if rel.startswith("/"):
        return "the name is absolute (a leading '/')"
    if any(part in ("", ".", "..") for part in rel.split("/")):
        return "the name has an empty, '.' or '..' path segment"
    return None


def _refused(ref: SceneRef, reason: str) -> SceneRef:
    """`ref` as a refused scene: an escaped, printable id and no uri to open."""
    scene_id = ref.scene_id.encode("unicode_escape", "backslashreplace").decode("ascii")
    log.warning("refusing scene %s: %s", scene_id, reason)
    return SceneRef(scene_id, "", ref.size, ref.mtime, ref.etag, refused=f"unsafe name: {reason}")


def _remote_ref(scene_id: str, uri: str, info: dict) -> SceneRef:
    size = info.get("size")
    modified = info.get("LastModified") or info.get("mtime") or info.get("last_modified")
    mtime = modified.timestamp() if hasattr(modified, "timestamp") else modified
    etag = info.get("ETag") or info.get("etag")
    return SceneRef(scene_id=scene_id, uri=uri, size=None if size is None else int(size),
                    mtime=None if mtime is None else float(mtime),
                    etag=str(etag).strip('"') if etag else None)


def _list_glob(pattern: str) -> list[SceneRef]:
    parts = PurePosixPath(pattern).parts
    magic_at = next(i for i, part in enumerate(parts) if _GLOB_CHARS & set(part))
    root = Path(*parts[:magic_at]) if magic_at else Path(".")
    segments = parts[magic_at:]
    if ".." in segments:
        raise InputError(f"glob {pattern!r} may not use '..' after its first wildcard")
    if not root.is_dir():
        raise InputError(f"input not found: {root} (root of glob {pattern!r})")
    return [
        _ref(rel, full)
        for rel, full in _walk_files(root)
        if _is_image(rel) and _match_segments(rel.split("/"), segments)
    ]


def _list_file(list_path: Path) -> list[SceneRef]:
    root = list_path.parent
    try:
        lines = list_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read list file {list_path}: {exc}") from None
    refs = []
    for number, line in enumerate(lines, start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if "://" in entry:
            refs.append(_refused(SceneRef(entry, "", None, None),
                                 "a URI; a list file names local paths"))
            continue
        if "\\" in entry or not entry.isprintable():
            refs.append(_refused(SceneRef(entry, "", None, None), unsafe_reason(entry) or ""))
            continue
        full = os.path.normpath(os.path.join(root, entry))  # lexical: '..' can't hide
        rel = os.path.relpath(full, os.path.normpath(root) or ".")
        if rel == os.curdir or rel == os.pardir or rel.startswith(os.pardir + os.sep):
            refs.append(_refused(SceneRef(entry, "", None, None),
                                 "outside the list file's directory"))
            continue
        refs.append(_ref(rel.replace(os.sep, "/"), Path(full)))
    return refs


def _walk_files(root: Path) -> Iterator[tuple[str, Path]]:
    """(relative '/'-path, path) of every non-hidden file below `root`, depth-first in name
    order. A symlinked directory is followed only when it leads outside `root` (inside, it is
    an alias of a tree listed under its real path, or a loop), and every physical directory
    (device, inode) is entered once, so loops outside the root end too."""
    real_root = os.path.realpath(root)
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[str, Path]] = [("", root)]
    while stack:
        rel_dir, directory = stack.pop()
        try:
            stat = os.stat(directory)
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except OSError as exc:
            log.warning("skipping directory %s: %s", directory, exc.strerror or exc)
            continue
        if (stat.st_dev, stat.st_ino) in seen:
            log.info("skipping %s: directory already listed (symlink loop)", directory)
            continue
        seen.add((stat.st_dev, stat.st_ino))
        subdirs = []
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if entry.name.startswith(".") or _is_alias_inside(entry, real_root):
                continue
            if _is_dir(entry):
                subdirs.append((rel, Path(entry.path)))
            else:
                yield rel, Path(entry.path)
        stack.extend(reversed(subdirs))  # pop() then visits them in name order


def _is_alias_inside(entry: os.DirEntry, real_root: str) -> bool:
    if not (entry.is_symlink() and _is_dir(entry)):
        return False
    target = os.path.realpath(entry.path)
    return target == real_root or target.startswith(real_root.rstrip(os.sep) + os.sep)


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=True)
    except OSError:  # e.g. a symlink whose resolution loops (ELOOP): treat as a (bad) file
        return False


def _match_segments(parts: list[str], segments: tuple[str, ...]) -> bool:
    """Whether path components match glob segments; '**' matches zero or more components."""
    if not segments:
        return not parts
    if segments[0] == "**":
        return any(_match_segments(parts[i:], segments[1:]) for i in range(len(parts) + 1))
    return (
        bool(parts)
        and fnmatch.fnmatchcase(parts[0], segments[0])
        and _match_segments(parts[1:], segments[1:])
    )


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")  # undecodable bytes arrive as lone surrogates, which fail here
        return True
    except UnicodeEncodeError:
        return False


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _ref(scene_id: str, path: Path) -> SceneRef:
    reason = unsafe_reason(scene_id)
    if reason is not None:  # a file name with a backslash, a control character, non-UTF-8
        return _refused(SceneRef(scene_id, "", None, None), reason)
    try:
        stat = os.stat(path)
        size, mtime = stat.st_size, stat.st_mtime
    except OSError:
        size = mtime = None  # listed but unreadable: becomes an error row when opened
    return SceneRef(scene_id=scene_id, uri=os.path.abspath(path), size=size, mtime=mtime)


def _sorted_unique(refs: list[SceneRef]) -> list[SceneRef]:
    """Sorted by scene_id; a repeated id (a list file naming a scene twice) is kept once."""
    unique: dict[str, SceneRef] = {}
    for ref in refs:
        if ref.scene_id in unique:
            log.warning("scene %s listed more than once; processing it once", ref.scene_id)
            continue
        unique[ref.scene_id] = ref
    return [unique[key] for key in sorted(unique)]
