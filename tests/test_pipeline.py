"""End-to-end builds: determinism across worker counts, kill/resume, failure records, reuse of
stored landmarks, verify. Real faces: LFW from ../shared/data and the embedded photos."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from occsynth.cli import main

SPEC = "0.3*clean | 0.7*block(ratio=0.1..0.5, fill=noise)"


def run_cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def dataset_files(out: Path) -> dict[str, bytes]:
    """Everything a build produces that must be reproducible (not the manifest's command)."""
    files = {
        p.name: p.read_bytes()
        for p in sorted(out.iterdir())
        if p.suffix == ".tar" or p.name in ("index.jsonl", "failures.jsonl", "landmarks.jsonl")
    }
    manifest = json.loads((out / "manifest.json").read_text())
    manifest.pop("command")
    files["manifest-without-command"] = json.dumps(manifest, sort_keys=True).encode()
    return files


@pytest.fixture(scope="module")
def small_lfw(lfw_subset_dir, tmp_path_factory) -> Path:
    """22 real LFW images of 4 identities (Aaron_Peirsol has 4)."""
    out = tmp_path_factory.mktemp("small_lfw")
    for identity in ("Abdullah_Gul", "Ana_Palacio", "Bill_Gates", "Aaron_Peirsol"):
        for path in sorted((lfw_subset_dir / identity).iterdir())[:6]:
            (out / identity).mkdir(exist_ok=True)
            shutil.copy(path, out / identity / path.name)
    return out


def align_args(src: Path, out: Path, workers: int, *extra: str) -> list[str]:
    return [
        "align",
        str(src),
        "--out",
        str(out),
        "--workers",
        str(workers),
        "--shard-size",
        "5",
        "--occlude",
        SPEC,
        "--variants",
        "2",
        "--seed",
        "7",
        "--no-cache",
        "--quiet",
        *extra,
    ]


@pytest.fixture(scope="module")
def reference_build(small_lfw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "out"
    run_cli(*align_args(small_lfw, out, 1))
    return out


def test_build_follows_the_contract(reference_build):
    manifest = json.loads((reference_build / "manifest.json").read_text())
    assert manifest["totals"]["samples"] == 44 and manifest["totals"]["failures"] == 0
    assert manifest["totals"]["shards"] == 9
    run_cli("verify", str(reference_build))
    rows = [json.loads(line) for line in (reference_build / "index.jsonl").read_text().splitlines()]
    assert {r["identity"] for r in rows} == {"Abdullah_Gul", "Ana_Palacio", "Bill_Gates", "Aaron_Peirsol"}
    occluded = [r for r in rows if r["occluders"]]
    assert 0 < len(occluded) < len(rows)
    assert all(abs(r["occluders"][0]["params"]["ratio"] - r["occlusion_ratio"]) < 0.02 for r in occluded)
    # the two variants of one image share the alignment but have their own seeds
    a, b = rows[0], rows[1]
    assert a["source"] == b["source"] and a["landmarks"] == b["landmarks"] and a["seed"] != b["seed"]


def test_same_output_with_one_or_two_workers(small_lfw, reference_build, tmp_path):
    run_cli(*align_args(small_lfw, tmp_path / "two", 2))
    assert dataset_files(tmp_path / "two") == dataset_files(reference_build)


def test_rebuild_from_stored_landmarks_is_identical_and_skips_detection(small_lfw, reference_build, tmp_path):
    run_cli(*align_args(small_lfw, tmp_path / "stored", 1, "--landmarks", str(reference_build / "landmarks.jsonl")))
    assert dataset_files(tmp_path / "stored") == dataset_files(reference_build)
    stats = json.loads((tmp_path / "stored" / "00000.stats.json").read_text())
    assert stats["reused_detections"] == 3  # 5 samples = 3 distinct images, none re-detected


def test_sigkill_then_resume_gives_identical_output(small_lfw, reference_build, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "occsynth.cli", *align_args(small_lfw, out, 1)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(out.glob("*.stats.json")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists(), "the run finished before it could be killed"
    finished = sorted(p.name for p in out.glob("*.tar"))
    assert 0 < len(finished) < 9
    for name in finished:  # whatever is visible under a final name is complete
        assert (out / name).read_bytes() == (reference_build / name).read_bytes()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert dataset_files(out) == dataset_files(reference_build)
    assert not list(out.glob("*.tmp"))


def test_a_different_build_into_the_same_dir_is_refused(small_lfw, reference_build, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(reference_build, out)
    result = CliRunner().invoke(main, align_args(small_lfw, out, 1)[:-2] + ["--seed", "8", "--quiet"])
    assert result.exit_code != 0 and "different build" in result.output


def test_verify_catches_tampering(reference_build, tmp_path):
    out = tmp_path / "tampered"
    shutil.copytree(reference_build, out)
    data = bytearray((out / "00003.tar").read_bytes())
    data[2000] ^= 0xFF
    (out / "00003.tar").write_bytes(bytes(data))
    (out / "00004.tar").unlink()
    result = CliRunner().invoke(main, ["verify", str(out)])
    assert result.exit_code == 1
    assert "00003.tar: sha256" in result.output and "00004.tar: listed in manifest.json but missing" in result.output


def _bad_inputs(folder: Path, real_face: Path) -> dict[str, str]:
    """Write each kind of bad input into identity folders; returns sample_id -> expected stage."""

    def put(rel: str, data: bytes) -> None:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)

    face = real_face.read_bytes()
    put("Good_Person/good_0001.jpg", face)
    put("Bad_Files/empty.jpg", b"")
    put("Bad_Files/notes.txt", b"this is not an image\n")
    put("Bad_Files/corrupt.jpg", b"\xff\xd8\xff\xe0" + os.urandom(300))
    put("Bad_Files/truncated.jpg", face[: len(face) // 3])
    bomb = io.BytesIO()
    Image.new("1", (40000, 40000)).save(bomb, format="PNG")
    put("Bad_Files/bomb.png", bomb.getvalue())
    flat = io.BytesIO()
    Image.fromarray(np.full((120, 120, 3), 128, np.uint8)).save(flat, format="PNG")
    put("No_Face/flat.png", flat.getvalue())
    return {
        "Bad_Files/empty.jpg": "read",
        "Bad_Files/notes.txt": "decode",
        "Bad_Files/corrupt.jpg": "decode",
        "Bad_Files/truncated.jpg": "decode",
        "Bad_Files/bomb.png": "decode",
        "No_Face/flat.png": "detect",
    }


def test_every_bad_input_becomes_a_failure_record(small_lfw, tmp_path):
    src = tmp_path / "src"
    expected = _bad_inputs(src, sorted((small_lfw / "Bill_Gates").iterdir())[0])
    run_cli("align", str(src), "--out", str(tmp_path / "out"), "--workers", "1", "--no-cache", "--quiet")
    failures = {f["source"]: f for f in map(json.loads, (tmp_path / "out" / "failures.jsonl").read_text().splitlines())}
    assert {k: f["stage"] for k, f in failures.items()} == expected
    assert all(f["reason"] for f in failures.values())
    assert "no face" in failures["No_Face/flat.png"]["reason"]
    assert "0 bytes" in failures["Bad_Files/empty.jpg"]["reason"]
    index = (tmp_path / "out" / "index.jsonl").read_text().splitlines()
    assert [json.loads(line)["source"] for line in index] == ["Good_Person/good_0001.jpg"]


def test_no_face_policies(small_lfw, tmp_path):
    src = tmp_path / "src"
    _bad_inputs(src, sorted((small_lfw / "Bill_Gates").iterdir())[0])
    shutil.rmtree(src / "Bad_Files")
    run_cli(
        "align",
        str(src),
        "--out",
        str(tmp_path / "cc"),
        "--workers",
        "1",
        "--no-cache",
        "--quiet",
        "--on-no-face",
        "center-crop",
    )
    rows = {
        json.loads(line)["source"]: json.loads(line)
        for line in (tmp_path / "cc" / "index.jsonl").read_text().splitlines()
    }
    assert rows["No_Face/flat.png"]["align_mode"] == "center-crop"
    assert rows["Good_Person/good_0001.jpg"]["align_mode"] == "detected"
    result = CliRunner().invoke(
        main,
        [
            "align",
            str(src),
            "--out",
            str(tmp_path / "f"),
            "--workers",
            "1",
            "--no-cache",
            "--quiet",
            "--on-no-face",
            "fail",
        ],
    )
    assert result.exit_code != 0 and "No_Face/flat.png" in result.output


def test_aligned_inputs_skip_detection(reference_build, tmp_path):
    from occsynth.inspect.preview import read_samples

    src = tmp_path / "aligned"
    for meta, image, _ in read_samples(reference_build, limit=6):
        (src / meta["identity"]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(src / meta["identity"] / f"{meta['key']}.png")
    run_cli(
        "align",
        str(src),
        "--out",
        str(tmp_path / "out"),
        "--aligned",
        "--template",
        "112x96",
        "--workers",
        "1",
        "--quiet",
    )
    rows = [json.loads(line) for line in (tmp_path / "out" / "index.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["align_mode"] == "aligned-input" and r["image_size"] == [96, 112] for r in rows)


def test_demo_runs_offline_on_embedded_photos(tmp_path):
    out = tmp_path / "demo"
    output = run_cli("demo", "--out", str(out), "--workers", "1", "--variants", "3", "--no-cache", "--quiet")
    assert "verified" in output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"]["samples"] == 9  # 3 photos with faces x 3 variants
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert {f["source"] for f in failures} == {"no_face_cat/chelsea.png"}
    assert all(f["stage"] == "detect" for f in failures)
    assert len(manifest["stats"]["families"]) >= 1
    assert (out / "preview.png").stat().st_size > 10_000
