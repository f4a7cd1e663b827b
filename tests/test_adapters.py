"""occsynth inside other libraries' pipelines, each tested in the real library's own objects:
albumentations (Compose, ReplayCompose, to_dict/from_dict) and webdataset (WebDataset.map,
DataPipeline) give exactly `occsynth.occlude`'s image and mask for the seed they drew; the
torchvision v2 transform gives exactly `TorchOccluder`'s output for the same generator (plain
tensors here; inside torchvision's own v2.Compose with tv_tensors only where torchvision imports)."""

from __future__ import annotations

import importlib
import random
import sys
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
import webdataset as wds
from train_fixtures import build_train_set

import occsynth
from occsynth import contract
from occsynth.adapters.torchvision import OccludeBatch
from occsynth.adapters.webdataset import OccludeSample, occlude
from occsynth.albumentations import Occlude
from occsynth.faces.templates import get_template
from occsynth.occluders.torch import TorchOccluder
from occsynth.seeding import derive_seed

SPEC = "0.25*sunglasses | 0.25*scarf | 0.25*surgical_mask | 0.25*block(ratio=0.1..0.3)"
TORCH_SPEC = "0.3*clean | 0.4*ellipse(ratio=0.1..0.4, fill=noise) | 0.3*block(ratio=0.2)"
LANDMARKS = contract.round_points(get_template("arcface-112x112").points)
KEYPOINTS = A.KeypointParams(format="xy", remove_invisible=False)


@pytest.fixture(scope="module")
def faces(sk_faces) -> list[np.ndarray]:
    return [face for views in sk_faces.values() for face in views[:2]]  # 20 RGB 112x112


# ----------------------------------------------------------------------------- albumentations
def test_albumentations_compose_gives_exactly_occsynth_occlude(faces):
    pipeline = A.Compose([Occlude(SPEC, p=1.0)], keypoint_params=KEYPOINTS, seed=7)
    names = set()
    for face in faces:
        out = pipeline(image=face, mask=np.zeros(face.shape[:2], np.uint8), keypoints=LANDMARKS)
        params = pipeline.transforms[0].get_applied_params()
        expected = occsynth.occlude(face, LANDMARKS, SPEC, params["seed"])
        assert np.array_equal(out["image"], expected.image) and np.array_equal(out["mask"], expected.mask)
        assert np.allclose(out["keypoints"], LANDMARKS, atol=1e-4)  # unchanged (albumentations keeps float32)
        assert params["landmarks"] == LANDMARKS.tolist()
        names.add(expected.records[0]["name"])
    assert names == {"sunglasses", "scarf", "surgical_mask", "block"}  # every branch of the mix ran
    # the same Compose seed draws the same params: runs are reproducible
    again = A.Compose([Occlude(SPEC, p=1.0)], keypoint_params=KEYPOINTS, seed=7)
    first = again(image=faces[0], keypoints=LANDMARKS)["image"]
    assert np.array_equal(first, A.Compose([Occlude(SPEC, p=1.0)], keypoint_params=KEYPOINTS, seed=7)(
        image=faces[0], keypoints=LANDMARKS)["image"])  # fmt: skip


def test_albumentations_params_replay_and_serialise(faces):
    pipeline = A.ReplayCompose([A.HorizontalFlip(p=0.0), Occlude(SPEC, p=1.0)], keypoint_params=KEYPOINTS)
    pipeline.set_random_seed(3)
    recorded = pipeline(image=faces[0], mask=np.zeros((112, 112), np.uint8), keypoints=LANDMARKS)
    params = recorded["replay"]["transforms"][1]["params"]
    assert recorded["replay"]["transforms"][1]["__class_fullname__"] == "occsynth.adapters.albumentations.Occlude"
    # replayed onto another face: the same occluders at the same places
    replayed = A.ReplayCompose.replay(
        recorded["replay"], image=faces[5], mask=np.zeros((112, 112), np.uint8), keypoints=LANDMARKS
    )
    expected = occsynth.occlude(faces[5], params["landmarks"], SPEC, params["seed"])
    assert np.array_equal(replayed["image"], expected.image) and np.array_equal(replayed["mask"], expected.mask)
    # the transform is rebuilt from its spec by albumentations' own serialisation
    original = A.Compose([Occlude(SPEC, template="arcface-112x112", p=1.0)])
    rebuilt = A.from_dict(A.to_dict(original))  # (a Compose's seed is not serialised: set on both)
    original.set_random_seed(11)
    rebuilt.set_random_seed(11)
    assert isinstance(rebuilt.transforms[0], Occlude) and rebuilt.transforms[0].spec == SPEC
    assert np.array_equal(rebuilt(image=faces[1])["image"], original(image=faces[1])["image"])


