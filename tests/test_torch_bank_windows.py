"""The `bank` op samples each template only inside its window (issue 16, item 4): against the
whole-grid implementation it replaced, kept below as `_whole_grid_bank`, seeded batches give the
same masks and images within one grey level (the same draws, in the same order)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from occsynth.faces.templates import get_template
from occsynth.occluders.torch import TensorBank, TorchOccluder, _ops
from occsynth.occluders.torch import bank as bank_module
from occsynth.occluders.torch._ops import _blend, _codes, _Ctx, _int, _num
from occsynth.occluders.torch.bank import _boxes, _windows

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _whole_grid_bank(op, ctx, img, lm):
    """The `bank` op before the windows (bank.py at 6f161a1), arithmetic unchanged: one 3-D
    grid_sample of the template stack over every pixel of every image. Also returns alpha."""
    b = img.shape[0]
    W, H = ctx.width, ctx.height
    bank = ctx.banks[op.params["bank"]]
    prem, anchors, targets, sizes = bank.on(ctx.device)
    u = op._draws(ctx, b)
    n = len(bank)
    if op.params["index"] is None:
        idx = torch.clamp((u["index"] * n).long(), max=n - 1)
    else:
        idx = _int(op.params["index"], u["index"])
    scale = _num(op.params["scale"], u["scale"])
    rot = torch.deg2rad(_num(op.params["rotation"], u["rotation"]))
    placement = _codes(op.params["placement"], u["placement"], ("landmarks", "random"), "placement")
    a = anchors[idx]
    a_mid = a.mean(1)
    z_rot = torch.polar(torch.ones_like(rot), rot)
    pos = ctx.rand(b, 2)
    size = sizes[idx]
    centre_rand = torch.stack([torch.floor(pos[:, 0] * W) + 0.5, torch.floor(pos[:, 1] * H) + 0.5], 1)
    z_rand = torch.complex(scale, torch.zeros_like(scale)) * z_rot
    mid_rand = size / 2
    if lm is not None:
        lm = lm.to(torch.float64)
        eye_mid = (lm[:, 0] + lm[:, 1]) / 2
        ex = lm[:, 1] - lm[:, 0]
        ey = (lm[:, 3] + lm[:, 4]) / 2 - eye_mid
        shift = _num(op.params["shift"], u["shift"])
        t = targets[idx] + (shift.view(b, 1, 1) * (2 * ctx.rand(b, 1, 2) - 1))
        tp = eye_mid.view(b, 1, 2) + t[..., :1] * ex.view(b, 1, 2) + t[..., 1:] * ey.view(b, 1, 2)
        za = torch.complex(a[:, 1, 0] - a[:, 0, 0], a[:, 1, 1] - a[:, 0, 1])
        zt = torch.complex(tp[:, 1, 0] - tp[:, 0, 0], tp[:, 1, 1] - tp[:, 0, 1])
        z_lm = zt / za * scale * z_rot
        use_lm = placement == 0
        z = torch.where(use_lm, z_lm, z_rand)
        centre = torch.where(use_lm.view(b, 1), tp.mean(1), centre_rand)
        mid = torch.where(use_lm.view(b, 1), a_mid, mid_rand)
    else:
        z, centre, mid = z_rand, centre_rand, mid_rand
    ys, xs = ctx.grid()
    px = (xs.view(1, 1, W) + 0.5).double() - centre[:, 0].view(b, 1, 1)
    py = (ys.view(1, H, 1) + 0.5).double() - centre[:, 1].view(b, 1, 1)
    zi = (1.0 / z).view(b, 1, 1)
    tx = mid[:, 0].view(b, 1, 1) + px * zi.real - py * zi.imag
    ty = mid[:, 1].view(b, 1, 1) + px * zi.imag + py * zi.real
    th, tw = prem.shape[2], prem.shape[3]
    gz = ((2 * idx.double() + 1) / n - 1).view(b, 1, 1).expand(b, H, W)
    grid = torch.stack([tx / tw * 2 - 1, ty / th * 2 - 1, gz], -1).float().unsqueeze(0)
    sample = F.grid_sample(
        prem.permute(1, 0, 2, 3).unsqueeze(0), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )[0].permute(1, 0, 2, 3)
    alpha = sample[:, 3]
    own = alpha >= 0.5
    rgb = sample[:, :3] / alpha.clamp(min=1e-6).unsqueeze(1)
    rgb = ctx.lo + (ctx.hi - ctx.lo) * rgb.clamp(0, 1)
    if ctx.integer:
        rgb = torch.round(rgb)
    return _blend(img, rgb.to(img.dtype), own.unsqueeze(1)), own, alpha


def _bank(seed=0) -> TensorBank:
    """Templates of different sizes and shapes with soft alpha edges (many sampled alphas near
    0.5) and colour that varies over each template."""
    rng = np.random.default_rng(seed)
    arrays = []
    for h, w in ((23, 17), (32, 32), (20, 48), (9, 9), (40, 28)):
        yy, xx = np.mgrid[:h, :w] + 0.5
        r = np.sqrt(((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2)
        rgba = np.zeros((h, w, 4), dtype=np.uint8)
        rgba[..., :3] = rng.integers(0, 256, size=(h, w, 3))
        rgba[..., 3] = np.clip((1.1 - r) * 5, 0, 1) * 255  # ramps over the last tenth of the radius
        arrays.append(rgba)
    opaque = np.concatenate([rng.integers(0, 256, size=(12, 30, 3)), np.full((12, 30, 1), 255)], 2)
    arrays.append(opaque.astype(np.uint8))  # alpha 1 up to its edges: the window's bounds matter
    return TensorBank.from_arrays(arrays)


SPECS = [
    {"placement": "landmarks", "scale": [0.6, 1.8], "rotation": [-45, 45], "shift": 0.4},
    {"placement": "random", "scale": [0.5, 2.5], "rotation": [-180, 180]},
    {"placement": {"choice": ["landmarks", "random"]}, "scale": [0.3, 4.0], "rotation": [-90, 90], "shift": 1.5},
    {"placement": "random", "scale": 1.0, "index": 1},  # half-pixel offsets: exact alpha 0.5 ties
    {"placement": "landmarks", "scale": [4.0, 8.0], "index": 2},  # larger than the image
    {"placement": {"choice": ["landmarks", "random"]}, "scale": [0.5, 3.0], "rotation": [-180, 180], "index": 5},
]
IMAGES = [(torch.uint8, None, 112, 112), (torch.float32, None, 96, 80), (torch.float32, (-1.0, 1.0), 64, 112)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_landmarks", [True, False])
@pytest.mark.parametrize("dtype, value_range, h, w", IMAGES)
@pytest.mark.parametrize("params", SPECS)
def test_windows_match_the_whole_grid_sampling(params, dtype, value_range, h, w, with_landmarks, device):
    b = 48
    g = torch.Generator().manual_seed(7)
    images = torch.randint(0, 256, (b, 3, h, w), generator=g, dtype=torch.uint8)
    if dtype != torch.uint8:
        lo, hi = value_range or (0.0, 1.0)
        images = (lo + (hi - lo) * images.to(dtype) / 255.0).to(dtype)
    lm = None
    if with_landmarks:
        # the ArcFace points scaled to the image, jittered so that some templates leave the image
        points = torch.as_tensor(get_template("arcface-112x112").points, dtype=torch.float64)
        lm = points * torch.tensor([w / 112.0, h / 112.0], dtype=torch.float64)
        lm = lm + 30 * (torch.rand(b, 1, 2, generator=g, dtype=torch.float64) - 0.5)
        lm = lm.to(torch.float32).to(device)
    images = images.to(device)
    banks = {"default": _bank()}
    occ = TorchOccluder({"name": "bank", "params": params}, device=device, banks=banks, value_range=value_range)
    out, masks = occ(images, lm, torch.Generator(device).manual_seed(3))

    integer = dtype == torch.uint8
    lo, hi = (0.0, 255.0) if integer else (value_range or (0.0, 1.0))
    ctx = _Ctx(torch.Generator(device).manual_seed(3), images.device, lo, hi, integer, h, w, banks)
    ref_out, ref_own, ref_alpha = _whole_grid_bank(occ._root[1], ctx, images, lm)

    own = masks[:, 0]
    assert own.any()
    differ = own != ref_own
    # only alpha == 0.5 ties (the 2-D and 3-D samplers round differently) may flip
    assert not differ[(ref_alpha - 0.5).abs() > 1e-5].any()
    assert int(differ.sum()) <= max(1, own.numel() // 100_000), int(differ.sum())
    same = ~differ.unsqueeze(1).expand_as(out)
    # unpasted pixels are the input, untouched; pasted ones within one grey level of the old path
    untouched = (~own & ~ref_own).unsqueeze(1).expand_as(out)
    assert torch.equal(out[untouched], images[untouched])
    step = 1.0 if integer else (hi - lo) / 255.0
    assert float((out[same].double() - ref_out[same].double()).abs().max()) <= step


def test_chunks_do_not_change_the_result(monkeypatch):
    """Every sampled pixel is computed from its own coordinates only, so the chunking (and the
    window sizes it brings) leaves the output bit for bit the same."""
    banks = {"default": _bank()}
    params = {"placement": {"choice": ["landmarks", "random"]}, "scale": [0.3, 3.0], "rotation": [-90, 90]}
    occ = TorchOccluder({"name": "bank", "params": {**params, "shift": 0.5}}, banks=banks)
    images = torch.randint(0, 256, (40, 3, 72, 64), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    lm = (torch.as_tensor(get_template("arcface-112x112").points, dtype=torch.float32) * 0.6).expand(40, 5, 2)
    results = []
    for chunk in (3, 16, 1000):
        monkeypatch.setattr(bank_module, "CPU_CHUNK", chunk)
        results.append(occ(images, lm, torch.Generator().manual_seed(5)))
    for out, masks in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(masks, results[0][1])


def test_windows_written_by_indices_as_by_slices(monkeypatch):
    """Off CPU the templates are sampled in one grid_sample and the windows written by a gather
    and a scatter of indices, on CPU sample by sample and by a loop of slices: forced on CPU, the
    first path gives the same images and masks (uint8 and float)."""
    banks = {"default": _bank()}
    params = {"placement": {"choice": ["landmarks", "random"]}, "scale": [0.3, 3.0], "rotation": [-90, 90]}
    occ = TorchOccluder({"name": "bank", "params": params}, banks=banks)
    lm = (torch.as_tensor(get_template("arcface-112x112").points, dtype=torch.float32) * 0.6).expand(40, 5, 2)
    for dtype in (torch.uint8, torch.float32):
        images = torch.randint(0, 256, (40, 3, 72, 64), generator=torch.Generator().manual_seed(2)).to(dtype)
        monkeypatch.setattr(_ops, "SLICE_DEVICES", ("cpu",))
        by_slices = occ(images, lm, torch.Generator().manual_seed(7))
        monkeypatch.setattr(_ops, "SLICE_DEVICES", ())
        by_indices = occ(images, lm, torch.Generator().manual_seed(7))
        assert torch.equal(by_slices[0], by_indices[0]) and torch.equal(by_slices[1], by_indices[1])
        assert bool(by_slices[1].any()) and not torch.equal(by_slices[0], images)


def test_exact_half_alpha_ties_stay_exact():
    """At scale 1 with no rotation, random placement puts even-sized templates at half-pixel
    offsets, so edge pixels of an opaque template sample alpha = 0.5 exactly (weights 0.5):
    both samplers compute that exactly, and the tie is pasted (alpha >= 0.5) in both."""
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[2:6, 2:6] = 255
    bank = TensorBank.from_arrays([rgba])
    images = torch.zeros(32, 3, 40, 40, dtype=torch.uint8)
    occ = TorchOccluder("bank(placement=random)", banks={"default": bank})
    _, masks = occ(images, None, torch.Generator().manual_seed(0))
    ctx = _Ctx(torch.Generator().manual_seed(0), images.device, 0.0, 255.0, True, 40, 40, {"default": bank})
    _, ref_own, ref_alpha = _whole_grid_bank(occ._root[1], ctx, images, None)
    assert bool((ref_alpha == 0.5).any())
    assert torch.equal(masks[:, 0], ref_own)
    # the 4x4 opaque square lands half a pixel off the grid: 3 x 3 whole pixels, the 12 edge
    # pixels half covered (alpha 0.5, pasted), the 4 corners a quarter (alpha 0.25, not pasted)
    inside = masks[:, 0].sum((1, 2))
    assert int(inside.max()) == 3 * 3 + 12
    assert bool((ref_alpha == 0.25).any())


def test_windows_hold_every_pasted_pixel_one_sample_at_a_time():
    """With one sample the window is that sample's own box (no slack from larger neighbours):
    an opaque template, rotated, scaled, shifted and cut by the border, is pasted exactly as by
    the whole-grid sampling."""
    banks = {"default": _bank()}
    params = {"placement": {"choice": ["landmarks", "random"]}, "scale": [0.5, 3.0], "rotation": [-180, 180]}
    occ = TorchOccluder({"name": "bank", "params": {**params, "index": 5, "shift": 0.8}}, banks=banks)
    points = torch.as_tensor(get_template("arcface-112x112").points, dtype=torch.float32)
    lm = (points * 0.5).expand(1, 5, 2)
    images = torch.randint(0, 256, (1, 3, 56, 56), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    cut, before = 0, images.clone()
    for seed in range(60):
        out, masks = occ(images, lm, torch.Generator().manual_seed(seed))
        assert torch.equal(images, before)  # the input is never written
        ctx = _Ctx(torch.Generator().manual_seed(seed), images.device, 0.0, 255.0, True, 56, 56, banks)
        ref_out, ref_own, _ = _whole_grid_bank(occ._root[1], ctx, images, lm)
        assert torch.equal(masks[:, 0], ref_own), seed
        assert int((out.int() - ref_out.int()).abs().max()) <= 1
        border = ref_own[0, 0].any() | ref_own[0, -1].any() | ref_own[0, :, 0].any() | ref_own[0, :, -1].any()
        cut += int(border)
    assert 5 <= cut <= 55  # some templates cut by the border, some whole


def test_extents_are_the_boxes_of_the_visible_pixels():
    a = np.zeros((6, 10, 4), dtype=np.uint8)
    a[1:4, 2:7, 3] = 1  # alpha 1/255 still counts
    b = np.zeros((3, 3, 4), dtype=np.uint8)  # fully transparent
    bank = TensorBank.from_arrays([a, b, np.full((2, 4, 4), 255, dtype=np.uint8)])
    assert bank.extents.tolist() == [[2, 1, 7, 4], [0, 0, 0, 0], [0, 0, 4, 2]]


def test_window_of_a_scaled_template_by_hand():
    """A 10x10 template at scale 2 centred on (20.5, 30.5): it covers [10.5, 30.5] x [20.5, 40.5];
    grown by one template pixel (2 output pixels) and one output pixel, the pixels 7..33 in x and
    17..43 in y. Near the right border the window keeps its size and moves inside the image."""
    rect = torch.tensor([[0.0, 0.0, 10.0, 10.0]], dtype=torch.float64)
    z = torch.tensor([2.0 + 0.0j], dtype=torch.complex128)
    mid = torch.tensor([[5.0, 5.0]], dtype=torch.float64)
    box = _boxes(rect, z, torch.tensor([[20.5, 30.5]], dtype=torch.float64), mid, 64, 64)
    assert [int(v) for v in box] == [7, 17, 34, 44]
    assert _windows(*box, 64, 64)[2:] == (27, 27)
    # a box cut by the border: 47..63; in a window of 27 columns, those start at 64 - 27
    centres = torch.tensor([[20.5, 30.5], [60.5, 30.5], [500.5, 30.5]], dtype=torch.float64)
    x0, y0, x1, y1 = _boxes(rect.expand(3, 4), z.expand(3), centres, mid.expand(3, 2), 64, 64)
    assert x0.tolist() == [7, 47, 64] and x1.tolist() == [34, 64, 64]  # the third: off the image
    wx, wy, bh, bw = _windows(x0, y0, x1, y1, 64, 64)
    assert wx.tolist() == [7, 64 - 27, 64 - 27] and wy.tolist() == [17, 17, 17] and (bh, bw) == (27, 27)
    # only the visible pixels' box counts: a template visible in its left half only
    half = torch.tensor([[0.0, 0.0, 5.0, 10.0]], dtype=torch.float64)
    box = _boxes(half, z, torch.tensor([[20.5, 30.5]], dtype=torch.float64), mid, 64, 64)
    assert [int(v) for v in box] == [7, 17, 24, 44]
    # a non-finite placement (degenerate landmarks): the whole image
    box = _boxes(rect, torch.tensor([complex("nan")]), mid, mid, 64, 48)
    assert [int(v) for v in box] == [0, 0, 48, 64]
