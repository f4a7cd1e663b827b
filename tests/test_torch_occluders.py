"""The batched torch path: exact masks, determinism, devices, template bank, and statistical
equivalence with the CPU path (two-sample KS tests on achieved ratios and positions)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp

from occsynth.faces.templates import get_template
from occsynth.occluders import Composer
from occsynth.occluders.families import geometric as G
from occsynth.occluders.torch import TensorBank, TorchOccluder, kth_smallest
from occsynth.seeding import make_rng

FAMILIES = ("block", "rectangle", "ellipse", "polygon", "blob", "pieces")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # intra-op threads spin against each other on a shared 2-core runner (40x slower here)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _batch(b=16, h=112, w=112, seed=0, dtype=torch.uint8):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(1, 255, (b, 3, h, w), generator=g, dtype=torch.uint8)
    return images if dtype == torch.uint8 else images.to(dtype) / 255.0


def _gen(seed, device="cpu"):
    return torch.Generator(device=device).manual_seed(seed)


@pytest.mark.parametrize("fill", G.FILLS)
@pytest.mark.parametrize("name", FAMILIES)
def test_masks_are_exact(name, fill):
    images = _batch()
    if fill == "mean":
        images = torch.where(images < 128, 40, 210).to(torch.uint8)  # no pixel equals the mean
    out, masks = TorchOccluder(f"{name}(ratio=0.1..0.5, fill={fill})")(images, None, _gen(1))
    assert out.dtype == images.dtype and out.shape == images.shape
    assert masks.dtype == torch.bool and masks.shape == (16, 1, 112, 112)
    changed = (out != images).any(1, keepdim=True)
    assert not (changed & ~masks).any()
    missed = int((masks & ~changed).sum())
    if fill in ("black", "white", "mean"):
        assert missed == 0
    else:
        assert missed <= max(2, 0.005 * int(masks.sum()))


def test_float_images_use_their_value_range():
    images = _batch(dtype=torch.float32)
    out, masks = TorchOccluder("rectangle(ratio=0.3, fill=white)")(images, None, _gen(0))
    assert out.dtype == torch.float32
    assert torch.all(out[masks.expand_as(out)] == 1.0)
    assert torch.equal(out[~masks.expand_as(out)], images[~masks.expand_as(out)])
    out, masks = TorchOccluder("rectangle(ratio=0.3, fill=white)", value_range=(-1.0, 1.0))(images, None, _gen(0))
    assert torch.all(out[masks.expand_as(out)] == 1.0)
    out, masks = TorchOccluder("ellipse(ratio=0.3, fill=black)", value_range=(-1.0, 1.0))(images, None, _gen(0))
    assert torch.all(out[masks.expand_as(out)] == -1.0)


@pytest.mark.parametrize("name", ["ellipse", "polygon", "blob"])
def test_gauge_shapes_have_exactly_k_pixels(name):
    _, masks = TorchOccluder(f"{name}(ratio=0.2)")(_batch(32), None, _gen(3))
    counts = masks.sum((1, 2, 3))
    assert torch.all((counts - round(0.2 * 112 * 112)).abs() <= 2)  # ties of the gauge aside


@pytest.mark.parametrize("name", ["block", "rectangle", "pieces"])
def test_box_families_are_within_one_point(name):
    ratio = "0.05..0.3"
    _, masks = TorchOccluder(f"{name}(ratio={ratio})")(_batch(64, 112, 96), None, _gen(4))
    achieved = masks.float().mean((1, 2, 3))
    assert torch.all(achieved > 0.04) and torch.all(achieved < 0.31)


def test_pieces_are_disjoint_in_the_batch():
    from scipy import ndimage

    _, masks = TorchOccluder("pieces(ratio=0.1..0.3, n=3)")(_batch(32), None, _gen(5))
    for m in masks[:, 0].numpy():
        assert ndimage.label(m, structure=np.ones((3, 3)))[1] == 3


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic_with_a_seeded_generator_and_inputs_untouched(device):
    images = _batch(8).to(device)
    before = images.clone()
    occluder = TorchOccluder("0.3*clean | 0.7*shapes", device=device)
    a = occluder(images, None, _gen(7, device))
    b = occluder(images, None, _gen(7, device))
    c = occluder(images, None, _gen(8, device))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    assert torch.equal(images, before)
    assert a[0].device == images.device and a[1].device == images.device


def test_cpu_generator_with_images_elsewhere_is_accepted():
    # the draws are made on the generator's device and moved: same output as all-CPU here
    images = _batch(4)
    a = TorchOccluder("ellipse(fill=noise)")(images, None, _gen(2))
    b = TorchOccluder("ellipse(fill=noise)", device="cpu")(images.clone(), None, _gen(2))
    assert torch.equal(a[0], b[0])


def test_mix_weights_and_sequences():
    images = _batch(4000, 16, 16)
    _, masks = TorchOccluder("0.2*clean | 0.8*block(ratio=0.3)")(images, None, _gen(0))
    occluded = int(masks.any((1, 2, 3)).sum())
    assert abs(occluded - 3200) < 4.5 * math.sqrt(4000 * 0.2 * 0.8)
    out, masks = TorchOccluder("rectangle(ratio=0.1) + ellipse(ratio=0.1)")(_batch(16), None, _gen(1))
    area = masks.float().mean((1, 2, 3))
    assert torch.all(area >= 0.099) and torch.all(area <= 0.201)


def test_presets_and_unsupported_families():
    TorchOccluder("lfw-block-30")
    TorchOccluder("shapes")
    with pytest.raises(KeyError, match="TensorBank"):
        TorchOccluder("sunglasses")
    with pytest.raises(ValueError):
        TorchOccluder("ellipse(colour=red)")


def test_kth_smallest_is_exact():
    g = torch.rand(6, 1000, generator=_gen(0))
    k = torch.tensor([1, 5, 100, 500, 999, 1000])
    t = kth_smallest(g, k, torch.full((6,), 0.3, dtype=torch.float64), power=2)
    assert torch.equal((g <= t[:, None]).sum(1), k)


# ------------------------------------------------------------------ template bank


def _disk_template(size=32, colour=(255, 0, 0)):
    yy, xx = np.mgrid[:size, :size] + 0.5
    alpha = ((xx - size / 2) ** 2 + (yy - size / 2) ** 2 <= (size / 2 - 1) ** 2) * 255
    rgba = np.zeros((size, size, 4), dtype=np.uint8)
    rgba[..., :3] = colour
    rgba[..., 3] = alpha
    return rgba


def test_template_bank_pastes_at_the_landmarks():
    bank = TensorBank.from_arrays([_disk_template(32, (255, 0, 0)), _disk_template(20, (0, 0, 255))])
    assert bank.premultiplied.shape == (2, 4, 32, 32)
    assert bank.sizes.tolist() == [[32.0, 32.0], [20.0, 20.0]]
    lm = torch.tensor(get_template("arcface-112x112").points, dtype=torch.float32).expand(16, 5, 2)
    images = _batch(16)
    out, masks = TorchOccluder("bank", banks={"default": bank})(images, lm, _gen(0))
    changed = (out != images).any(1, keepdim=True)
    assert not (changed & ~masks).any()
    painted = out.permute(0, 2, 3, 1)[masks[:, 0]]
    is_red = (painted == torch.tensor([255, 0, 0], dtype=torch.uint8)).all(1)
    is_blue = (painted == torch.tensor([0, 0, 255], dtype=torch.uint8)).all(1)
    assert torch.all(is_red | is_blue)  # hard-edged: only template colours inside the mask
    eyes = lm[0, :2].mean(0)
    iod = float(lm[0, 1, 0] - lm[0, 0, 0])
    for m in masks[:, 0]:
        ys, xs = torch.nonzero(m, as_tuple=True)
        # default anchors: the template spans 2 inter-ocular distances centred between the eyes
        assert abs(float(xs.float().mean()) + 0.5 - float(eyes[0])) < 1.0
        assert abs(float(ys.float().mean()) + 0.5 - float(eyes[1])) < 1.0
        assert abs(int(xs.max() - xs.min() + 1) - 2 * iod * 30 / 32) <= 3


def test_template_bank_random_placement_without_landmarks():
    bank = TensorBank.from_arrays([_disk_template(24)])
    images = _batch(64)
    out, masks = TorchOccluder("bank(scale=2.0, placement=random)", banks={"default": bank})(images, None, _gen(1))
    area = masks.sum((1, 2, 3)).float()
    disk = math.pi * (2 * 11) ** 2
    assert torch.all(area <= disk * 1.05) and float(area.max()) > 0.9 * disk  # cut by the border, or whole
    a = TorchOccluder("bank(scale=2.0)", banks={"default": bank})(images, None, _gen(1))
    assert torch.equal(a[1], TorchOccluder("bank(scale=2.0)", banks={"default": bank})(images, None, _gen(1))[1])


# ------------------------------------------------------------------ equivalence with the CPU path

N = 2000
SIZE = 48
EQUIVALENCE = [
    "block(ratio=0.02..0.6)",
    "block(ratio=0.3..0.95)",
    "rectangle(ratio=0.02..0.6)",
    "rectangle(ratio=0.3..0.95, aspect=0.3..3)",
    "ellipse(ratio=0.02..0.7)",
    "ellipse(ratio=0.3..0.95, overflow=shrink)",
    "polygon(ratio=0.02..0.7)",
    "polygon(ratio=0.3..0.95, overflow=shrink)",
    "blob(ratio=0.02..0.7)",
    "blob(ratio=0.3..0.95, overflow=shrink)",
    "pieces(ratio=0.05..0.3, n=3..6)",
    "pieces(ratio=0.2..0.55)",
]


def _stats(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Achieved ratio and mask centroid x (0.5 for an empty mask) per sample."""
    count = masks.sum((1, 2))
    cx = (masks * np.arange(masks.shape[2])).sum((1, 2)) / np.maximum(count, 1)
    return count / masks[0].size, np.where(count > 0, cx / masks.shape[2], 0.5)