def test_albumentations_probability_targets_and_template(faces):
    never = A.Compose([Occlude(SPEC, p=0.0)], keypoint_params=KEYPOINTS)
    assert np.array_equal(never(image=faces[0], keypoints=LANDMARKS)["image"], faces[0])
    half = A.Compose([Occlude("block(ratio=0.3)", p=0.5)], keypoint_params=KEYPOINTS, seed=0)
    applied = [
        bool(half(image=faces[0], keypoints=LANDMARKS)["image"].tolist() != faces[0].tolist()) for _ in range(40)
    ]
    assert 5 < sum(applied) < 35
    # aligned crops without keypoints: the template's landmarks; fill_mask=None keeps the mask
    own = (np.arange(112 * 112).reshape(112, 112) % 3 == 0).astype(np.uint8) * 7
    pipe = A.Compose([Occlude("sunglasses", template="arcface-112x112", fill_mask=None, p=1.0)], seed=1)
    out = pipe(image=faces[2], mask=own)
    expected = occsynth.occlude(faces[2], LANDMARKS, "sunglasses", pipe.transforms[0].get_applied_params()["seed"])
    assert np.array_equal(out["image"], expected.image) and np.array_equal(out["mask"], own)
    filled = A.Compose([Occlude("sunglasses", template="arcface-112x112", p=1.0)], seed=1)(image=faces[2], mask=own)
    assert np.array_equal(filled["mask"], np.where(expected.mask > 0, 255, own))
    with pytest.raises(ValueError, match="5 face landmarks"):
        A.Compose([Occlude(SPEC, p=1.0)])(image=faces[0])
    with pytest.raises(ValueError, match="shape \\(3, 2\\)"):
        A.Compose([Occlude(SPEC, p=1.0)], keypoint_params=KEYPOINTS)(image=faces[0], keypoints=LANDMARKS[:3])
    with pytest.raises(ValueError, match="uint8 RGB"):
        A.Compose([Occlude(SPEC, template="arcface-112x112", p=1.0)])(image=faces[0].astype(np.float32))
    with pytest.raises(KeyError, match="unknown occluder"):
        Occlude("no_such_occluder", p=1.0)


@pytest.mark.parametrize(
    "library, module, extra",
    [
        ("albumentations", "occsynth.adapters.albumentations", "albumentations"),
        ("webdataset", "occsynth.adapters.webdataset", "webdataset"),
    ],
)
def test_a_missing_library_is_one_line_naming_the_extra(monkeypatch, library, module, extra):
    monkeypatch.setitem(sys.modules, library, None)  # as if not installed
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(ImportError, match=rf"pip install 'occsynth\[{extra}\]'") as info:
        importlib.import_module(module)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- torchvision v2
def _batch(faces, n=8) -> torch.Tensor:
    return torch.from_numpy(np.stack(faces[:n])).permute(0, 3, 1, 2).contiguous()


def test_torch_batch_transform_is_exactly_torchoccluder_for_the_same_generator(faces):
    images = _batch(faces)
    transform = OccludeBatch(TORCH_SPEC, seed=3)
    reference, generator = TorchOccluder(TORCH_SPEC), torch.Generator().manual_seed(3)
    for _ in range(2):  # successive calls continue one stream, as the reference generator does
        out = transform(images)
        expected, _ = reference(images, None, generator)
        assert out.dtype == torch.uint8 and torch.equal(out, expected)
    assert not torch.equal(out, images) and torch.equal(images, _batch(faces))  # input untouched


def test_torch_batch_transform_dict_mask_and_landmarks(faces):
    images = _batch(faces)
    landmarks = torch.as_tensor(LANDMARKS, dtype=torch.float32).expand(8, 5, 2)
    given = torch.zeros(8, 1, 112, 112, dtype=torch.uint8)
    given[:, :, :10] = 9
    out = OccludeBatch(TORCH_SPEC, seed=5)({"image": images, "landmarks": landmarks, "mask": given, "label": 4})
    expected, occluded = TorchOccluder(TORCH_SPEC)(images, landmarks, torch.Generator().manual_seed(5))
    assert torch.equal(out["image"], expected) and out["label"] == 4
    assert torch.equal(out["mask"], torch.where(occluded, torch.tensor(255, dtype=torch.uint8), given))
    flagged = OccludeBatch(TORCH_SPEC, seed=5)({"image": images, "mask": given[:, 0] > 0})  # bool [B, H, W]
    assert torch.equal(flagged["mask"], (given[:, 0] > 0) | occluded[:, 0])
    fresh = OccludeBatch(TORCH_SPEC, seed=5, template="arcface-112x112")({"image": images.float() / 255})
    assert fresh["mask"].dtype == torch.bool and fresh["mask"].shape == (8, 1, 112, 112)
    with pytest.raises(TypeError, match="one input"):
        OccludeBatch(TORCH_SPEC, seed=0)(images, landmarks)
    with pytest.raises(TypeError, match="keys \\['images'\\]"):
        OccludeBatch(TORCH_SPEC, seed=0)({"images": images})
    with pytest.raises(ValueError, match="\\[8, 5, 2\\]"):
        OccludeBatch(TORCH_SPEC, seed=0)({"image": images, "landmarks": landmarks[:, :3]})


