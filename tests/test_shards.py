import hashlib
import tarfile

import pytest

from occsynth.io.tar import ShardWriter, iter_shard, sha256_file, split_member


def _write(path, samples):
    writer = ShardWriter(path)
    for key, members in samples:
        writer.write(key, members)
    return writer.commit()


SAMPLES = [
    ("000001", {"png": b"\x89PNG-a", "mask.png": b"m-a", "json": b'{"key":"000001"}'}),
    ("000002", {"png": b"\x89PNG-b", "mask.png": b"m-b", "json": b'{"key":"000002"}', "clean.png": b"c-b"}),
]


def test_split_member_follows_webdataset_rule():
    assert split_member("000123.mask.png") == ("000123", "mask.png")
    assert split_member("dir/000123.json") == ("dir/000123", "json")
    with pytest.raises(ValueError):
        split_member("noext")


def test_same_samples_give_byte_identical_shards(tmp_path):
    a = _write(tmp_path / "a.tar", SAMPLES)
    b = _write(tmp_path / "b.tar", [(k, dict(reversed(list(m.items())))) for k, m in SAMPLES])
    assert a == b == sha256_file(tmp_path / "a.tar")
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    assert hashlib.sha256((tmp_path / "a.tar").read_bytes()).hexdigest() == a


def test_members_have_fixed_metadata_and_round_trip(tmp_path):
    _write(tmp_path / "s.tar", SAMPLES)
    with tarfile.open(tmp_path / "s.tar") as tar:
        infos = tar.getmembers()
    assert all(i.mtime == 0 and i.uid == 0 and i.gid == 0 and i.uname == "" and i.mode == 0o644 for i in infos)
    assert [(k, m) for k, m in iter_shard(tmp_path / "s.tar")] == [(k, dict(m)) for k, m in SAMPLES]


def test_shard_is_invisible_until_commit_and_discarded_on_error(tmp_path):
    final = tmp_path / "00000.tar"
    writer = ShardWriter(final)
    writer.write(*SAMPLES[0])
    assert not final.exists() and writer.tmp_path.exists()
    writer.commit()
    assert final.exists() and not writer.tmp_path.exists()

    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "00001.tar") as w:
            w.write(*SAMPLES[0])
            raise RuntimeError("boom")
    assert not (tmp_path / "00001.tar").exists()
    assert not (tmp_path / "00001.tar.tmp").exists()


def test_bad_keys_are_refused(tmp_path):
    writer = ShardWriter(tmp_path / "x.tar")
    with pytest.raises(ValueError, match="dot"):
        writer.write("a.b", {"png": b""})
    writer.write("a", {"png": b""})
    with pytest.raises(ValueError, match="duplicate"):
        writer.write("a", {"png": b""})
    writer.abort()


def _tarfile_shard(path, samples):
    """The same shard written by tarfile itself (what ShardWriter wrote before it wrote directly)."""
    import io

    with open(path, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            for ext in sorted(members):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode, info.uid, info.gid = len(members[ext]), 0, 0o644, 0, 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(members[ext]))


@pytest.mark.parametrize("sizes", [(0, 1, 511), (512, 513, 1024), (10_000, 9_727, 3)])
def test_bytes_are_exactly_tarfiles(tmp_path, sizes):
    # short, exactly 100 bytes with ".mask.png", over 100 (USTAR's prefix split), UTF-8, not UTF-8
    names = ["000001", "d" * 91, "p" * 60 + "/" + "e" * 80, "café", "x\udce9y"]
    samples = [
        (name, {ext: bytes([i + j]) * size for j, (ext, size) in enumerate(zip(("png", "mask.png", "json"), sizes))})
        for i, name in enumerate(names)
    ]
    digest = _write(tmp_path / "ours.tar", samples)
    _tarfile_shard(tmp_path / "theirs.tar", samples)
    assert (tmp_path / "ours.tar").read_bytes() == (tmp_path / "theirs.tar").read_bytes()
    assert digest == sha256_file(tmp_path / "theirs.tar")
    assert [k for k, _ in iter_shard(tmp_path / "ours.tar")] == names
