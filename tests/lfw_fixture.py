"""Real LFW faces for the realism tests: the detections in tests/data/lfw_faces.json (the
project's MTCNN on LFW deep-funneled; written by benchmarks/realism.py fixture), their images
read from the LFW archive and aligned to the ArcFace 112x112 template."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from occsynth.faces.align import align_face
from occsynth.faces.templates import get_template
from occsynth.io.archive import iter_files

FIXTURE = Path(__file__).resolve().parent / "data" / "lfw_faces.json"


def load_lfw_faces(tgz: Path) -> list[dict]:
    """One dict per fixture face: source, set ("sample" | "yaw"), box, landmarks (source image),
    yaw, image (the source RGB), crop (aligned 112x112 RGB), aligned (its landmarks)."""
    faces = json.loads(FIXTURE.read_text())["faces"]
    wanted = {f"lfw-deepfunneled/{f['source']}": f for f in faces}
    images = {}
    for path, member, archive in iter_files(tgz):
        if str(path) in wanted:
            data = np.frombuffer(archive.extractfile(member).read(), np.uint8)
            images[str(path)] = cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    template = get_template("arcface")
    out = []
    for key, face in wanted.items():
        crop, _, aligned = align_face(images[key], np.asarray(face["landmarks"]), template)
        out.append({**face, "image": images[key], "crop": crop, "aligned": aligned})
    return out
