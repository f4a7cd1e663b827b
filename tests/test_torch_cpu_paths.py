"""The CPU speed paths of the batched ops give what the general ones give: a polygon's sector
found by counting comparisons equals searchsorted's, for every vertex count it is used for; the
paint blended in chunks of images equals the whole-batch blend; texture fills computed for the
samples that use them only, in box windows, equal the whole-batch texture; noise drawn the same
way paints its samples' masks only; the k-th smallest gauge gives the same mask whatever the
number of Newton steps before its exact correction."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from occsynth.occluders.families import geometric as G
from occsynth.occluders.torch import TorchOccluder, _ops, kth_smallest, shapes


def _run(spec: str, seed: int):
    images = torch.randint(0, 256, (48, 3, 40, 36), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    return TorchOccluder(spec)(images, None, torch.Generator().manual_seed(seed))


def test_polygon_sectors_by_counting_equal_searchsorted(monkeypatch):
    specs = [f"polygon(vertices={n}, spikiness=0.0..0.9, ratio=0.05..0.95, overflow=shrink)" for n in (3, 7, 16)]
    specs.append("polygon(vertices=3..16, ratio=0.1..0.6)")
    counted = [_run(spec, seed) for spec in specs for seed in range(3)]
    monkeypatch.setattr(shapes, "SECTOR_COUNT_MAX", 0)  # searchsorted for every vertex count
    searched = [_run(spec, seed) for spec in specs for seed in range(3)]
    for (image_a, mask_a), (image_b, mask_b) in zip(counted, searched):
        assert torch.equal(mask_a, mask_b) and torch.equal(image_a, image_b)
    assert all(bool(mask.any()) for _, mask in counted)


def test_paint_in_chunks_equals_the_whole_batch_blend(monkeypatch):
    runs = []
    for chunk in (5, 16, 10_000):  # 10,000: one blend over the whole batch, as before the chunks
        monkeypatch.setattr(_ops, "PAINT_CHUNK", chunk)
        out = []
        for seed in range(2):
            for dtype in (torch.uint8, torch.float32):
                images = torch.randint(0, 256, (48, 3, 40, 36), generator=torch.Generator().manual_seed(seed))
                images = images.to(dtype) if dtype == torch.uint8 else images.to(dtype) / 255
                for fill in ("black", "white", "mean", "noise", "texture"):
                    for shape in ("block", "ellipse"):
                        occluder = TorchOccluder(f"{shape}(ratio=0.05..0.5, fill={fill})")
                        out.append(occluder(images, None, torch.Generator().manual_seed(seed)))
        runs.append(out)
    for other in runs[1:]:
        for (image_a, mask_a), (image_b, mask_b) in zip(runs[0], other):
            assert torch.equal(mask_a, mask_b) and torch.equal(image_a, image_b)
    assert all(bool(mask.any()) for _, mask in runs[0])


@pytest.mark.parametrize("partition", [("cpu",), ()])  # NumPy's selection on CPU, or the Newton steps
def test_kth_smallest_mask_is_the_same_whatever_the_newton_steps(partition, monkeypatch):
    """Rows of gauges with ties (values on a coarse grid), k from 1 to the whole row: {g <= t}
    holds the k smallest (all members of a tie at the k-th value) for 0 to 6 steps alike."""
    monkeypatch.setattr(_ops, "PARTITION_DEVICES", partition)
    gen = torch.Generator().manual_seed(0)
    g = torch.floor(torch.rand(64, 500, generator=gen) * 300) / 300 + torch.rand(64, 1, generator=gen)
    k = torch.randint(1, 501, (64,), generator=gen)
    guess = torch.rand(64, generator=gen, dtype=torch.float64) + 0.5
    expected = g <= g.sort(1).values.gather(1, (k - 1).view(-1, 1))
    for steps in (0, 1, 3, 6):
        for power in (1, 2):
            t = kth_smallest(g, k, guess, power, steps=steps)
            assert torch.equal(g <= t.view(-1, 1), expected), (steps, power)


def _whole_batch_paint(ctx, img, own, fill, box):
    """_ops._paint at 220f38b, chunks left out: noise and texture computed for every sample and
    blended where chosen."""
    b, c, h, w = img.shape
    code = fill.view(b, 1, 1, 1)
    colour = torch.where(code == G.FILLS.index("white"), ctx.hi, ctx.lo).to(torch.float32).expand(b, c, 1, 1)
    if bool((fill == G.FILLS.index("mean")).any()):
        mean = img.float().mean(dim=(2, 3), keepdim=True)
        mean = torch.round(mean) if ctx.integer else mean
        colour = torch.where(code == G.FILLS.index("mean"), mean, colour)
    where = own.unsqueeze(1)
    out = _ops._blend(img, colour.to(img.dtype), where)
    for name in ("noise", "texture"):
        chosen = fill == G.FILLS.index(name)
        if not bool(chosen.any()):
            continue
        if name == "noise":
            u = ctx.rand(b, c, h, w, dtype=torch.float32)
            value = torch.floor(u * 256.0).clamp(max=255.0) if ctx.integer else ctx.lo + (ctx.hi - ctx.lo) * u
        else:
            cells = G.TEXTURE_CELLS
            grid = torch.floor(ctx.rand(b, c, cells, cells, dtype=torch.float32) * 256.0).clamp(max=255.0)
            boxes = box if box is not None else _ops._box(own)
            # the texture over whole frames (the texture arithmetic itself, since separable, is
            # compared with grid_sample's in test_texture_is_grid_samples_bicubic)
            value = _ops._texture(ctx, grid, boxes)
        out = _ops._blend(out, value.to(img.dtype), _ops._and(where, chosen.view(b, 1, 1, 1)))
    return out


@pytest.mark.parametrize("windows", [("cpu",), ()])  # texture in box windows (CPU), or over whole frames
def test_textures_computed_for_their_samples_only_equal_the_whole_batch(windows, monkeypatch):
    """Texture values are the whole frame's at each pixel, computed for the samples that use
    texture only, in box windows or not (noise is left out: it draws fewer numbers now)."""
    specs = [
        ("block", {"choice": ["black", "texture", "mean"]}),  # block and rectangle pass their box
        ("ellipse", {"choice": ["white", "texture"]}),  # the others' box is the mask's
        ("polygon", "texture"),
        ("pieces", "texture"),
    ]
    monkeypatch.setattr(_ops, "FILL_CHUNK", 7)  # several window sizes
    monkeypatch.setattr(_ops, "SLICE_DEVICES", windows)
    for name, fill in specs:
        spec = {"name": name, "params": {"ratio": [0.05, 0.5], "fill": fill}}
        for dtype in (torch.uint8, torch.float32):
            images = torch.randint(0, 256, (40, 3, 48, 40), generator=torch.Generator().manual_seed(4)).to(dtype)
            images = images if dtype == torch.uint8 else images / 255
            new = TorchOccluder(spec)(images, None, torch.Generator().manual_seed(9))
            monkeypatch.setattr(shapes, "_paint", _whole_batch_paint)
            old = TorchOccluder(spec)(images, None, torch.Generator().manual_seed(9))
            monkeypatch.setattr(shapes, "_paint", _ops._paint)
            assert torch.equal(new[1], old[1]) and torch.equal(new[0], old[0]), (spec, dtype)
            assert bool(new[1].any()), spec


@pytest.mark.parametrize("windows", [("cpu",), ()])  # noise in box windows (CPU), or over whole frames
def test_noise_for_some_samples_fills_their_masks_only(windows, monkeypatch):
    """Noise drawn for the samples that use it only: the others are painted as their own fill,
    the noise samples' masks hold varied values, and no pixel outside a mask changes."""
    monkeypatch.setattr(_ops, "SLICE_DEVICES", windows)
    images = torch.randint(0, 256, (64, 3, 40, 36), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    occluder = TorchOccluder(
        {"name": "ellipse", "params": {"ratio": [0.1, 0.5], "fill": {"choice": ["black", "noise"]}}}
    )
    out, masks = occluder(images, None, torch.Generator().manual_seed(2))
    own = masks[:, 0]
    assert torch.equal(out[~own.unsqueeze(1).expand_as(out)], images[~own.unsqueeze(1).expand_as(images)])
    black = torch.tensor([bool((out[i][:, own[i]] == 0).all()) for i in range(64)])
    noisy = torch.tensor([len(torch.unique(out[i][:, own[i]])) > 100 for i in range(64)])
    assert bool((black ^ noisy).all()) and 10 < int(noisy.sum()) < 54


def _ctx(dtype, h=30, w=26):
    integer = dtype == torch.uint8
    return _ops._Ctx(
        torch.Generator().manual_seed(1), torch.device("cpu"), 0.0, 255.0 if integer else 1.0, integer, h, w, {}
    )


@pytest.mark.parametrize("windows", [("cpu",), ()])
@pytest.mark.parametrize("name", ["noise", "texture"])
def test_a_batch_of_laid_fills_only_starts_from_the_images_as_the_colour_blend_would_give(name, windows, monkeypatch):
    """_paint skips the colour blend when every sample's fill is laid over its mask (noise,
    texture): the same samples beside one black one (which takes the blend) come out the same,
    the draws being made for the laid samples only."""
    monkeypatch.setattr(_ops, "SLICE_DEVICES", windows)
    monkeypatch.setattr(_ops, "FILL_CHUNK", 5)
    gen = torch.Generator().manual_seed(6)
    for dtype in (torch.uint8, torch.float32):
        img = torch.randint(0, 256, (13, 3, 30, 26), generator=gen).to(dtype)
        img = img if dtype == torch.uint8 else img / 255
        own = torch.rand(13, 30, 26, generator=gen) < 0.3
        own[:, :4] = False  # boxes smaller than the frame
        own[3] = False  # and an empty mask
        code = G.FILLS.index(name)
        laid = _ops._paint(_ctx(dtype), img, own, torch.full((13,), code), None)
        fill = torch.cat([torch.full((13,), code), torch.tensor([G.FILLS.index("black")])])
        mixed = _ops._paint(_ctx(dtype), torch.cat([img, img[:1]]), torch.cat([own, own[:1]]), fill, None)
        assert torch.equal(laid, mixed[:13]), dtype
        assert torch.equal(laid[~own.unsqueeze(1).expand_as(img)], img[~own.unsqueeze(1).expand_as(img)])
        assert not torch.equal(laid, img)


def test_texture_is_grid_samples_bicubic():
    """_ops._texture (separable weights, element-wise) against grid_sample's bicubic mode
    (border padding, align_corners=False), which it replaced, on the same grids and boxes: boxes
    inside, across and beyond the frame's edges, 1 px to larger than the frame. Equal but where
    float rounding moves a value at an exact half: off by 1 there, at under 1 pixel in 1,000."""
    gen = torch.Generator().manual_seed(3)
    n, h, w = 96, 60, 52
    ctx = _ops._Ctx(gen, torch.device("cpu"), 0.0, 255.0, True, h, w, {})
    grid = torch.floor(torch.rand(n, 3, 4, 4, generator=gen) * 256.0).clamp(max=255.0)
    size = torch.randint(1, 80, (n, 2), generator=gen)
    origin = torch.randint(-20, 50, (n, 2), generator=gen)
    boxes = torch.cat([origin, size], 1)
    new = _ops._texture(ctx, grid, boxes)
    ys, xs = ctx.grid()
    bx, by, bw, bh = (boxes[:, i].float().view(n, 1, 1) for i in range(4))
    gx = (xs.view(1, 1, -1) - bx + 0.5) / bw.clamp(min=1) * 2 - 1
    gy = (ys.view(1, -1, 1) - by + 0.5) / bh.clamp(min=1) * 2 - 1
    coords = torch.stack(torch.broadcast_tensors(gx, gy), dim=-1)
    old = F.grid_sample(grid, coords, mode="bicubic", padding_mode="border", align_corners=False)
    old = torch.round(old).clamp(0, 255)
    off = (new - old).abs()
    assert new.shape == old.shape == (n, 3, h, w)
    assert float(off.max()) <= 1.0 and int((off > 0).sum()) <= old.numel() // 1000, int((off > 0).sum())
    assert float(new.std()) > 10  # textures, not constants


def test_box_found_in_windows_is_the_whole_frames():
    """_ops._box of masks given as windows at their origins in a frame equals _box of the masks
    laid into whole frames, empty masks included ((W, H, 0, 0) either way): the gauge shapes
    find their tight boxes in their windows instead of over whole frames."""
    gen = torch.Generator().manual_seed(5)
    n, H, W, bh, bw = 40, 50, 44, 20, 17
    windows = torch.rand(n, bh, bw, generator=gen) < torch.rand(n, 1, 1, generator=gen) * 0.3
    windows[:4] = False  # empty masks
    origin_x = torch.randint(0, W - bw + 1, (n,), generator=gen)
    origin_y = torch.randint(0, H - bh + 1, (n,), generator=gen)
    frames = torch.zeros(n, H, W, dtype=torch.bool)
    for i in range(n):
        frames[i, origin_y[i] : origin_y[i] + bh, origin_x[i] : origin_x[i] + bw] = windows[i]
    found = _ops._box(windows, (origin_x, origin_y), (H, W))
    assert torch.equal(found, _ops._box(frames))
    assert found[:4].tolist() == [[W, H, 0, 0]] * 4 and bool((found[4:, 2] > 0).all())


def _box_by_nonzero(own: torch.Tensor) -> list:
    out = []
    for mask in own:
        ys, xs = torch.nonzero(mask, as_tuple=True)
        if len(xs) == 0:
            out.append([own.shape[2], own.shape[1], 0, 0])
        else:
            out.append([int(xs.min()), int(ys.min()), int(xs.max() - xs.min()) + 1, int(ys.max() - ys.min()) + 1])
    return out


@pytest.mark.parametrize("shape", [(12, 112, 112), (9, 40, 16), (6, 255, 8), (5, 256, 8), (7, 33, 26)])
def test_box_read_from_64_bit_words_is_the_masks_tight_box(shape):
    """_ops._box reads 8 pixels a word where the width is a multiple of 8 and the height under
    256 (its column counts then fit a byte), the bytes one by one elsewhere: both give each
    mask's tight box, pixels at the corners and empty masks included."""
    b, h, w = shape
    gen = torch.Generator().manual_seed(h + w)
    own = torch.rand(b, h, w, generator=gen) < torch.rand(b, 1, 1, generator=gen) * 0.02
    own[0] = False
    own[1] = False
    own[1, h - 1, w - 1] = True
    own[2] = False
    own[2, 0, 0] = True
    own[3, :, :] = True  # every column counts h
    assert _ops._box(own).tolist() == _box_by_nonzero(own)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_mix_branches_written_back_by_rows_equal_index_copy(dtype, monkeypatch):
    """A mix's branches run on their rows (index_select) and are written back row by row on CPU,
    or by index_copy_ (the other devices' path): the same output, the input left intact."""
    spec = "0.3*clean | 0.3*block(ratio=0.2, fill=white) | 0.4*ellipse(ratio=0.1..0.4, fill=black)"
    images = torch.randint(0, 256, (50, 3, 40, 36), generator=torch.Generator().manual_seed(3)).to(dtype)
    before = images.clone()
    rows = TorchOccluder(spec)(images, None, torch.Generator().manual_seed(8))
    monkeypatch.setattr(_ops, "SLICE_DEVICES", ())
    copied = TorchOccluder(spec)(images, None, torch.Generator().manual_seed(8))
    assert torch.equal(rows[0], copied[0]) and torch.equal(rows[1], copied[1])
    assert torch.equal(images, before)
    hit = rows[1].flatten(1).any(1)
    assert 10 < int(hit.sum()) < 50  # every branch taken, clean rows untouched
    assert torch.equal(rows[0][~hit], images[~hit])


def test_random_bytes_are_uniform_and_seeded():
    """Noise bytes read from 64-bit words: every byte value about equally often (chi-square
    over 256 values well inside its 255 degrees of freedom), each of a word's 8 byte positions
    alike, the same bytes from the same seed."""
    ctx = _ops._Ctx(torch.Generator().manual_seed(1), torch.device("cpu"), 0.0, 255.0, True, 8, 8, {})
    values = _ops._random_bytes(ctx, (64, 3, 50, 41))
    assert values.dtype == torch.uint8 and values.shape == (64, 3, 50, 41)
    counts = torch.bincount(values.flatten().long(), minlength=256).double()
    expected = values.numel() / 256
    assert float(((counts - expected) ** 2 / expected).sum()) < 360  # p ~ 1e-4 for 255 dof
    words = _ops._random_bytes(ctx, (200_000, 8)).double()
    assert float((words.mean(0) - 127.5).abs().max()) < 1.0  # the top byte too (no sign bit lost)
    again = _ops._Ctx(torch.Generator().manual_seed(1), torch.device("cpu"), 0.0, 255.0, True, 8, 8, {})
    assert torch.equal(_ops._random_bytes(again, (64, 3, 50, 41)), values)


@pytest.mark.parametrize("name", ["ellipse", "polygon", "blob", "pieces", "shapes"])
def test_kth_value_by_partition_gives_the_newton_paths_output(name, monkeypatch):
    """On CPU the k-th smallest gauge is selected by np.partition (_ops.PARTITION_DEVICES); the
    Newton steps and top-k (the other devices' path) give the same images and masks, bit for
    bit, over every fill, shrink and clip overflow and shapes that leave their windows."""
    fills = {"choice": ["black", "white", "mean", "noise", "texture"]}
    spec = "preset:shapes" if name == "shapes" else {"name": name, "params": {"ratio": [0.02, 0.95], "fill": fills}}
    if name in ("ellipse", "polygon", "blob"):
        spec["params"]["overflow"] = {"choice": ["clip", "shrink"]}
    for dtype in (torch.uint8, torch.float32):
        images = torch.randint(0, 256, (80, 3, 48, 40), generator=torch.Generator().manual_seed(2)).to(dtype)
        images = images if dtype == torch.uint8 else images / 255
        runs = []
        for partition in (("cpu",), ()):
            monkeypatch.setattr(_ops, "PARTITION_DEVICES", partition)
            runs.append(TorchOccluder(spec)(images, None, torch.Generator().manual_seed(5)))
        (image_a, mask_a), (image_b, mask_b) = runs
        assert torch.equal(mask_a, mask_b) and torch.equal(image_a, image_b), (name, dtype)
        assert bool(mask_a.any())


def test_uint8_windows_blend_in_place_as_the_stacked_blend():
    """_blend_windows on CPU uint8 blends each window through NumPy views (_lay_uint8): the
    values of gathering the windows, _blend and writing them back, and nothing outside them."""
    gen = torch.Generator().manual_seed(3)
    out = torch.randint(0, 256, (6, 3, 20, 24), generator=gen, dtype=torch.uint8)
    starts = [(0, 0, 0), (2, 5, 9), (5, 12, 16)]  # one window a sample, the last at the corner
    value = torch.randint(0, 256, (3, 3, 8, 8), generator=gen, dtype=torch.uint8)
    masks = torch.rand(3, 1, 8, 8, generator=gen) < 0.5
    expected = out.clone()
    for i, (s, y, x) in enumerate(starts):
        window = expected[s, :, y : y + 8, x : x + 8]
        expected[s, :, y : y + 8, x : x + 8] = _ops._blend(window, value[i], masks[i])
    _ops._blend_windows(out, starts, 8, 8, value, masks)
    assert torch.equal(out, expected)


def test_pieces_layout_in_numpy_is_the_torch_layout(monkeypatch):
    """The pieces' layout on CPU (NumPy on the tensors' memory) places every piece where the
    torch layout does, from the same draws: crowded layouts (many pieces, large ratios, so
    some pieces find no free spot) included."""
    specs = ["pieces(ratio=0.05..0.6)", "pieces(ratio=0.3..0.7, n=3..9, fill=texture)", "pieces(ratio=0.02..0.1)"]
    numpy_runs = [_run(spec, seed) for spec in specs for seed in range(3)]
    monkeypatch.setattr(shapes, "LAYOUT_NUMPY_DEVICES", ())
    torch_runs = [_run(spec, seed) for spec in specs for seed in range(3)]
    for (image_a, mask_a), (image_b, mask_b) in zip(numpy_runs, torch_runs):
        assert torch.equal(mask_a, mask_b) and torch.equal(image_a, image_b)
    assert all(bool(mask.any()) for _, mask in numpy_runs)
    # the layout itself, on boxes too large for all to fit: some pieces are left out, alike
    gen = torch.Generator().manual_seed(0)
    bw = torch.randint(1, 30, (64, 12), generator=gen)
    bh = torch.randint(1, 30, (64, 12), generator=gen)
    real = torch.rand(64, 12, generator=gen) < 0.9
    layouts = []
    for devices in (("cpu",), ()):
        monkeypatch.setattr(shapes, "LAYOUT_NUMPY_DEVICES", devices)
        c = _ops._Ctx(torch.Generator().manual_seed(5), torch.device("cpu"), 0.0, 1.0, False, 40, 36, {})
        layouts.append(shapes._PiecesOp._layout(c, bw, bh, real))
    for a, b in zip(*layouts):
        assert torch.equal(a, b)
    assert 0 < int(layouts[0][2].sum()) < int(real.sum())
