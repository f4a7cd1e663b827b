"""Shared machinery of the batched ops: the draw context, per-sample parameter draws, fills,
the exact k-th smallest value, and the op base class (parameters checked against the CPU
occluder's defaults, so both paths accept the same specs)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from occsynth.occluders.families import geometric as G
from occsynth.occluders.params import SpecError, check_params

Tensor = torch.Tensor

_CPU_CLASSES = {
    "block": G.Block,
    "rectangle": G.Rectangle,
    "ellipse": G.Ellipse,
    "polygon": G.Polygon,
    "blob": G.Blob,
    "pieces": G.Pieces,
}


# ----------------------------------------------------------------------------- context, draws


@dataclass
class _Ctx:
    gen: torch.Generator
    device: torch.device
    lo: float
    hi: float
    integer: bool
    height: int
    width: int
    banks: dict

    def rand(self, *shape: int, dtype=torch.float64) -> Tensor:
        return torch.rand(shape, generator=self.gen, device=self.gen.device, dtype=dtype).to(self.device)

    def randn(self, *shape: int) -> Tensor:
        return torch.randn(shape, generator=self.gen, device=self.gen.device, dtype=torch.float64).to(self.device)

    def grid(self):
        ys = torch.arange(self.height, device=self.device, dtype=torch.float32)
        xs = torch.arange(self.width, device=self.device, dtype=torch.float32)
        return ys, xs


def _num(value: Any, u: Tensor) -> Tensor:
    """Per-sample numbers (float64) from a spec value, one uniform each (as G.draw_param)."""
    if isinstance(value, dict) and "choice" in value:
        return torch.tensor([float(v) for v in value["choice"]], dtype=torch.float64, device=u.device)[_index(value, u)]
    if G._is_range(value):
        lo, hi = float(value[0]), float(value[1])
        return lo + (hi - lo) * u if hi > lo else torch.full_like(u, lo)
    return torch.full_like(u, float(value))


def _int(value: Any, u: Tensor) -> Tensor:
    if G._is_range(value):
        lo, hi = int(value[0]), int(value[1])
        if hi <= lo:
            return torch.full(u.shape, lo, dtype=torch.int64, device=u.device)
        return lo + torch.clamp((u * (hi - lo + 1)).long(), max=hi - lo)
    return _num(value, u).round().long()


def _codes(value: Any, u: Tensor, vocabulary: Sequence[str], what: str) -> Tensor:
    """Per-sample indices into `vocabulary` for a word or a choice of words."""
    options = value["choice"] if isinstance(value, dict) and "choice" in value else [value]
    bad = [o for o in options if o not in vocabulary]
    if bad:
        raise ValueError(f"unknown {what} {bad}; expected one of {tuple(vocabulary)}")
    table = torch.tensor([vocabulary.index(o) for o in options], device=u.device)
    if len(options) == 1:
        return table[torch.zeros_like(u, dtype=torch.long)]
    return table[_index(value, u)]


def _index(value: dict, u: Tensor) -> Tensor:
    n = len(value["choice"])
    weights = value.get("p")
    if weights is None:
        return torch.clamp((u * n).long(), max=n - 1)
    cdf = torch.cumsum(torch.tensor(weights, dtype=torch.float64, device=u.device), 0)
    return torch.clamp(torch.searchsorted(cdf / cdf[-1], u.contiguous(), right=True), max=n - 1)


def _round_half_even(x: Tensor) -> Tensor:
    return torch.round(x)  # torch.round rounds half to even, as Python's round() in geometric.py


# ----------------------------------------------------------------------------- fills

PAINT_CHUNK = 16  # images blended at a time on CPU (see _paint)


def _paint(ctx: _Ctx, img: Tensor, own: Tensor, fill: Tensor, box: Tensor | None) -> Tensor:
    """where(own, fill colour, img); own [b,H,W] bool, fill [b] codes into G.FILLS, box [b,4]
    (x, y, w, h) of each shape, read where the fill is noise or texture (texture is laid over
    it); None: the masks' tight boxes, found here. Works in the images' own dtype;
    constant colours broadcast from [b,3,1,1], full-size fills are drawn only when used."""
    b, c, h, w = img.shape
    code = fill.view(b, 1, 1, 1)
    colour = torch.where(code == G.FILLS.index("white"), ctx.hi, ctx.lo).to(torch.float32).expand(b, c, 1, 1)
    averaged = fill == G.FILLS.index("mean")
    if bool(averaged.any()):
        # the means of the samples that use them only (each image's own mean, whichever others
        # are in the batch)
        rows = torch.nonzero(averaged).squeeze(1)
        mean = torch.zeros(b, c, 1, 1, dtype=torch.float32, device=img.device)
        mean[rows] = img.index_select(0, rows).float().mean(dim=(2, 3), keepdim=True)
        mean = torch.round(mean) if ctx.integer else mean
        colour = torch.where(code == G.FILLS.index("mean"), mean, colour)
    where = own.unsqueeze(1)
    colour = colour.to(img.dtype)
    laid = (fill == G.FILLS.index("noise")) | (fill == G.FILLS.index("texture"))
    if bool(laid.all()):
        # every mask is painted over below (the fills' windows hold it whole): the colour blend
        # would be overwritten wherever it changed a pixel (on CPU ~10% of an ellipse batch's time)
        out = img.clone()
    elif img.device.type == "cpu" and b > PAINT_CHUNK:
        # in chunks of images whose temporaries stay in cache: on CPU the whole-batch blend is
        # bound by memory traffic (each of its full-size temporaries is written and read back)
        out = torch.empty_like(img)
        for i in range(0, b, PAINT_CHUNK):
            out[i : i + PAINT_CHUNK] = _blend(
                img[i : i + PAINT_CHUNK], colour[i : i + PAINT_CHUNK], where[i : i + PAINT_CHUNK]
            )
    else:
        out = _blend(img, colour, where)
    for name in ("noise", "texture"):
        chosen = fill == G.FILLS.index(name)
        if not bool(chosen.any()):
            continue
        # computed for the samples that use them only, and on CPU only inside each one's box
        # (a mix of fills drew and sampled them over whole frames of the whole batch: on CPU the
        # bulk of a shapes batch's time)
        rows = torch.nonzero(chosen).squeeze(1)
        grid = _texture_grid(ctx, b, c) if name == "texture" else None  # drawn for every sample
        # the tight boxes of these samples' masks only (their boxes are the masks' own when the
        # shape gives none)
        boxes = box[rows] if box is not None else _box(own.index_select(0, rows))
        if by_slices(img.device):
            _fill_windows(ctx, out, own, rows, boxes, name, None if grid is None else grid[rows])
            continue
        if name == "noise":
            u = ctx.rand(len(rows), c, h, w, dtype=torch.float32)
            value = _noise_values(ctx, u)
        else:
            value = _texture(ctx, grid[rows], boxes)
        out[rows] = _blend(out[rows], value.to(img.dtype), where[rows])
    return out


FILL_CHUNK = 32  # samples per window size in _fill_windows

# Devices where the ops handle per-sample windows sample by sample, by slices (gauge and bank
# windows, noise and texture fills): on CPU a loop of slice copies is ~2x faster than building
# int64 indices for a gather and a scatter; elsewhere (CUDA) one indexed kernel is the fast way.
# Tests empty it to run the other path on CPU.
SLICE_DEVICES = ("cpu",)


def by_slices(device: torch.device) -> bool:
    return device.type in SLICE_DEVICES


def _blend_windows(out: Tensor, starts: list, bh: int, bw: int, value: Tensor, masks: Tensor) -> None:
    """For each (sample s, y, x) of `starts`, out[s, :, y:y+bh, x:x+bw] = value[i] where
    masks[i] [1, bh, bw] (_blend), in place: the windows gathered by slices, blended at once,
    written back by slices (each sample's window once: none overlap)."""
    if out.device.type == "cpu" and out.dtype == torch.uint8:
        mask = masks.contiguous().numpy().view(np.uint8)
        _lay_uint8(out, starts, bh, bw, value, lambda i, s, y, x: mask[i])
        return
    windows = torch.stack([out[s, :, y : y + bh, x : x + bw] for s, y, x in starts])
    blended = _blend(windows, value.to(out.dtype), masks)
    for i, (s, y, x) in enumerate(starts):
        out[s, :, y : y + bh, x : x + bw] = blended[i]


def _lay_uint8(out: Tensor, starts: list, bh: int, bw: int, value: Tensor, mask_of) -> None:
    """_blend_windows for uint8 images on CPU: each window blended in place through NumPy views
    of the tensors' memory, as x + (v - x) * m in uint8 (mod 256: v where m is 1, x where 0:
    _blend's values), the mask of window i being mask_of(i, s, y, x) ([bh, bw] or [1, bh, bw]
    uint8 0/1). No stacked copies of the windows or masks: ~2x faster than gather, blend and
    write back (NumPy's slicing costs ~1/10 of torch's per window)."""
    frame = out.numpy()
    values = value.to(torch.uint8).contiguous().numpy()
    for i, (s, y, x) in enumerate(starts):
        window = frame[s, :, y : y + bh, x : x + bw]
        step = np.subtract(values[i], window)
        step *= mask_of(i, s, y, x)
        window += step


def _noise_values(ctx: _Ctx, u: Tensor) -> Tensor:
    return torch.floor(u * 256.0).clamp(max=255.0) if ctx.integer else ctx.lo + (ctx.hi - ctx.lo) * u


def _random_bytes(ctx: _Ctx, size: tuple[int, ...]) -> Tensor:
    """Uniform bytes (uint8) of this shape: whole 64-bit words drawn over their full range and
    read as 8 bytes each (one generator step per 8 bytes: ~5x faster on CPU than a byte per
    step with randint(0, 256), which itself was ~3x faster than scaling floats)."""
    n = math.prod(size)
    words = torch.empty((n + 7) // 8, dtype=torch.int64, device=ctx.gen.device)
    words.random_(-(2**63), None, generator=ctx.gen)  # from int64's lowest, no end: all 64 bits
    return words.view(torch.uint8)[:n].view(size).to(ctx.device)


def _fill_windows(ctx: _Ctx, out: Tensor, own: Tensor, rows: Tensor, boxes: Tensor, name: str, grid) -> None:
    """Paint samples `rows` of out [B, c, H, W] where own [B, H, W] with noise or texture, each
    computed only in a window holding the sample's box (boxes [n, 4]: x, y, w, h; the mask lies
    in it): windows of one size per chunk of FILL_CHUNK samples of similar boxes, written back by
    slices. Texture values are the whole frame's, pixel for pixel (the same arithmetic at the
    same pixel), whatever the chunks; noise is drawn per chunk, in the order of the boxes' areas."""
    n, H, W = len(rows), out.shape[2], out.shape[3]
    if n == 0:
        return
    x0, y0 = boxes[:, 0], boxes[:, 1]
    x1, y1 = x0 + boxes[:, 2], y0 + boxes[:, 3]
    if name == "noise":  # its draws follow the chunks: kept in the order of the boxes' areas
        order = torch.argsort(boxes[:, 2] * boxes[:, 3], stable=True)
    else:
        # texture values depend on the pixel alone: chunks of similar widths (then heights)
        # make tighter common windows (pixels computed over the boxes' own: 1.76 -> 1.20 for
        # ellipses, 1.68 -> 1.30 for blobs at FILL_CHUNK 32, by area order -> by width)
        order = torch.argsort(boxes[:, 2] * (H + 1) + boxes[:, 3], stable=True)
    frame = own.numpy().view(np.uint8) if own.device.type == "cpu" else None  # (_lay_uint8's masks)
    for i in range(0, n, FILL_CHUNK):
        sel = order[i : i + FILL_CHUNK]
        m = len(sel)
        bw, bh = max(1, int((x1 - x0)[sel].max())), max(1, int((y1 - y0)[sel].max()))
        wx, wy = x0[sel].clamp(min=0, max=W - bw), y0[sel].clamp(min=0, max=H - bh)
        if name == "noise" and ctx.integer:
            value = _random_bytes(ctx, (m, out.shape[1], bh, bw))
        elif name == "noise":
            value = _noise_values(ctx, ctx.rand(m, out.shape[1], bh, bw, dtype=torch.float32))
        else:
            px = (wx.view(m, 1) + torch.arange(bw, device=out.device)).float()
            py = (wy.view(m, 1) + torch.arange(bh, device=out.device)).float()
            value = _texture(ctx, grid[sel], boxes[sel], px, py)
        starts = list(zip(rows[sel].tolist(), wy.tolist(), wx.tolist()))
        if out.device.type == "cpu" and out.dtype == torch.uint8:  # the masks read in place
            _lay_uint8(out, starts, bh, bw, value, lambda i, s, y, x: frame[s, y : y + bh, x : x + bw])
            continue
        masks = torch.stack([own[s, y : y + bh, x : x + bw] for s, y, x in starts]).unsqueeze(1)
        _blend_windows(out, starts, bh, bw, value, masks)


def _and(a: Tensor, b: Tensor) -> Tensor:
    """a & b for bool tensors that broadcast. Broadcasting bool ops and torch.where run an
    unvectorised loop in CPU torch (10-30x slower than uint8 arithmetic); on CUDA it is moot."""
    return (a.to(torch.uint8) * b.to(torch.uint8)).view(torch.bool)


def _blend(x: Tensor, value: Tensor, where: Tensor) -> Tensor:
    """where(where, value, x) by arithmetic that is exact for 0/1 weights (see _and for why):
    uint8 x * (1 - m) + v * m, float lerp (returns its end exactly at weight 1)."""
    if x.dtype == torch.uint8:
        m = where.to(torch.uint8)
        return x * (1 - m) + value * m
    return torch.lerp(x, value.expand_as(x).to(x.dtype), where.to(x.dtype))


def _texture_grid(ctx: _Ctx, b: int, c: int) -> Tensor:
    cells = G.TEXTURE_CELLS
    return torch.floor(ctx.rand(b, c, cells, cells, dtype=torch.float32) * 256.0).clamp(max=255.0)


CUBIC_A = -0.75  # the bicubic kernel's parameter in PyTorch's grid_sample and OpenCV's resize


def _cubic_weights(t: Tensor) -> Tensor:
    """[..., 4]: the bicubic weights of the taps at floor - 1 .. floor + 2 for fractions t
    (PyTorch's get_cubic_upsample_coefficients, A = CUBIC_A)."""
    a = CUBIC_A
    near, far = t, 1 - t
    w0 = ((a * (near + 1) - 5 * a) * (near + 1) + 8 * a) * (near + 1) - 4 * a
    w1 = ((a + 2) * near - (a + 3)) * near * near + 1
    w2 = ((a + 2) * far - (a + 3)) * far * far + 1
    w3 = ((a * (far + 1) - 5 * a) * (far + 1) + 8 * a) * (far + 1) - 4 * a
    return torch.stack([w0, w1, w2, w3], -1)


def _axis_weights(pos: Tensor, start: Tensor, size: Tensor, cells: int) -> Tensor:
    """[n, L, cells]: the weight of each grid cell at pixel centres pos [n or 1, L] over boxes
    start, size [n, 1], as grid_sample's bicubic mode reads the grid (align_corners=False;
    padding "border": the coordinate is not clipped, taps beyond the grid repeat its edge)."""
    g = (pos - start + 0.5) / size.clamp(min=1) * 2 - 1
    src = ((g + 1) * cells - 1) / 2
    floor = torch.floor(src)
    weights = _cubic_weights(src - floor)
    taps = (floor.long().unsqueeze(-1) + torch.arange(-1, 3, device=pos.device)).clamp(0, cells - 1)
    # each cell's weight: its taps' summed in tap order (the edge cell gets several), by
    # element-wise ops rather than scatter_add_, whose atomic adds on CUDA come in any order
    hits = taps.unsqueeze(-1) == torch.arange(cells, device=pos.device)  # [..., 4 taps, cells]
    weighted = weights.unsqueeze(-1) * hits.to(weights.dtype)
    out = weighted[..., 0, :]
    for tap in range(1, 4):
        out = out + weighted[..., tap, :]
    return out


def _texture(ctx: _Ctx, grid: Tensor, box: Tensor, xs: Tensor | None = None, ys: Tensor | None = None) -> Tensor:
    """The texture over each sample's box: grid [n, c, cells, cells] upsampled bicubically, at
    the image columns xs [n, w] and rows ys [n, h] (float; default: the whole frame).

    The bicubic upsampling is separable: each column gets 4 cells' weights along x, each row
    along y, and the texture is their outer product with the grid. Computed so (by element-wise
    ops in a fixed order: every pixel the same arithmetic wherever its window lies) it costs a
    quarter of grid_sample's per-pixel 16-tap kernel on CPU, and equals it to float rounding
    (~1e-4; after rounding to integers a value at an exact half may land on the other side:
    under 1 pixel in 10,000)."""
    b, _, cells, _ = grid.shape
    if xs is None:
        rows, cols = ctx.grid()
        xs, ys = cols.view(1, -1), rows.view(1, -1)
    bx, by, bw, bh = (box[:, i].float().view(b, 1) for i in range(4))
    wx = _axis_weights(xs, bx, bw, cells).expand(b, -1, -1).transpose(1, 2).unsqueeze(1)  # [n, 1, cells, w]
    wy = _axis_weights(ys, by, bh, cells).expand(b, -1, -1).unsqueeze(1)  # [n, 1, h, cells]
    along_x = grid[..., 0:1] * wx[:, :, 0:1]  # [n, c, cells (rows of the grid), w]
    for j in range(1, cells):
        along_x = along_x + grid[..., j : j + 1] * wx[:, :, j : j + 1]
    tex = wy[..., 0:1] * along_x[:, :, 0:1]  # [n, c, h, w]
    for i in range(1, cells):
        tex += wy[..., i : i + 1] * along_x[:, :, i : i + 1]
    tex = torch.round(tex).clamp_(0, 255)
    return tex if ctx.integer else ctx.lo + (ctx.hi - ctx.lo) * tex / 255.0


def _box(own: Tensor, origin: tuple[Tensor, Tensor] | None = None, frame: tuple[int, int] | None = None) -> Tensor:
    """Tight box (x, y, w, h) of each mask [b,H,W] ((W, H, 0, 0) when empty). With `origin`
    (x, y [b]) the masks are windows of a frame of size `frame` (H, W) at those origins: the box
    in the frame, as _box of the whole frame gives (the window holds the whole mask)."""
    b, h, w = own.shape
    if w % 8 == 0 and h < 256 and own.is_contiguous():
        # 8 pixels a 64-bit word (torch's bools are the bytes 0 and 1): a row is marked where a
        # word of it is not 0, and the words summed down the rows give each column's count in
        # its own byte (at most h < 256: no carry into the next). A quarter of the time of the
        # byte sums below over whole frames, where the column sum reduces a strided axis.
        words = own.view(torch.uint8).view(b, h, w // 8, 8).view(torch.int64).view(b, h, w // 8)
        cols = words.sum(dim=1).view(torch.uint8).view(b, w) > 0
        rows = words.amax(dim=2) != 0  # the words are >= 0: a 1 byte sets at most bit 56
    else:
        # any() over bool in CPU torch is unvectorised: the sum of the bytes is ~2x faster
        flags = own.view(torch.uint8)
        cols, rows = flags.sum(dim=1, dtype=torch.int32) > 0, flags.sum(dim=2, dtype=torch.int32) > 0
    ar_w = torch.arange(w, device=own.device)
    ar_h = torch.arange(h, device=own.device)
    x0 = torch.where(cols, ar_w, w).amin(1)
    x1 = torch.where(cols, ar_w, -1).amax(1)
    y0 = torch.where(rows, ar_h, h).amin(1)
    y1 = torch.where(rows, ar_h, -1).amax(1)
    size = torch.stack([(x1 - x0 + 1).clamp(min=0), (y1 - y0 + 1).clamp(min=0)], 1)
    if origin is not None:
        empty = size[:, 0] == 0
        x0 = torch.where(empty, frame[1], x0 + origin[0])
        y0 = torch.where(empty, frame[0], y0 + origin[1])
    return torch.cat([torch.stack([x0, y0], 1), size], 1)


def _rect_mask(ctx: _Ctx, x: Tensor, y: Tensor, w: Tensor, h: Tensor) -> Tensor:
    ys, xs = ctx.grid()
    xs, ys = xs.long(), ys.long()
    inx = (xs.view(1, -1) >= x.view(-1, 1)) & (xs.view(1, -1) < (x + w).view(-1, 1))
    iny = (ys.view(1, -1) >= y.view(-1, 1)) & (ys.view(1, -1) < (y + h).view(-1, 1))
    return _and(iny.unsqueeze(2), inx.unsqueeze(1))


# ----------------------------------------------------------------------------- exact k-th value


_FAR = 1e30  # beyond any gauge value; finite, so 0 * _FAR stays 0


def _at_most(values: Tensor, limits: Tensor) -> Tensor:
    """values <= limits as bool, `limits` broadcasting against `values` (a threshold per row: [n, 1]
    against [n, M]). On CPU by NumPy on the tensors' memory: torch's CPU comparison against a
    broadcast operand ran ~8x slower (0.14 against 0.018 ms for [32, 4900]), the same booleans."""
    if values.device.type == "cpu":
        return torch.from_numpy(np.less_equal(values.numpy(), limits.numpy()))
    return values <= limits


def _count(where: Tensor) -> Tensor:
    """True values per row of a bool [b, M], as int32: summed as uint8 into int32 (a bool sum,
    or count_nonzero, first copies the whole tensor into int64: twice as slow on CPU)."""
    return where.view(torch.uint8).sum(1, dtype=torch.int32)


# Devices where kth_smallest selects with NumPy's np.partition row by row (introselect: one
# pass over a row, no count passes, no top-k): on CPU ~10x faster than the Newton steps and
# top-k below, which stay for other devices. Tests empty it to run the other path on CPU.
PARTITION_DEVICES = ("cpu",)


def kth_smallest(g: Tensor, k: Tensor, guess: Tensor, power: int, steps: int = 1) -> Tensor:
    """Per row of g [b, M], the k-th smallest value (k [b] >= 1), so that {g <= t} has k members
    (ties aside). Newton steps on the count (which grows like t^(2/power) for a scaled shape) get
    close; an exact top-k over the few values between fixes the rest. One step by default: on
    CPU a further step (a full pass) cost more than the top-k work it spared (ellipse, polygon:
    5-7% faster in all with one than with three). The mask {g <= t} is the same whatever the
    steps; t itself may be any value between the k-th and the next when no correction ran.
    On PARTITION_DEVICES t is the k-th value itself, selected by NumPy (the same mask)."""
    if g.device.type in PARTITION_DEVICES:
        return _kth_by_partition(g, k)
    kf = k.to(torch.float64)
    t = guess.to(torch.float64).clone()
    for _ in range(steps):
        count = _count(g <= t.to(g.dtype).unsqueeze(1)).to(torch.float64).clamp(min=1.0)
        t = t * (kf / count) ** (power / 2.0)
    t = t.to(g.dtype)
    count = _count(g <= t.unsqueeze(1)).long()
    diff = k - count
    # the exact corrections run on the rows that need them only (rows are independent)
    rows = torch.nonzero(diff > 0).squeeze(1)
    if len(rows):
        need = int(diff.max())
        gr, tr, dr = g[rows], t[rows].unsqueeze(1), diff[rows]
        # values <= t pushed out of reach (a same-shape condition and a scalar: vectorised on CPU)
        above = torch.where(gr > tr, gr, _FAR)
        smallest = torch.topk(above, min(need, g.shape[1]), dim=1, largest=False).values
        t[rows] = smallest.gather(1, (dr.clamp(min=1, max=smallest.shape[1]) - 1).unsqueeze(1)).squeeze(1)
    rows = torch.nonzero(diff < 0).squeeze(1)
    if len(rows):
        drop = int((-diff).max())
        gr, tr, dr = g[rows], t[rows].unsqueeze(1), diff[rows]
        below = torch.where(gr <= tr, gr, -_FAR)
        largest = torch.topk(below, min(drop + 1, g.shape[1]), dim=1, largest=True).values
        t[rows] = largest.gather(1, (-dr).clamp(min=0, max=largest.shape[1] - 1).unsqueeze(1)).squeeze(1)
    return t


def _kth_by_partition(g: Tensor, k: Tensor) -> Tensor:
    """kth_smallest on CPU: each row's k-th smallest value (k clamped to the row's length) by
    np.partition on the tensor's own memory (a copy only if it is not contiguous)."""
    rows = g.detach().contiguous().numpy()
    size = rows.shape[1]
    out = np.empty(rows.shape[0], dtype=rows.dtype)
    for i, kk in enumerate(k.tolist()):
        kk = min(max(int(kk), 1), size) - 1
        out[i] = np.partition(rows[i], kk)[kk]
    return torch.from_numpy(out)


# ----------------------------------------------------------------------------- ops


class _Op:
    name = ""
    schema: dict = {}

    def __init__(self, params: dict):
        cls = _CPU_CLASSES.get(self.name)
        defaults = cls.defaults if cls is not None else self.defaults
        unknown = sorted(set(params) - set(defaults))
        if unknown:
            raise SpecError(f"occluder {self.name!r} got unknown parameter(s) {unknown}; known: {sorted(defaults)}")
        check_params(self.name, params, cls.schema if cls is not None else self.schema)
        self.params = {**defaults, **params}

    def __call__(self, ctx: _Ctx, img: Tensor, lm: Tensor | None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _draws(self, ctx: _Ctx, b: int) -> dict[str, Tensor]:
        """One uniform per parameter and sample (as the CPU path draws one per parameter)."""
        u = ctx.rand(b, len(self.params))
        return {key: u[:, i] for i, key in enumerate(self.params)}

    def _ratio(self, u: dict[str, Tensor]) -> Tensor:
        ratio = _num(self.params["ratio"], u["ratio"])
        if bool(((ratio < 0) | (ratio > 1)).any()):
            raise ValueError(f"{self.name} ratio must be in [0, 1], got {self.params['ratio']!r}")
        return ratio
