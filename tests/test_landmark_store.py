"""StoredLandmarks (the workers' view of landmarks.jsonl files, each record parsed on first use)
against load_landmarks (every record parsed at load): the same record for every sha256, the
same errors, a damaged line reported when its record is asked for."""

from __future__ import annotations

import hashlib
import json

import pytest

from occsynth import contract
from occsynth.faces.landmarks import StoredLandmarks, load_landmarks
from occsynth.io.dataset import DatasetError


def _sha(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def _record(n: int, **extra) -> dict:
    return {
        "detector": {"batch": 1, "max_pixels": 64000000, "min_face_size": 40},
        "faces": [{"box": [1.5, 2.5, 30.0, 40.0], "landmarks": [[n, 1.0]] * 5, "score": 0.99}],
        "image_size": [250, 250],
        "sha256": _sha(n),
        "source": f"Person_{n}/Person_{n}_0001.jpg",
        **extra,
    }


def test_every_record_is_the_one_load_landmarks_reads(tmp_path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b"
    second.mkdir()
    lines = [contract.dumps(_record(n)) for n in range(40)]
    lines[3] = json.dumps(_record(3), indent=None, separators=(" , ", " : "))  # other spacing: still indexed
    lines[5] = contract.dumps(_record(5, source="C:\\faces\\5.jpg"))  # a JSON escape: parsed at load
    lines[7] = contract.dumps(_record(7, note={"sha256": _sha(1000)}))  # two keys: parsed at load
    lines.insert(9, "   ")  # blank lines are skipped, line numbers still count them
    first.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    # the second file repeats some records, changed: the later one wins, also over a parsed one
    later = [_record(n, score=n) for n in (2, 5, 7, 39)] + [_record(2, score="again")]
    later.append(_record(5, source="D:\\5.jpg"))
    (second / "landmarks.jsonl").write_text(contract.dumps_lines(later))

    eager = load_landmarks([first, second])
    lazy = StoredLandmarks([first, second])
    assert len(eager) == 40
    for key, record in eager.items():
        assert lazy.get(key) == record and key in lazy
    assert lazy.get(_sha(2))["score"] == "again" and lazy.get(_sha(5))["source"] == "D:\\5.jpg"
    assert lazy.get(_sha(1000)) is None and _sha(1000) not in lazy  # only nested in a record
    assert lazy.get("not a digest", {"x": 1}) == {"x": 1}


def test_a_damaged_record_is_reported_when_it_is_asked_for(tmp_path):
    path = tmp_path / "landmarks.jsonl"
    good = contract.dumps(_record(1))
    cut = contract.dumps(_record(2))[:-30]  # a cut line whose sha256 is still readable
    path.write_text(f"{good}\n\n{cut}\n{contract.dumps(_record(3))}\n")
    with pytest.raises(DatasetError, match=r"landmarks.jsonl:3: not a JSON line \(landmarks\)"):
        load_landmarks([path])

    lazy = StoredLandmarks([path])  # indexed without parsing the damaged line
    assert lazy.get(_sha(1)) == _record(1) and lazy.get(_sha(3)) == _record(3)
    with pytest.raises(DatasetError, match=r"landmarks.jsonl:3: not a JSON line \(landmarks\)"):
        lazy.get(_sha(2))


def test_lines_that_are_not_records_are_refused_like_load_landmarks(tmp_path):
    path = tmp_path / "landmarks.jsonl"
    key = _sha(1)
    cases = {  # line -> when StoredLandmarks refuses it (load_landmarks: always at load)
        '{"source": "a.jpg"}': "at load",  # no sha256 found: parsed now
        "[1, 2]": "at load",
        '{"sha256": 5}': "at load",
        '{"sha256": "' + key + '", "x": }': "on use",
        '{"faces": [{"sha256": "' + key + '"}]}': "on use",  # the only sha256 is not the record's
    }
    for line, when in cases.items():
        path.write_text(line + "\n")
        with pytest.raises(DatasetError, match=r"landmarks.jsonl:1: (not a|expected a)"):
            load_landmarks([path])
        if when == "at load":
            with pytest.raises(DatasetError, match=r"landmarks.jsonl:1: (not a|expected a)"):
                StoredLandmarks([path])
        else:
            lazy = StoredLandmarks([path])
            with pytest.raises(DatasetError, match=r"landmarks.jsonl:1: not a"):
                lazy.get(key)
    path.write_bytes(b'{"sha256": "' + key.encode() + b'", "source": "\xff"}\n')  # not UTF-8: one line
    with pytest.raises(DatasetError, match=r"landmarks.jsonl:1: not a JSON line .*utf-8"):
        StoredLandmarks([path]).get(key)


def test_a_missing_file_is_named(tmp_path):
    for read in (load_landmarks, StoredLandmarks):
        with pytest.raises(FileNotFoundError, match="landmarks file not found: .*nothing.jsonl"):
            read([tmp_path / "nothing.jsonl"])


def test_get_with_detector_settings_takes_the_last_record_made_with_them(tmp_path):
    """Every record of an image is kept: a later file's record made with other settings (a named
    --landmarks file) does not hide an earlier one made with the build's (the machine cache)."""
    ours, theirs = {"batch": 1, "max_pixels": 64000000, "min_face_size": 40}, {"batch": 1, "min_face_size": 20}
    cache, named = tmp_path / "cache.jsonl", tmp_path / "named.jsonl"
    cache.write_text(contract.dumps_lines([_record(1, score=1), _record(1, score=2), _record(2)]))
    named.write_text(contract.dumps_lines([_record(1, score=3, detector=theirs), _record(3, detector=theirs)]))
    store = StoredLandmarks([cache, named])
    assert store.get(_sha(1))["score"] == 3  # without settings: the last record, as load_landmarks
    assert store.get(_sha(1), detector=ours)["score"] == 2  # the last one made with them
    assert store.get(_sha(1), detector=theirs)["score"] == 3
    assert store.get(_sha(3), detector=ours) is None and store.get(_sha(3), detector=theirs) is not None
    assert store.get(_sha(2), detector=theirs) is None and store.get(_sha(2), detector=ours) is not None


def test_the_machine_cache_keeps_a_record_per_image_and_settings(tmp_path):
    from occsynth.faces.landmarks import LandmarkCache

    cache = LandmarkCache(tmp_path / "cache")
    other = {"batch": 1, "max_pixels": 64000000, "min_face_size": 20}
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_text(contract.dumps_lines([_record(n) for n in range(3)]))
    second.write_text(contract.dumps_lines([_record(n, detector=other) for n in range(2)]))
    assert cache.update_from(first) == 3 and cache.update_from(second) == 2
    assert cache.update_from(first) == 0 and len(cache) == 5  # the other settings' did not replace them
    store = StoredLandmarks([cache.path])
    assert store.get(_sha(0), detector=_record(0)["detector"]) == _record(0)
    assert store.get(_sha(0), detector=other) == _record(0, detector=other)
    first.write_text(contract.dumps_lines([_record(0, score=0.5)]))  # a record made again replaces its own
    assert cache.update_from(first) == 1 and len(cache) == 5
    assert StoredLandmarks([cache.path]).get(_sha(0), detector=_record(0)["detector"])["score"] == 0.5
