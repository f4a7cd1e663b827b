"""The parent of a build keeps what its shards sent out of the cyclic garbage collector while
they arrive (pipeline._kept_out_of_gc): frozen during the build, thawed after it (also when it
fails), and a caller's own frozen objects left as they were."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
from tiny_dataset import write_blocky_faces

from occsynth.build import BuildConfig, plan_align
from occsynth.build.pipeline import build
from occsynth.sources import open_source


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    return write_blocky_faces(tmp_path_factory.mktemp("faces"), per_person=4, seed=3)


def _build(faces: Path, out: Path, on_built=None) -> dict:
    source = open_source(str(faces))
    config = BuildConfig(name="gc", specs={"": "ellipse(ratio=0.3)"}, aligned_input=True, shard_size=4, seed=1)
    return build(config, plan_align(source.items()), source, out, executor="serial", progress=False, on_built=on_built)


@pytest.fixture
def thawed():
    gc.unfreeze()  # whatever an earlier test left
    yield
    gc.unfreeze()


def test_what_arrived_is_frozen_during_the_build_and_thawed_after(faces, tmp_path, thawed):
    seen = []
    manifest = _build(faces, tmp_path / "out", on_built=lambda i, m, n: seen.append(gc.get_freeze_count()))
    assert manifest["totals"]["samples"] == 12
    assert seen and seen[0] > 0  # the results received before the dataset was finalized were frozen
    assert gc.get_freeze_count() == 0


def test_a_failed_build_thaws_too(faces, tmp_path, thawed):
    def fail(i, manifest, new):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        _build(faces, tmp_path / "out", on_built=fail)
    assert gc.get_freeze_count() == 0


def test_a_callers_frozen_objects_stay_frozen(faces, tmp_path, thawed):
    gc.freeze()
    before = gc.get_freeze_count()
    seen = []
    _build(faces, tmp_path / "out", on_built=lambda i, m, n: seen.append(gc.get_freeze_count()))
    # nothing frozen by the build (thawing would thaw the caller's too); the count may only fall:
    # frozen objects are still freed when unused
    assert len(seen) == 1 and seen[0] <= before
    assert 0.9 * before < gc.get_freeze_count() <= seen[0]
