"""Reproducibility locks pin a build's detections (landmarks.jsonl) beside its shards: a build
from other detections (another machine's MTCNN rounds some landmarks differently) says so in its
first line, and a build given the lock's own detections (--landmarks FILE, gzipped or not,
--no-cache) checks the rest of the build on any machine. Locks written before the detections
were pinned are still checked on what they hold."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from occsynth.build.locks import DETECTIONS, compare_lock
from occsynth.cli import main
from occsynth.faces.landmarks import StoredLandmarks, load_landmarks
from occsynth.faces.templates import get_template
from occsynth.io.dataset import DatasetError

pytestmark = pytest.mark.usefixtures("private_cache")  # conftest: one detection cache per module


def _build(fake_lfw, out: Path, *extra: str):
    lfw, pairs = fake_lfw
    args = ["build", "lfw-randblock", "--lfw", str(lfw), "--pairs", str(pairs), "--out", str(out)]
    return CliRunner().invoke(main, [*args, "--repeats", "1", "--quiet", *extra], catch_exceptions=False)


def _gzip(lines: list[str], path: Path) -> Path:
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0))
    return path


def test_a_lock_checks_the_build_from_its_own_detections_and_names_other_ones(fake_lfw, tmp_path):
    lock = tmp_path / "lock.json"
    assert _build(fake_lfw, tmp_path / "first", "--write-lock", str(lock)).exit_code == 0
    pinned = json.loads(lock.read_text())["datasets"]["."]
    assert DETECTIONS in pinned  # the detections' checksum beside the shards'
    lines = (tmp_path / "first" / DETECTIONS).read_text().splitlines()

    # the lock's own detections, gzipped, and nothing else: identical
    own = _gzip(lines, tmp_path / "own.jsonl.gz")
    again = _build(fake_lfw, tmp_path / "again", "--landmarks", str(own), "--no-cache", "--check", str(lock))
    assert again.exit_code == 0, again.output
    assert (tmp_path / "again" / DETECTIONS).read_text().splitlines() == lines

    # one image's detection differs (a face where the lock's MTCNN found none): the first line
    # after the error's names the detections as the cause, then the files they changed follow
    record = json.loads(lines[0])
    assert record["faces"] == []  # the fake images hold no face: centre crops
    w, h = record["image_size"]
    points = (get_template("arcface-112x112").points * (w / 112.0)).round(3).tolist()
    record["faces"] = [{"box": [0.0, 0.0, float(w), float(h)], "score": 0.99, "landmarks": points}]
    other = _gzip([json.dumps(record)] + lines[1:], tmp_path / "other.jsonl.gz")
    moved = _build(fake_lfw, tmp_path / "moved", "--landmarks", str(other), "--no-cache", "--check", str(lock))
    assert moved.exit_code == 1
    lines_out = moved.output.splitlines()
    assert "Traceback" not in moved.output
    error = lines_out[[i for i, line in enumerate(lines_out) if line.startswith("Error: build differs from")][0] :]
    assert error[1].startswith("the detections differ from the lock's (landmarks.jsonl of .)")
    assert any(line.startswith("./index.jsonl:") for line in error[2:])

    # files named with --landmarks win over the machine's cache (which holds the first build's)
    named = _build(fake_lfw, tmp_path / "named", "--landmarks", str(other))
    assert named.exit_code == 0, named.output
    assert json.loads((tmp_path / "named" / DETECTIONS).read_text().splitlines()[0])["faces"] == record["faces"]


def test_a_lock_from_before_the_detections_were_pinned_is_checked_on_what_it_holds():
    built = {"datasets": {".": {"samples": 4, "failures": 0, "shards": {"00000.tar": "a"}, DETECTIONS: "d"}}}
    old = {"datasets": {".": {"samples": 4, "failures": 0, "shards": {"00000.tar": "a"}}}}
    assert compare_lock(old, built) == []
    changed = {"datasets": {".": {**old["datasets"]["."], "shards": {"00000.tar": "b"}}}}
    assert compare_lock(changed, built) == ["./00000.tar: a != locked b"]
    # a lock that pins detections the build did not write (aligned input, say) says so
    pinned = {"datasets": {".": {**old["datasets"]["."], DETECTIONS: "d"}}}
    problems = compare_lock(pinned, {"datasets": {".": old["datasets"]["."]}})
    assert problems[0].startswith("the detections differ") and problems[1] == "./landmarks.jsonl: None != locked d"


def test_gzipped_landmarks_read_as_plain_ones_and_a_damaged_one_is_one_error(tmp_path):
    records = [{"sha256": f"{i:064x}", "source": f"p/{i}.jpg", "faces": []} for i in range(3)]
    lines = [json.dumps(r) for r in records]
    plain = tmp_path / "landmarks.jsonl"
    plain.write_text("\n".join(lines) + "\n")
    packed = _gzip(lines, tmp_path / "landmarks.jsonl.gz")
    assert load_landmarks([packed]) == load_landmarks([plain])
    store = StoredLandmarks([packed])
    assert all(store.get(r["sha256"]) == r for r in records)
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(packed.read_bytes()[:-12])  # cut short
    with pytest.raises(DatasetError, match="broken.jsonl.gz: not a gzip file of landmarks"):
        load_landmarks([broken])
    bad_line = _gzip([lines[0], "{not json", lines[2]], tmp_path / "bad.jsonl.gz")
    with pytest.raises(DatasetError, match=r"bad.jsonl.gz:2: not a JSON line"):
        load_landmarks([bad_line])


def test_a_named_file_made_with_other_settings_does_not_send_the_build_to_mtcnn(fake_lfw, tmp_path, monkeypatch):
    """The cache holds every image's detection with the build's settings; a named file holds
    later records of the same images made with other settings. The build takes the cache's
    (before, the later record hid them and every image was detected again)."""
    from occsynth.build import stages

    first = _build(fake_lfw, tmp_path / "first", "--workers", "1")
    assert first.exit_code == 0, first.output
    lines = (tmp_path / "first" / DETECTIONS).read_text().splitlines()
    other = []
    for line in lines:
        record = json.loads(line)
        record["detector"] = {**record["detector"], "min_face_size": 7}
        record["faces"] = [{"box": [0.0, 0.0, 9.0, 9.0], "score": 0.9, "landmarks": [[1.0, 1.0]] * 5}]
        other.append(json.dumps(record))
    named = tmp_path / "other-settings.jsonl"
    named.write_text("\n".join(other) + "\n")

    def no_mtcnn(config):
        raise AssertionError("MTCNN ran: the stored records made with the build's settings were not used")

    monkeypatch.setattr(stages, "detector", no_mtcnn)
    again = _build(fake_lfw, tmp_path / "again", "--workers", "1", "--landmarks", str(named))
    assert again.exit_code == 0, again.output
    assert (tmp_path / "again" / DETECTIONS).read_text().splitlines() == lines
