"""The shard stream and the keyed evaluation dataset on contract-following tiny shards."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import DataLoader
from train_fixtures import build_train_set, lfw_faces

from occsynth_train.data.batch import prepare_batch
from occsynth_train.data.keyed import KeyedDataset
from occsynth_train.data.labels import LabelMap
from occsynth_train.data.loaders import make_train_loader
from occsynth_train.data.stream import ShardStream


def _metas(root):
    return {m["key"]: m for m in map(json.loads, (root / "index.jsonl").read_text().splitlines())}


def _stream(root, batch_size=5, **kw):
    labels = LabelMap.from_datasets([root])
    kw.setdefault("shuffle_buffer", 8)
    return ShardStream([root], labels, batch_size, seed=3, **kw), labels


def test_batches_follow_the_contract(tiny_train):
    stream, labels = _stream(tiny_train, flip=False)
    metas = _metas(tiny_train)
    batch = next(iter(stream))
    assert batch["images"].dtype == torch.uint8 and batch["images"].shape == (5, 3, 112, 112)
    assert batch["masks"].shape == (5, 1, 112, 112) and set(batch["masks"].unique().tolist()) <= {0, 1}
    for i, key in enumerate(batch["keys"]):
        meta = metas[key]
        assert batch["labels"][i].item() == labels[meta["identity"]]
        assert batch["masks"][i].float().mean().item() == pytest.approx(meta["occlusion_ratio"])
        assert batch["has_clean"][i]
        visible = batch["masks"][i, 0] == 0
        # the clean face equals the occluded one wherever nothing was occluded (lossless PNG)
        assert torch.equal(batch["clean"][i][:, visible], batch["images"][i][:, visible])
        assert torch.allclose(batch["landmarks"][i], torch.tensor(meta["landmarks"], dtype=torch.float32))


def test_flip_moves_image_mask_and_landmarks_together(tiny_train):
    plain = {
        k: (im, m)
        for b in [next(iter(_stream(tiny_train, batch_size=50, flip=False)[0]))]
        for k, im, m in zip(b["keys"], b["images"], b["masks"])
    }
    flipped = next(iter(_stream(tiny_train, batch_size=50, flip=True)[0]))
    n_flipped = 0
    metas = _metas(tiny_train)
    for key, image, mask, lm, meta in zip(
        flipped["keys"], flipped["images"], flipped["masks"], flipped["landmarks"], flipped["meta"]
    ):
        # the sample's records travel with it, unflipped, with the loader's flip decision beside them
        assert meta["occluders"] == metas[key]["occluders"] and meta["extra"] == (metas[key].get("extra") or {})
        assert meta["flipped"] == (not torch.equal(image, plain[key][0]))
        if meta["flipped"]:
            n_flipped += 1
            assert torch.equal(image, plain[key][0].flip(-1)) and torch.equal(mask, plain[key][1].flip(-1))
            assert lm[0, 0] < lm[1, 0]  # still left eye first, in image order
            for rec in meta["occluders"]:  # the recorded block, mirrored, is where the mask is
                x, y, side = rec["params"]["x"], rec["params"]["y"], rec["params"]["width"]
                assert mask[0, y : y + side, 112 - x - side : 112 - x].all()
    assert 10 < n_flipped < 40  # about half


def test_labels_are_contiguous_and_round_trip(tiny_train, tmp_path):
    labels = LabelMap.from_datasets([tiny_train])
    assert len(labels) == 10 and [labels[n] for n in labels.identities] == list(range(10))
    labels.save(tmp_path / "labels.json")
    again = LabelMap.load(tmp_path / "labels.json")
    assert again.identities == labels.identities
    with pytest.raises(KeyError, match="labels.json"):
        labels["nobody"]


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_partition_each_epoch(tiny_train, world_size):
    """One epoch over all slots covers every sample exactly once (4 shards: shard split for 2
    slots, sample split for 3... and shard split for 3 too since 4 >= 3)."""
    all_keys = set(_metas(tiny_train))
    seen = []
    for rank in range(world_size):
        stream, _ = _stream(tiny_train, batch_size=1, rank=rank, world_size=world_size)
        n = stream._epoch_size(0, rank, world_size)
        it = iter(stream)
        seen += [next(it)["keys"][0] for _ in range(n)]
    assert len(seen) == len(all_keys) and set(seen) == all_keys


def test_sample_split_when_fewer_shards_than_slots(tmp_path, sk_faces):  # noqa: F811
    root = build_train_set(tmp_path / "one_shard", sk_faces, shard_size=100)
    seen = []
    for rank in range(3):
        stream, _ = _stream(root, batch_size=1, rank=rank, world_size=3)
        it = iter(stream)
        seen += [next(it)["keys"][0] for _ in range(stream._epoch_size(0, rank, 3))]
    assert sorted(seen) == sorted(_metas(root))


def test_resumed_stream_continues_exactly_with_workers(tiny_train):
    """Batches after resuming at samples_seen = T * batch equal batches T.. of the original
    stream, with 2 DataLoader workers (round-robin order) and across an epoch boundary."""
    stream, labels = _stream(tiny_train, batch_size=4)
    loader = make_train_loader(stream, num_workers=2, prefetch_factor=2)
    original = []
    for batch in loader:
        original.append(batch["keys"])
        if len(original) == 18:  # 72 samples > one 50-sample epoch
            break
    resumed = ShardStream([tiny_train], labels, 4, seed=3, shuffle_buffer=8, samples_seen=7 * 4)
    again = []
    for batch in make_train_loader(resumed, num_workers=2, prefetch_factor=2):
        again.append(batch["keys"])
        if len(again) == 11:
            break
    assert again == original[7:]


def test_clean_pairing_by_source(tmp_path, sk_faces):  # noqa: F811
    root = build_train_set(tmp_path / "variants", sk_faces, clean_variant=True, keep_clean=False)
    stream, _ = _stream(root, batch_size=20, flip=False)
    batch = next(iter(stream))
    metas = _metas(root)
    assert batch["has_clean"].all()
    for i, key in enumerate(batch["keys"]):
        visible = batch["masks"][i, 0] == 0
        assert torch.equal(batch["clean"][i][:, visible], batch["images"][i][:, visible])
        if metas[key]["occluders"]:
            assert not torch.equal(batch["clean"][i], batch["images"][i])
    stream, _ = _stream(root, batch_size=20, pairing=False)
    assert not next(iter(stream))["has_clean"].any()


class StandInOccluder:
    """Stands in for occsynth.occluders.torch.TorchOccluder: blacks out the left quarter."""

    def __call__(self, images, landmarks, generator):
        masks = torch.zeros(images.shape[0], 1, *images.shape[-2:], dtype=torch.bool, device=images.device)
        masks[..., : images.shape[-1] // 4] = True
        return images.masked_fill(masks, 0.0), masks


def test_prepare_batch_online_occlusion_resize_normalise(tiny_train):
    stream, _ = _stream(tiny_train, batch_size=8, flip=False, pairing=False)
    raw = next(iter(stream))
    stored_clean = raw["masks"].flatten(1).amax(1) == 0
    batch = prepare_batch(raw, torch.device("cpu"), input_size=(56, 56), occluder=StandInOccluder())
    assert batch.images.shape == (8, 3, 56, 56) and batch.masks.shape == (8, 1, 56, 56)
    assert batch.images.min() >= -1.0 and batch.images.max() <= 1.0
    assert (batch.masks[..., :14] == 1).all()  # online mask united with the stored one
    assert torch.equal(batch.has_clean, stored_clean)  # stored-clean samples adopt their pre-occlusion image
    i = int(torch.nonzero(stored_clean)[0])
    assert batch.clean[i, :, :, :14].mean() > -0.95 and torch.allclose(
        batch.images[i, :, :, :13], torch.tensor(-1.0)
    )  # col 13 blends when resized
    assert torch.allclose(batch.landmarks[0], (raw["landmarks"][0] + 0.5) * 0.5 - 0.5)


def test_keyed_dataset_random_access(tiny_train):
    ds = KeyedDataset(tiny_train)
    metas = _metas(tiny_train)
    assert ds.keys == sorted(metas) and len(ds) == 50
    item = ds[ds.position["000007"]]
    assert item["image"].shape == (3, 112, 112) and item["image"].dtype == torch.uint8
    assert item["mask"].float().mean().item() == pytest.approx(metas["000007"]["occlusion_ratio"])
    batch = next(iter(DataLoader(ds, batch_size=50, num_workers=1)))  # file handles re-opened in the worker
    assert torch.equal(batch["image"][7], item["image"])


@pytest.mark.lfw
def test_real_lfw_fixture_dataset(lfw_tgz, tmp_path):
    faces = lfw_faces(lfw_tgz, num_identities=10)
    assert len(faces) == 10 and all(4 <= len(v) <= 6 for v in faces.values())
    root = build_train_set(tmp_path / "lfw", faces)
    stream, labels = _stream(root, batch_size=8)
    batch = next(iter(stream))
    assert len(labels) == 10 and batch["images"].shape == (8, 3, 112, 112)
    assert batch["images"].float().std() > 20  # real photographs, not blank crops
