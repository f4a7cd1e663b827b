"""Shared fixtures. Real data lives in ../shared/data beside the project root; tests that need
it skip with a clear message when it is absent (a user's machine will not have it)."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

# One thread per test process: the suite runs as `pytest -n 2` on 2 cores, and torch/OpenCV
# default thread pools oversubscribe them (MTCNN ran up to 40x slower that way).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
cv2.setNumThreads(1)

# The occsynth_train fixtures (tiny datasets built once per session), available to every module.
from train_fixtures import one_torch_thread, sk_faces, tiny_ident, tiny_pairs, tiny_train  # noqa: E402,F401

from occsynth.faces.detect import FaceDetector  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("OCCSYNTH_SHARED_DATA", ROOT.parent / "shared" / "data")).resolve()
LFW_TGZ = SHARED_DATA / "lfw" / "lfw-deepfunneled.tgz"
LFW_PAIRS = SHARED_DATA / "lfw" / "pairs.txt"
THIRD_PARTY = SHARED_DATA / "third_party"

# Identities with several images, used by tests that need a small real LFW folder.
LFW_TEST_IDENTITIES = (
    "Aaron_Peirsol",
    "Abdullah_Gul",
    "Alejandro_Toledo",
    "Ana_Palacio",
    "Bill_Gates",
    "Angelina_Jolie",
    "Laura_Bush",
    "Serena_Williams",
)


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (../shared/data is absent on this machine)")
    return path


@pytest.fixture(scope="session")
def lfw_tgz() -> Path:
    return _need(LFW_TGZ)


@pytest.fixture(scope="session")
def lfw_pairs() -> Path:
    return _need(LFW_PAIRS)


@pytest.fixture(scope="session")
def third_party() -> Path:
    return _need(THIRD_PARTY)


@pytest.fixture(scope="session")
def lfw_fixture_faces() -> list[dict]:
    """The LFW faces of tests/data/lfw_faces.json, aligned (see lfw_fixture.py)."""
    from lfw_fixture import load_lfw_faces

    return load_lfw_faces(_need(LFW_TGZ))


@pytest.fixture(scope="session")
def lfw_subset_dir(tmp_path_factory) -> Path:
    """A real LFW identity folder (<identity>/<image>.jpg) with the LFW_TEST_IDENTITIES."""
    tgz = _need(LFW_TGZ)
    out = tmp_path_factory.mktemp("lfw_subset")
    wanted = {f"lfw-deepfunneled/{name}/" for name in LFW_TEST_IDENTITIES}
    with tarfile.open(tgz) as archive:
        for member in archive:
            if member.isfile() and any(member.name.startswith(w) for w in wanted):
                rel = Path(member.name).relative_to("lfw-deepfunneled")
                target = out / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.extractfile(member).read())
    return out


@pytest.fixture(scope="module")
def detector():
    """The project's MTCNN detector, one intra-op thread for the module (module fixtures such
    as test_redetect's chips detect before the per-test `one_torch_thread` applies; on a shared
    2-core machine torch's second thread mostly spins)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield FaceDetector()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def private_cache(tmp_path_factory):
    """A module's builds share one detection cache, and never the user's (modules that build
    use it with `pytestmark = pytest.mark.usefixtures("private_cache")`)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("OCCSYNTH_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def fake_lfw(tmp_path_factory) -> tuple[Path, Path]:
    """A small fake LFW (fake_lfw.py: smooth images without faces) and its pairs file, one per
    module (test_eval_suite's own is per test)."""
    from fake_lfw import write_fake_lfw

    return write_fake_lfw(tmp_path_factory.mktemp("fake_lfw"))
