"""Scene listing: directories, globs, list files; stable ids; escapes refused; loops end."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.errors import UsageError
from pipeline.scenes import InputError, SceneRef, list_scenes


def touch(root: Path, *names: str, content: bytes = b"x") -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


@pytest.fixture
def archive(tmp_path) -> Path:
    root = tmp_path / "archive"
    touch(root, "b.tif", "a.TIFF", "c.PNG", "sub/d.jpg", "sub/deeper/e.JPEG", "sub/f.tif",
          "notes.txt", "sub/labels.geojson", "sub/x.tif.aux.xml", ".hidden.tif", "._b.tif",
          ".cache/g.tif")
    return root


def ids(refs: list[SceneRef]) -> list[str]:
    return [ref.scene_id for ref in refs]


def test_directory_is_listed_recursively_sorted_by_extension(archive):
    refs = list_scenes(str(archive))
    assert ids(refs) == ["a.TIFF", "b.tif", "c.PNG", "sub/d.jpg", "sub/deeper/e.JPEG",
                         "sub/f.tif"]
    first = refs[0]
    assert first.uri == str(archive / "a.TIFF") and os.path.isabs(first.uri)
    assert first.size == 1 and first.mtime == pytest.approx((archive / "a.TIFF").stat().st_mtime)
    assert list_scenes(str(archive)) == refs  # deterministic
    assert list_scenes(f"file://{archive}") == refs


def test_empty_directory_lists_nothing(tmp_path):
    assert list_scenes(str(tmp_path)) == []


def test_single_file(archive):
    (ref,) = list_scenes(str(archive / "sub" / "d.jpg"))
    assert ref.scene_id == "d.jpg" and ref.uri == str(archive / "sub" / "d.jpg")


def test_glob_root_is_the_part_before_the_first_wildcard(archive):
    assert ids(list_scenes(f"{archive}/**/*.tif")) == ["b.tif", "sub/f.tif"]
    assert ids(list_scenes(f"{archive}/sub/*")) == ["d.jpg", "f.tif"]  # root: archive/sub
    assert ids(list_scenes(f"{archive}/s?b/**")) == ["sub/d.jpg", "sub/deeper/e.JPEG",
                                                      "sub/f.tif"]
    assert ids(list_scenes(f"{archive}/[ab].*")) == ["a.TIFF", "b.tif"]
    assert list_scenes(f"{archive}/*.none") == []


def test_relative_glob(archive, monkeypatch):
    monkeypatch.chdir(archive)
    assert ids(list_scenes("*.tif")) == ["b.tif"]
    monkeypatch.chdir(archive.parent)
    assert ids(list_scenes("archive/*/*.tif")) == ["sub/f.tif"]


def test_glob_may_not_climb_out(archive):
    with pytest.raises(InputError, match=r"'\.\.'"):
        list_scenes(f"{archive}/*/../../*.tif")


def test_list_file_paths_are_relative_to_it(archive):
    listing = archive / "scenes.txt"
    listing.write_text("# scenes for tonight\n\nsub/f.tif\n  b.tif  \nsub/../c.PNG\n"
                       "missing.tif\nsub/labels.geojson\nb.tif\n")
    refs = list_scenes(str(listing))
    assert ids(refs) == ["b.tif", "c.PNG", "missing.tif", "sub/f.tif", "sub/labels.geojson"]
    missing = refs[2]
    assert missing.size is None and missing.mtime is None  # an error row when opened
    assert missing.uri == str(archive / "missing.tif")


@pytest.mark.parametrize("line", ["../outside.tif", "sub/../../outside.tif", "/etc/passwd",
                                  "s3://bucket/x.tif"])
def test_list_file_refuses_keys_outside_its_directory(archive, line):
    """Refused, not raised: the entry becomes a bad_key error row and is never opened."""
    listing = archive / "scenes.txt"
    listing.write_text(f"b.tif\n{line}\n")
    refs = {r.scene_id: r for r in list_scenes(str(listing))}
    assert refs["b.tif"].refused is None
    assert refs[line].uri == "" and refs[line].refused.startswith("unsafe name:")


def test_absolute_list_entry_inside_the_root_is_fine(archive):
    listing = archive / "scenes.txt"
    listing.write_text(f"{archive / 'sub' / 'f.tif'}\n")
    assert ids(list_scenes(str(listing))) == ["sub/f.tif"]


def test_symlink_loops_terminate_and_aliases_are_not_listed_twice(archive, tmp_path):
    os.symlink("..", archive / "sub" / "up")  # sub/up -> archive: a loop
    os.symlink(".", archive / "sub" / "self")  # a loop onto itself
    os.symlink(archive / "sub", archive / "again")  # an alias of a listed tree: skipped
    os.symlink(archive / "sub" / "f.tif", archive / "linked.tif")  # a file link counts
    os.symlink(archive / "gone.tif", archive / "broken.tif")  # kept: an error row later
    other = tmp_path / "other"
    touch(other, "z.tif")
    os.symlink(".", other / "loop")  # a loop outside the root
    os.symlink(other, archive / "mounted")  # a directory elsewhere is followed
    refs = list_scenes(str(archive))
    assert ids(refs) == ["a.TIFF", "b.tif", "broken.tif", "c.PNG", "linked.tif",
                         "mounted/z.tif", "sub/d.jpg", "sub/deeper/e.JPEG", "sub/f.tif"]
    assert refs[2].size is None
    assert ids(list_scenes(f"{archive}/**/*.tif")) == ["b.tif", "broken.tif", "linked.tif",
                                                       "mounted/z.tif", "sub/f.tif"]


def test_unsupported_or_missing_inputs(tmp_path):
    with pytest.raises(InputError, match="not found"):
        list_scenes(str(tmp_path / "nope"))
    with pytest.raises(InputError, match="not found"):
        list_scenes(str(tmp_path / "nope" / "*.tif"))


def test_existing_path_with_glob_characters_is_literal(tmp_path):
    root = tmp_path / "scenes[2024]"
    touch(root, "a.tif")
    assert ids(list_scenes(str(root))) == ["a.tif"]


def test_names_that_cannot_be_scene_ids_are_refused_with_printable_ids(tmp_path):
    touch(tmp_path, "ok.tif")
    (tmp_path / "new\nline.tif").write_bytes(b"x")
    os.close(os.open(os.fsencode(tmp_path) + b"/bad\xff.tif", os.O_CREAT | os.O_WRONLY))
    refs = list_scenes(str(tmp_path))
    assert ids(refs) == ["bad\\udcff.tif", "new\\nline.tif", "ok.tif"]
    assert [bool(r.refused) for r in refs] == [True, True, False]
