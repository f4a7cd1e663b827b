"""Sources: folders, tar / compressed tar archives, the embedded demo images, real LFW."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from occsynth.io import cache as cache_mod
from occsynth.io.images import ImageLoadError, decode_image
from occsynth.sources import SourceError, SourceItem, open_source
from occsynth.sources import tar as sources_mod
from occsynth.sources.embedded import EMBEDDED_IMAGES, EmbeddedSource
from occsynth.sources.folder import FolderSource
from occsynth.sources.tar import TarSource


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OCCSYNTH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _png(color, size=(8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


# identity folders, a stray text file and a .DS_Store (items that fail later), a root file beside
# the identity folders (ignored, listed in source.ignored: not an image of anyone)
FILES = {
    "Alice/Alice_0001.png": _png((255, 0, 0)),
    "Alice/Alice_0002.png": _png((0, 255, 0)),
    "Bob/Bob_0001.png": _png((0, 0, 255), (10, 4)),
    "Bob/notes.txt": b"not an image\n",
    "Bob/.DS_Store": b"\x00\x00\x00\x01Bud1",
    "Carol/2019/Carol_0001.png": _png((9, 9, 9)),
    "loose_photo.png": _png((1, 2, 3)),
}
IGNORED = ("loose_photo.png",)
ITEMS = {k: v for k, v in FILES.items() if k not in IGNORED}
EXPECTED_IDS = sorted(ITEMS)
EXPECTED_IDENTITY = {
    "Alice/Alice_0001.png": "Alice",
    "Alice/Alice_0002.png": "Alice",
    "Bob/Bob_0001.png": "Bob",
    "Bob/notes.txt": "Bob",
    "Bob/.DS_Store": "Bob",
    "Carol/2019/Carol_0001.png": "Carol",
}


def _write_tree(root: Path, files: dict, order=None) -> Path:
    for rel in order or files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(files[rel])
    return root


def _write_tar(path: Path, files: dict, *, prefix: str = "", order=None, compress=False) -> Path:
    mode = "w:gz" if compress else "w"
    with tarfile.open(path, mode) as tf:
        for rel in order or files:
            info = tarfile.TarInfo(prefix + rel)
            info.size = len(files[rel])
            info.mtime = 0
            tf.addfile(info, io.BytesIO(files[rel]))
    return path


def _check_listing(source, files=ITEMS) -> None:
    items = source.items()
    assert [i.sample_id for i in items] == sorted(files)
    for item in items:
        assert item.identity == EXPECTED_IDENTITY[item.sample_id]
        assert source.read(item) == files[item.sample_id]
        assert item.size == len(files[item.sample_id])


# ------------------------------------------------------------------------------ folders


def test_folder_layout_and_reading(tmp_path):
    source = open_source(_write_tree(tmp_path / "data", FILES))
    assert isinstance(source, FolderSource) and source.kind == "folder"
    _check_listing(source)
    assert source.identities() == ["Alice", "Bob", "Carol"]
    assert source.ignored == IGNORED and source.manifest_entry()["ignored"] == list(IGNORED)
    assert source.root == str((tmp_path / "data").absolute())
    assert "6 files" in source.description and "1 top-level file(s) beside the identity folders ignored" in (
        source.description
    )


def test_bad_files_are_items_that_fail_to_decode(tmp_path):
    source = open_source(_write_tree(tmp_path / "data", FILES))
    by_id = {i.sample_id: i for i in source.items()}
    for sample_id in ("Bob/notes.txt", "Bob/.DS_Store"):
        with pytest.raises(ImageLoadError) as info:
            decode_image(source.read(by_id[sample_id]))
        assert info.value.stage == "decode"


def test_empty_file_is_an_item_with_a_read_error(tmp_path):
    root = _write_tree(tmp_path / "data", {"A/a.png": _png((1, 1, 1)), "A/empty.jpg": b""})
    source = open_source(root)
    empty = [i for i in source.items() if i.sample_id == "A/empty.jpg"][0]
    with pytest.raises(ImageLoadError) as info:
        source.read(empty)
    assert info.value.stage == "read" and info.value.reason == "empty file (0 bytes)"


def test_order_does_not_depend_on_creation_order(tmp_path):
    a = open_source(_write_tree(tmp_path / "a", FILES, order=sorted(FILES)))
    b = open_source(_write_tree(tmp_path / "b", FILES, order=sorted(FILES, reverse=True)))
    assert [i.sample_id for i in a.items()] == [i.sample_id for i in b.items()]
    assert a.fingerprint() == b.fingerprint()


def test_fingerprint_follows_content_listing(tmp_path):
    root = _write_tree(tmp_path / "data", FILES)
    before = open_source(root).fingerprint()
    (root / "Alice" / "Alice_0003.png").write_bytes(_png((5, 5, 5)))
    assert open_source(root).fingerprint() != before


def test_wrapper_folder_is_stripped(tmp_path):
    source = open_source(_write_tree(tmp_path / "data" / "lfw-wrapper", FILES).parent)
    _check_listing(source)
    assert "wrapper folder 'lfw-wrapper/' stripped" in source.description
    assert all(i.member.startswith("lfw-wrapper/") for i in source.items())


def test_single_identity_folder_is_not_mistaken_for_a_wrapper(tmp_path):
    files = {"Bill_Gates/Bill_Gates_0001.png": _png((1, 1, 1)), "Bill_Gates/Bill_Gates_0002.png": _png((2, 2, 2))}
    source = open_source(_write_tree(tmp_path / "data", files))
    assert source.identities() == ["Bill_Gates"]
    assert [i.sample_id for i in source.items()] == sorted(files)


def test_flat_folder_uses_file_stems_as_identities(tmp_path):
    files = {"x1.png": _png((1, 1, 1)), "y2.jpg.png": _png((2, 2, 2))}
    source = open_source(_write_tree(tmp_path / "flat", files))
    assert [(i.sample_id, i.identity) for i in source.items()] == [("x1.png", "x1"), ("y2.jpg.png", "y2.jpg")]


def test_symlinks_to_files_are_followed_and_broken_ones_recorded(tmp_path):
    root = _write_tree(tmp_path / "data", {"A/a.png": _png((1, 1, 1))})
    outside = tmp_path / "outside.png"
    outside.write_bytes(_png((4, 4, 4)))
    (root / "A" / "link.png").symlink_to(outside)
    (root / "A" / "dangling.png").symlink_to(tmp_path / "gone.png")
    source = open_source(root)
    by_id = {i.sample_id: i for i in source.items()}
    assert set(by_id) == {"A/a.png", "A/link.png", "A/dangling.png"}
    assert source.read(by_id["A/link.png"]) == outside.read_bytes()
    with pytest.raises(ImageLoadError) as info:
        source.read(by_id["A/dangling.png"])
    assert info.value.stage == "read" and "broken symbolic link" in info.value.reason


def test_symlinked_identity_folder_is_followed(tmp_path):
    _write_tree(tmp_path / "elsewhere" / "Zed", {"z.png": _png((1, 1, 1))})
    root = _write_tree(tmp_path / "data", {"A/a.png": _png((1, 1, 1))})
    (root / "Zed").symlink_to(tmp_path / "elsewhere" / "Zed", target_is_directory=True)
    assert [i.sample_id for i in open_source(root).items()] == ["A/a.png", "Zed/z.png"]


def test_symlink_loop_is_refused(tmp_path):
    root = _write_tree(tmp_path / "data", {"A/a.png": _png((1, 1, 1))})
    (root / "A" / "again").symlink_to(root, target_is_directory=True)
    with pytest.raises(SourceError, match="loop"):
        open_source(root)


def test_self_referencing_symlink_is_refused(tmp_path):
    root = _write_tree(tmp_path / "data", {"A/a.png": _png((1, 1, 1))})
    (root / "A" / "me.png").symlink_to(root / "A" / "me.png")
    with pytest.raises(SourceError, match="loop"):
        open_source(root)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this system")
def test_named_pipe_is_an_item_that_fails_without_blocking(tmp_path):
    root = _write_tree(tmp_path / "data", {"A/a.png": _png((1, 1, 1))})
    os.mkfifo(root / "A" / "pipe")
    source = open_source(root)
    pipe = [i for i in source.items() if i.sample_id == "A/pipe"][0]
    with pytest.raises(ImageLoadError) as info:
        source.read(pipe)
    assert info.value.stage == "read" and "named pipe" in info.value.reason


def test_missing_and_empty_sources_are_errors(tmp_path):
    with pytest.raises(SourceError, match="nope"):
        open_source(tmp_path / "nope")
    (tmp_path / "empty" / "Alice").mkdir(parents=True)
    with pytest.raises(SourceError, match="no files"):
        open_source(tmp_path / "empty")


def test_items_from_another_source_are_refused(tmp_path):
    a = open_source(_write_tree(tmp_path / "a", {"A/a.png": _png((1, 1, 1))}))
    b = open_source(_write_tree(tmp_path / "b", {"A/a.png": _png((2, 2, 2)), "B/b.png": _png((3, 3, 3))}))
    with pytest.raises(ValueError, match="does not belong"):
        a.read(b.items()[0])


# ------------------------------------------------------------------------------ archives


@pytest.mark.parametrize("compress", [False, True])
def test_tar_layout_matches_the_folder(tmp_path, compress):
    name = "data.tgz" if compress else "data.tar"
    archive = _write_tar(tmp_path / name, FILES, prefix="wrap/", order=sorted(FILES, reverse=True), compress=compress)
    source = open_source(archive)
    assert isinstance(source, TarSource) and source.kind == "tar"
    _check_listing(source)
    assert "wrapper folder 'wrap/' stripped" in source.description
    assert source.ignored == ("wrap/loose_photo.png",)  # beside the identity folders inside the wrapper
    folder = open_source(_write_tree(tmp_path / "folder", FILES))
    assert source.fingerprint() == folder.fingerprint()  # same names and sizes, same fingerprint


def test_tar_is_read_in_place_by_offset(tmp_path):
    archive = _write_tar(tmp_path / "data.tar", FILES)
    source = open_source(archive)
    assert source.tar_path == archive.absolute()
    raw = archive.read_bytes()
    for item in source.items():
        assert raw[item.offset : item.offset + item.size] == FILES[item.sample_id]


def test_tgz_is_decompressed_once_into_the_cache(tmp_path, _tmp_cache, monkeypatch):
    archive = _write_tar(tmp_path / "data.tar.gz", FILES, compress=True)
    first = open_source(archive)
    cached = sorted(p.name for p in _tmp_cache.iterdir())
    assert [n.rsplit(".", 1)[-1] for n in cached] == ["json", "tar"]
    assert first.tar_path.parent == _tmp_cache and first.tar_path.stat().st_size > archive.stat().st_size

    _forbid_decompression(monkeypatch)
    second = open_source(archive)
    assert second.tar_path == first.tar_path and second.items() == first.items()
    _check_listing(second)


def test_cache_dir_argument_wins(tmp_path, _tmp_cache):
    archive = _write_tar(tmp_path / "data.tgz", FILES, compress=True)
    source = open_source(archive, cache_dir=tmp_path / "mine")
    assert source.tar_path.parent == tmp_path / "mine"
    assert not _tmp_cache.exists()


def test_stale_temp_files_do_not_break_the_cache(tmp_path, _tmp_cache):
    archive = _write_tar(tmp_path / "data.tgz", FILES, compress=True)
    key = sources_mod._cache_key(archive.absolute(), archive.stat())
    _tmp_cache.mkdir(parents=True)
    # what a run killed mid-write leaves: partial files under temporary names
    fresh = _tmp_cache / f".{key}.tar.4242.tmp"
    old = _tmp_cache / f".{key}.tar.4243.tmp"
    old_index = _tmp_cache / f".{key}.index.json.4243.tmp"
    for junk in (fresh, old, old_index):
        junk.write_bytes(b"partial garbage")
    hours_ago = time.time() - 7200
    os.utime(old, (hours_ago, hours_ago))
    os.utime(old_index, (hours_ago, hours_ago))
    _check_listing(open_source(archive))
    assert fresh.exists()  # may belong to a run still writing
    assert not old.exists() and not old_index.exists()
    _check_listing(open_source(archive))


def _forbid_decompression(monkeypatch):
    def no_decompression(*args, **kwargs):
        raise AssertionError("decompressed again although the cached copy is sound")

    monkeypatch.setitem(sources_mod._OPENERS, "gzip", no_decompression)


def test_damaged_or_missing_index_is_rebuilt_from_the_copy(tmp_path, _tmp_cache, monkeypatch):
    archive = _write_tar(tmp_path / "data.tgz", FILES, compress=True)
    open_source(archive)
    index = next(_tmp_cache.glob("*.index.json"))
    _forbid_decompression(monkeypatch)
    index.write_text("{not json")
    _check_listing(open_source(archive))
    index.unlink()  # as if killed between renaming the copy and writing its index
    _check_listing(open_source(archive))
    assert index.is_file()


def test_not_a_tar_inside_gzip_leaves_no_cache(tmp_path, _tmp_cache):
    archive = tmp_path / "photo.jpg.gz"
    archive.write_bytes(gzip.compress(_png((1, 1, 1)) * 20))
    with pytest.raises(SourceError, match=r"photo\.jpg\.gz: not a readable tar"):
        open_source(archive)
    assert list(_tmp_cache.iterdir()) == []


def test_changed_archive_gets_a_new_cache_entry(tmp_path, _tmp_cache):
    archive = _write_tar(tmp_path / "data.tgz", FILES, compress=True)
    open_source(archive)
    changed = dict(FILES, **{"Dan/Dan_0001.png": _png((7, 7, 7))})
    _write_tar(archive, changed, compress=True)
    os.utime(archive, ns=(archive.stat().st_atime_ns, archive.stat().st_mtime_ns + 10**9))
    source = open_source(archive)
    assert "Dan/Dan_0001.png" in {i.sample_id for i in source.items()}
    assert len(list(_tmp_cache.glob("*.tar"))) == 2


def test_tar_links_are_resolved(tmp_path):
    archive = tmp_path / "links.tar"
    data = _png((3, 3, 3))
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("A/a.png")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
        for name, kind, target in (
            ("A/hard.png", tarfile.LNKTYPE, "A/a.png"),
            ("B/sym.png", tarfile.SYMTYPE, "../A/a.png"),
            ("B/broken.png", tarfile.SYMTYPE, "missing.png"),
        ):
            link = tarfile.TarInfo(name)
            link.type, link.linkname = kind, target
            tf.addfile(link)
    source = open_source(archive)
    by_id = {i.sample_id: i for i in source.items()}
    assert set(by_id) == {"A/a.png", "A/hard.png", "B/sym.png", "B/broken.png"}
    assert source.read(by_id["A/hard.png"]) == data and source.read(by_id["B/sym.png"]) == data
    with pytest.raises(ImageLoadError) as info:
        source.read(by_id["B/broken.png"])
    assert info.value.stage == "read" and "broken link" in info.value.reason


def test_duplicate_tar_member_is_an_error(tmp_path):
    archive = _write_tar(tmp_path / "dup.tar", {"A/a.png": b"1"}, order=["A/a.png", "A/a.png"])
    with pytest.raises(SourceError, match="more than once"):
        open_source(archive)


def test_corrupt_archives_are_named(tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(np.random.default_rng(0).integers(1, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(SourceError, match="junk.tar"):
        open_source(junk)

    good = _write_tar(tmp_path / "good.tgz", FILES, compress=True).read_bytes()
    cut = tmp_path / "cut.tgz"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(SourceError, match=r"cut\.tgz.*corrupt gzip"):
        open_source(cut)

    plain = _write_tar(tmp_path / "plain.tar", {"A/big.bin": bytes(5000)}).read_bytes()
    short = tmp_path / "short.tar"
    short.write_bytes(plain[:2048])
    with pytest.raises(SourceError, match="short.tar"):
        open_source(short)


def test_zip_is_refused_clearly(tmp_path):
    archive = tmp_path / "faces.zip"
    archive.write_bytes(b"PK\x03\x04" + bytes(60))
    with pytest.raises(SourceError, match="zip archives are not supported"):
        open_source(archive)


def test_failed_decompression_leaves_no_cache(tmp_path, _tmp_cache):
    good = _write_tar(tmp_path / "good.tgz", FILES, compress=True).read_bytes()
    cut = tmp_path / "cut.tgz"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(SourceError):
        open_source(cut)
    assert list(_tmp_cache.iterdir()) == []


# ------------------------------------------------------------------------------ pickling


def test_items_and_sources_pickle(tmp_path):
    sources = [
        open_source(_write_tree(tmp_path / "folder", FILES)),
        open_source(_write_tar(tmp_path / "d.tar", FILES)),
        open_source(_write_tar(tmp_path / "d.tgz", FILES, compress=True)),
        open_source("embedded"),
    ]
    for source in sources:
        clone = pickle.loads(pickle.dumps(source))
        items = pickle.loads(pickle.dumps(source.items()))
        assert items == source.items() and all(isinstance(i, SourceItem) for i in items)
        assert clone.fingerprint() == source.fingerprint()
        assert clone.read(items[-1]) == source.read(source.items()[-1])


# ------------------------------------------------------------------------------ cache folder


def test_default_cache_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("OCCSYNTH_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_mod.cache_dir() == tmp_path / "home" / ".cache" / "occsynth"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_mod.cache_dir() == tmp_path / "xdg" / "occsynth"
    monkeypatch.setenv("OCCSYNTH_CACHE", str(tmp_path / "env"))
    assert cache_mod.cache_dir() == tmp_path / "env"
    assert cache_mod.cache_dir(tmp_path / "arg") == tmp_path / "arg"


# ------------------------------------------------------------------------------ embedded


def test_embedded_source_holds_four_real_photos():
    source = open_source("embedded")
    assert isinstance(source, EmbeddedSource) and source.kind == "embedded"
    assert [i.sample_id for i in source.items()] == [
        "Eileen_Collins/astronaut.png",
        "Grace_Hopper/grace_hopper.jpg",
        "cameraman/camera.png",
        "no_face_cat/chelsea.png",
    ]
    shapes = {}
    for item in source.items():
        data = source.read(item)
        assert len(data) == item.size == Path(item.member).stat().st_size
        image = decode_image(data)
        shapes[item.identity] = image.shape
        assert image.std() > 20  # a photograph, not a flat placeholder
    assert shapes == {
        "Eileen_Collins": (512, 512, 3),
        "Grace_Hopper": (600, 512, 3),
        "cameraman": (512, 512, 3),
        "no_face_cat": (300, 451, 3),
    }
    grey = decode_image(source.read(source.items()[2]))
    assert (grey[:, :, 0] == grey[:, :, 1]).all() and (grey[:, :, 1] == grey[:, :, 2]).all()
    assert [img.has_face for img in EMBEDDED_IMAGES] == [True, True, True, False]


def test_embedded_missing_file_names_the_package(monkeypatch, tmp_path):
    import occsynth.sources.embedded as embedded

    monkeypatch.setattr(embedded, "_package_dir", lambda package: tmp_path)
    with pytest.raises(SourceError, match="scikit-image"):
        embedded.EmbeddedSource()


# ------------------------------------------------------------------------------ real LFW


@pytest.mark.lfw
def test_real_lfw_archive(lfw_tgz, tmp_path):
    source = open_source(lfw_tgz, cache_dir=tmp_path / "lfw_cache")
    assert len(source) == 13233
    assert len(source.identities()) == 5749
    items = source.items()
    assert items == sorted(items, key=lambda i: i.sample_id)
    by_id = {i.sample_id: i for i in items}
    item = by_id["Aaron_Eckhart/Aaron_Eckhart_0001.jpg"]
    assert item.identity == "Aaron_Eckhart"
    assert item.member == "lfw-deepfunneled/Aaron_Eckhart/Aaron_Eckhart_0001.jpg"
    image = decode_image(source.read(item))
    assert image.shape == (250, 250, 3) and image.std() > 20
    again = open_source(lfw_tgz, cache_dir=tmp_path / "lfw_cache")  # from the cache
    assert again.fingerprint() == source.fingerprint()


# ---------------------------------------------------------------- the plain tar header scan
def _members(tar_path):
    with tarfile.open(tar_path, "r:") as tf:
        return [(m.name, m.type, m.size, m.offset_data, m.isreg(), m.isdir()) for m in tf.getmembers()]


def _scanned(tar_path):
    members = sources_mod._scan_plain(tar_path)
    return None if members is None else [(m.name, m.type, m.size, m.offset_data, m.isreg(), m.isdir()) for m in members]


def _tar_of(path, fmt, entries):
    """entries: (name, bytes | None for a folder)."""
    with tarfile.open(path, "w", format=fmt) as tf:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


PLAIN_ENTRIES = [
    ("A", None),
    ("A/a.png", b"x" * 700),
    ("A/empty.png", b""),
    ("B/b.jpg", b"y" * 512),
    ("C/" + "d" * 90 + "/" + "e" * 60 + ".png", b"z" * 3),  # > 100 chars: ustar's prefix field
    ("Ünïcode/ф.png", b"u" * 1025),
]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT])
def test_plain_tar_scan_reads_what_tarfile_reads(tmp_path, fmt):
    # (GNU tar writes a name over 100 characters as a long-name header: not plain, left out)
    entries = [e for e in PLAIN_ENTRIES if fmt == tarfile.USTAR_FORMAT or len(e[0].encode()) <= 100]
    archive = _tar_of(tmp_path / "plain.tar", fmt, entries)
    scanned = _scanned(archive)
    assert scanned is not None  # read by the scan, not handed to tarfile
    assert scanned == _members(archive)


def test_old_style_folder_with_trailing_slash_is_a_folder(tmp_path):
    archive = _tar_of(tmp_path / "v7.tar", tarfile.USTAR_FORMAT, [("A/a.png", b"1")])
    raw = bytearray(archive.read_bytes())
    header = bytearray(512)  # an AREGTYPE ("\0") member named "B/": old tars' folder
    header[:2] = b"B/"
    header[100:108], header[124:136], header[136:148] = b"0000644\0", b"00000000000\0", b"00000000000\0"
    header[156:157], header[257:265] = b"\0", b"ustar\x0000"
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    raw[1024:1024] = header  # after the first member (header + one data block)
    archive.write_bytes(bytes(raw))
    assert _scanned(archive) == _members(archive)
    assert [m[0] for m in _members(archive) if m[5]] == ["B"]


@pytest.mark.parametrize(
    "case",
    ["pax long name", "gnu long name", "symlink", "hard link", "bad checksum", "empty", "cut header", "base-256 size"],
)
def test_tars_the_scan_does_not_read_go_to_tarfile(tmp_path, case):
    # anything but plain file and folder headers: the scan steps aside and the index is tarfile's
    long = "A/" + "n" * 120 + ".png"
    if case == "pax long name":
        archive = _tar_of(tmp_path / "t.tar", tarfile.PAX_FORMAT, [(long, b"1")])
    elif case == "gnu long name":
        archive = _tar_of(tmp_path / "t.tar", tarfile.GNU_FORMAT, [("B" * 150 + "/x.png", b"1")])
    elif case in ("symlink", "hard link"):
        archive = tmp_path / "t.tar"
        with tarfile.open(archive, "w", format=tarfile.USTAR_FORMAT) as tf:
            info = tarfile.TarInfo("A/a.png")
            info.size = 1
            tf.addfile(info, io.BytesIO(b"1"))
            link = tarfile.TarInfo("A/l.png")
            link.type = tarfile.SYMTYPE if case == "symlink" else tarfile.LNKTYPE
            link.linkname = "a.png" if case == "symlink" else "A/a.png"
            tf.addfile(link)
    else:
        archive = _tar_of(tmp_path / "t.tar", tarfile.USTAR_FORMAT, [("A/a.png", b"1"), ("A/b.png", b"2")])
        raw = bytearray(archive.read_bytes())
        if case == "bad checksum":
            raw[1024] ^= 1  # the second header's name, its checksum unchanged
        elif case == "empty":
            raw = bytearray(10240)
        elif case == "cut header":
            raw = raw[: 1024 + 300]
        elif case == "base-256 size":
            raw[124:136] = b"\x80" + bytes(10) + b"\x01"
            raw[148:156] = b" " * 8
            raw[148:156] = b"%06o\0 " % sum(raw[:512])
        archive.write_bytes(bytes(raw))
    assert sources_mod._scan_plain(archive) is None
    try:
        expected = [e[:3] for e in _index_with_tarfile(archive)]
    except SourceError as exc:  # tarfile refuses it: so does the index, with the same message
        with pytest.raises(SourceError) as got:
            sources_mod._index_tar(archive, archive)
        assert str(got.value) == str(exc)
    else:
        assert [e[:3] for e in sources_mod._index_tar(archive, archive)] == expected


def _index_with_tarfile(archive):
    saved = sources_mod._scan_plain
    sources_mod._scan_plain = lambda path: None
    try:
        return sources_mod._index_tar(archive, archive)
    finally:
        sources_mod._scan_plain = saved


def test_index_of_a_plain_tar_is_the_tarfile_index(tmp_path):
    archive = _tar_of(tmp_path / "plain.tar", tarfile.USTAR_FORMAT, PLAIN_ENTRIES)
    assert sources_mod._index_tar(archive, archive) == _index_with_tarfile(archive)