def _torchvision_v2():
    try:
        from torchvision import tv_tensors
        from torchvision.transforms import v2
    except Exception as exc:  # noqa: BLE001 - ImportError, or RuntimeError from a CUDA-only build
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        pytest.skip(
            f"torchvision cannot be imported here ({type(exc).__name__}: {lines[0]}); the test inside "
            "torchvision's own v2.Compose needs it (see DEVELOPERS.md on torchvision and torch 2.13)"
        )
    return tv_tensors, v2


def test_torch_batch_transform_inside_torchvision_v2_compose(faces):
    tv_tensors, v2 = _torchvision_v2()
    images = _batch(faces)
    landmarks = torch.as_tensor(LANDMARKS, dtype=torch.float32).expand(8, 5, 2)
    pipeline = v2.Compose([OccludeBatch(TORCH_SPEC, seed=2), v2.ToDtype(torch.float32, scale=True)])
    out = pipeline({"image": tv_tensors.Image(images), "landmarks": landmarks})
    expected, occluded = TorchOccluder(TORCH_SPEC)(images, landmarks, torch.Generator().manual_seed(2))
    assert isinstance(out["image"], tv_tensors.Image) and isinstance(out["mask"], tv_tensors.Mask)
    assert torch.equal(out["image"].as_subclass(torch.Tensor), expected.float() / 255)
    assert torch.equal(out["mask"].as_subclass(torch.Tensor), occluded)
    assert torch.equal(out["landmarks"], landmarks)


# ----------------------------------------------------------------------------- webdataset
@pytest.fixture(scope="module")
def shards(sk_faces, tmp_path_factory) -> list[str]:
    """24 contract samples (half already block-occluded, with their masks) in 3 shards."""
    faces = {k: v[:3] for k, v in list(sk_faces.items())[:8]}
    root = build_train_set(tmp_path_factory.mktemp("wds") / "ds", faces, shard_size=8)
    return [str(p) for p in sorted(Path(root).glob("*.tar"))]


def _originals(urls) -> dict[str, dict]:
    return {s["__key__"]: s for s in wds.WebDataset(urls, shardshuffle=False).decode("rgb8")}


def test_webdataset_map_gives_exactly_occsynth_occlude_per_key(shards):
    originals = _originals(shards)
    stage = OccludeSample(SPEC, seed=5)
    seen = 0
    for sample in wds.WebDataset(shards, shardshuffle=False).decode("rgb8").map(stage):
        key = sample["__key__"]
        src = originals[key]
        meta = src["json"]
        expected = occsynth.occlude(src["png"], meta["landmarks"], SPEC, derive_seed(5, key))
        assert np.array_equal(sample["png"], expected.image)
        union = src["mask.png"].copy()  # rgb8 decodes the stored mask as HxWx3
        union[expected.mask > 0] = 255
        assert np.array_equal(sample["mask.png"], union)
        new = sample["json"]
        assert new["occluders"] == meta["occluders"] + expected.records
        assert new["occlusion_ratio"] == pytest.approx((union[..., 0] >= 128).mean())
        assert new["online_seed"] == derive_seed(5, key) and src["json"] is meta  # the input is not modified
        seen += 1
    assert seen == 24


def test_webdataset_pipeline_stage_is_order_independent(shards):
    reference = {
        s["__key__"]: s["png"]
        for s in wds.WebDataset(shards, shardshuffle=False).decode("rgb8").map(OccludeSample(SPEC, seed=5))
    }
    urls = list(shards)
    random.Random(1).shuffle(urls)
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(urls), wds.tarfile_to_samples(), wds.shuffle(10, rng=random.Random(2)), wds.decode("rgb8"),
        occlude(SPEC, seed=5),
    )  # fmt: skip
    out = {s["__key__"]: s["png"] for s in pipeline}
    assert out.keys() == reference.keys() and all(np.array_equal(out[k], reference[k]) for k in out)


def test_webdataset_stage_refuses_what_it_cannot_occlude(shards):
    raw = next(iter(wds.WebDataset(shards, shardshuffle=False)))
    with pytest.raises(ValueError, match="decode\\('rgb8'\\)"):
        OccludeSample(SPEC)(raw)
    sample = next(iter(wds.WebDataset(shards, shardshuffle=False).decode("rgb8")))
    with pytest.raises(KeyError, match="landmarks"):
        OccludeSample(SPEC)({k: v for k, v in sample.items() if k != "json"})
    # an explicit landmark function and raw (undecoded) metadata
    stage = OccludeSample(SPEC, seed=1, landmarks=lambda s: LANDMARKS)
    out = stage({**sample, "json": contract.dumps(sample["json"]).encode()})
    assert isinstance(out["json"], bytes) and b"online_seed" in out["json"]
    expected = occsynth.occlude(sample["png"], LANDMARKS, SPEC, derive_seed(1, sample["__key__"]))
    assert np.array_equal(out["png"], expected.image)