@pytest.mark.parametrize("spec", EQUIVALENCE)
def test_torch_and_cpu_paths_are_statistically_equivalent(spec):
    image = np.full((SIZE, SIZE, 3), 100, dtype=np.uint8)
    occluder = Composer(spec)._root[1]  # the compiled occluder; apply() skips the record keeping
    cpu = np.stack([occluder.apply(image, np.zeros((5, 2)), make_rng(seed))[1] for seed in range(N)])
    _, masks = TorchOccluder(spec)(torch.full((N, 3, SIZE, SIZE), 100, dtype=torch.uint8), None, _gen(12345))
    gpu_like = masks[:, 0].numpy()
    for what, a, b in zip(("ratio", "centroid x"), _stats(cpu), _stats(gpu_like)):
        # seeded on both sides, so deterministic; 0.001 leaves room for 24 comparisons
        assert ks_2samp(a, b).pvalue > 0.001, (spec, what, ks_2samp(a, b))


def test_tensor_bank_from_the_object_bank_places_sunglasses_over_the_eyes():
    """The shipped object bank on batches: a sunglasses template lands between the eyes."""
    from occsynth.faces.templates import get_template

    bank = TensorBank.from_template_bank(categories=["sunglasses"], split="train")
    assert len(bank) > 0 and all(name.startswith("sunglasses") for name in bank.names)
    lm = torch.as_tensor(get_template("arcface").points, dtype=torch.float64)
    images = torch.full((8, 3, 112, 112), 128, dtype=torch.uint8)
    occ = TorchOccluder({"name": "bank", "params": {"bank": "objects"}}, banks={"objects": bank})
    _, masks = occ(images, lm.expand(8, 5, 2), torch.Generator().manual_seed(0))
    for m in masks[:, 0]:
        ys, xs = torch.nonzero(m, as_tuple=True)
        assert len(ys) > 200
        eye_y = float(lm[:2, 1].mean())
        assert abs(float(ys.float().mean()) - eye_y) < 8  # the band sits on the eye line
        assert float(xs.min()) < float(lm[0, 0]) and float(xs.max()) > float(lm[1, 0])  # covers both eyes
