"""The padded re-detection (faces/detect.py detect_padded, build/stages.py find_faces and
align_images): a build detects again, on the image padded to a larger canvas, where MTCNN found
no face, before it falls back to a centre crop. Checked on a real LFW face made into a tight chip
that MTCNN misses, through the build's own stages and its command line."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from occsynth.build.config import BuildConfig
from occsynth.build.stages import ShardImages, align_images, find_faces
from occsynth.cli import main
from occsynth.faces.align import estimate_similarity, warp
from occsynth.faces.detect import select_face
from occsynth.faces.templates import get_template
from occsynth.io.archive import iter_files

ROOT = Path(__file__).resolve().parents[1]
# Found by `benchmarks/realism.py framing --chain-faces ...` ("cut" chips of the odd half): MTCNN
# finds this face in the 250x250 photo but not in the tight chip below; on the padded canvas it
# does, its eyes 0.5 px (112x112) from the full photo's detection.
SOURCE = "Shafal_Mosed/Shafal_Mosed_0001.jpg"


@pytest.fixture(scope="module")
def cut_chip(lfw_tgz, detector) -> tuple[np.ndarray, np.ndarray]:
    """(chip, the full photo's landmarks in the chip): a 112x112 square crop of the detector's
    box with 10% of its side cut off each side (the frame cuts the face)."""
    for path, member, archive in iter_files(lfw_tgz):
        if str(path) == f"lfw-deepfunneled/{SOURCE}":
            data = np.frombuffer(archive.extractfile(member).read(), np.uint8)
            image = cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            break
    else:
        pytest.fail(f"{SOURCE} is not in {lfw_tgz}")
    face = select_face(detector.detect_one(image), image.shape, "center")
    assert face is not None, f"MTCNN finds no face in the full photo {SOURCE}"
    x0, y0, x1, y1 = face.box
    side = max(x1 - x0, y1 - y0) * (1 - 2 * 0.1)
    k = 112 / side
    m = np.array([[k, 0.0, -k * ((x0 + x1) / 2 - side / 2)], [0.0, k, -k * ((y0 + y1) / 2 - side / 2)]])
    return warp(image, m, (112, 112)), face.landmarks @ m[:, :2].T + m[:, 2]


def eye_error(used: np.ndarray, truth: np.ndarray) -> float:
    """Mean distance (px, 112x112) of the eyes aligned from `used` from where the full photo's
    detection puts them (the template's eye points)."""
    template = get_template("arcface")
    m = estimate_similarity(np.asarray(used, np.float64), template.points)
    eyes = truth[:2] @ m[:, :2].T + m[:, 2]
    return float(np.linalg.norm(eyes - template.points[:2], axis=1).mean())


def _align(chip: np.ndarray, redetect: str) -> ShardImages:
    config = BuildConfig(on_no_face="center-crop", redetect=redetect)
    state = ShardImages(images={"chip": chip}, digests={"chip": "0" * 64})
    find_faces(state, config)
    align_images(state, config, get_template(config.template))
    return state


def test_a_tight_chip_missed_by_mtcnn_is_found_on_the_padded_canvas(cut_chip, detector):
    chip, truth = cut_chip
    assert detector.detect_one(chip) == [], "precondition: MTCNN misses the face in the tight chip"
    state = _align(chip, "padded")
    _, _, info = state.aligned["chip"]
    assert info["align_mode"] == "detected-padded"  # the record says which step aligned it
    record = state.detections["chip"]
    assert record["faces"] == [] and len(record["padded"]["faces"]) == info["num_faces"] >= 1
    assert record["padded"]["pad_fraction"] == 0.3
    assert eye_error(info["source_landmarks"], truth) <= 6.0  # measured 0.5 px
    # the prior alone (what the build did before): the chip prior's guess, much further off
    before = _align(chip, "none")
    _, _, info_before = before.aligned["chip"]
    assert info_before["align_mode"] == "center-crop" and "padded" not in before.detections["chip"]
    assert eye_error(info_before["source_landmarks"], truth) > eye_error(info["source_landmarks"], truth)


def test_the_command_line_records_detected_padded_and_redetect_none_builds_as_before(cut_chip, tmp_path):
    chip, _ = cut_chip
    (tmp_path / "src" / "Someone").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "src" / "Someone" / "chip.png"), cv2.cvtColor(chip, cv2.COLOR_RGB2BGR))
    modes = {}
    for flag in ("padded", "none"):
        out = tmp_path / flag
        args = ["align", str(tmp_path / "src"), "--out", str(out), "--on-no-face", "center-crop", "--redetect", flag]
        result = CliRunner().invoke(main, [*args, "--no-cache", "--workers", "1", "--quiet"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        (meta,) = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
        modes[flag] = meta["align_mode"]
    assert modes == {"padded": "detected-padded", "none": "center-crop"}


def test_locks_written_before_the_padded_redetection_rebuild_without_it():
    spec = importlib.util.spec_from_file_location("check_locks", ROOT / "benchmarks" / "check_locks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def redetect(options: dict) -> str:
        args = module.build_args({"build": "lfw-occ", "options": options})
        assert args.count("--redetect") == 1 and args[args.index("--seed") + 1] == "0"
        # and from the detections the locks were made from, not this machine's cache
        assert args[-3:] == ["--landmarks", str(module.LOCK_DETECTIONS), "--no-cache"]
        return args[args.index("--redetect") + 1]

    assert redetect({"harmonize": True, "seed": 0}) == "none"  # a lock written before it
    assert redetect({"harmonize": True, "redetect": "padded", "seed": 0}) == "padded"
