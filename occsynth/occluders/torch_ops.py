"""Online occlusion for training: the geometric families and a template bank, on whole batches.

    occluder = TorchOccluder("0.5*clean | 0.5*ellipse(ratio=0.1..0.4)", device="cuda")
    images, masks = occluder(images, landmarks, generator)   # [B,3,H,W], [B,1,H,W] bool

Same spec language as the CPU path (compose.py: CLI strings, data, presets, files), restricted to
the families below. Every family is vectorised over the batch with torch ops (loops run over
pieces, layout attempts and mix branches, never over images), on CPU or CUDA alike.

Equivalence with the CPU path (geometric.py). Each family follows the same algorithm, so the
distributions match (tests compare them with two-sample KS tests); the random streams differ, so
single samples do not. Per family:
  block, rectangle      the same integer sizes (block_size / rect_dims) at uniform positions;
  ellipse, polygon, blob  the same random unit shapes; the scale is set by the k-th smallest
                        gauge over the image (k = round(ratio*H*W)), found by Newton steps on the
                        count then an exact top-k correction: exactly k pixels, as on the CPU. The
                        origin is placed so the continuous box at the area scale fits (the CPU
                        places the pixel box: they differ by under a pixel); non-fitting shapes
                        use the CPU's `overflow` rules;
  pieces                the same Dirichlet(2) split, sizes, gaps, largest-first order and layout
                        attempts; a position is uniform among the free ones.
Masks come from geometry, and the painted pixels are exactly the mask: out = where(mask, fill, x).

Fills: black / white are the ends of the value range (uint8: 0, 255; float: 0, 1 unless
value_range says otherwise), mean is the image's per-channel mean, noise is uniform, texture is a
random 4x4 colour grid upsampled bicubically over the shape's box (as cv2 does on the CPU).

Randomness: every draw uses the given torch.Generator, so a seeded generator gives identical
output on a given device. Draws are made on the generator's device and moved to the images'
device: pass a CUDA generator with CUDA images to keep the noise fills on the GPU.

Template bank (`bank` family): see TemplateBank and _BankOp. Templates are pasted hard-edged
(alpha >= 0.5) so that the mask is exact. The CPU object families (objects.py) are not mirrored
op for op: load their templates into a TemplateBank (anchors and targets in the same face frame).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from occsynth.occluders import geometric as G
from occsynth.occluders.compose import compile_tree, load_spec

Tensor = torch.Tensor

SUPPORTED = ("block", "rectangle", "ellipse", "polygon", "blob", "pieces", "bank")
_CPU_CLASSES = {"block": G.Block, "rectangle": G.Rectangle, "ellipse": G.Ellipse, "polygon": G.Polygon,
                "blob": G.Blob, "pieces": G.Pieces}


# ----------------------------------------------------------------------------- template bank


class TemplateBank:
    """RGBA templates for the `bank` family, pasted at landmark-relative positions.

    rgba     [N, 4, h, w], uint8 (0..255) or float (0..1); smaller templates are padded with
             alpha 0 at the bottom/right (see from_arrays) and `sizes` keeps their own size.
    anchors  [N, 2, 2]: two points (x, y) in each template's pixels (pixel i spans [i, i+1]).
    targets  [N, 2, 2]: where those points go, in the face frame of occsynth.bank:
             F(fx, fy) = E + fx * (right_eye - left_eye) + fy * (mouth_mid - E), E = eye midpoint,
             so (-0.5, 0) / (0.5, 0) are the eyes and (0, 1) the mouth centre. The template is
             mapped by the similarity taking anchors onto targets (then jittered by the op).
             Default: the template's left and right edge midpoints go 0.5 inter-ocular distances
             outside each eye (a glasses-like band, 2 IODs wide).
    sizes    [N, 2] (w, h) of each template before padding (FROM-style random placement uses it).
    """

    def __init__(
        self,
        rgba: Tensor,
        anchors: Tensor | None = None,
        targets: Tensor | None = None,
        sizes: Tensor | None = None,
        names: Sequence[str] | None = None,
    ):
        if rgba.ndim != 4 or rgba.shape[1] != 4:
            raise ValueError(f"rgba must be [N, 4, h, w], got {tuple(rgba.shape)}")
        n, _, h, w = rgba.shape
        rgba = rgba.float() / 255.0 if rgba.dtype == torch.uint8 else rgba.float()
        # premultiplied colour, so bilinear sampling does not bleed transparent pixels' colour
        self.premultiplied = torch.cat([rgba[:, :3] * rgba[:, 3:4], rgba[:, 3:4]], dim=1)
        self.sizes = (sizes if sizes is not None else torch.tensor([[w, h]] * n)).to(torch.float64)
        if anchors is None:
            anchors = torch.stack([torch.stack([torch.zeros(n), self.sizes[:, 1] / 2], 1),
                                   torch.stack([self.sizes[:, 0], self.sizes[:, 1] / 2], 1)], 1)
        if targets is None:
            targets = torch.tensor([[[-1.0, 0.0], [1.0, 0.0]]] * n)
        self.anchors = anchors.to(torch.float64).reshape(n, 2, 2)
        self.targets = targets.to(torch.float64).reshape(n, 2, 2)
        self.names = list(names) if names is not None else [str(i) for i in range(n)]
        self._by_device: dict[str, tuple[Tensor, Tensor, Tensor, Tensor]] = {}

    def __len__(self) -> int:
        return self.premultiplied.shape[0]

    @classmethod
    def from_arrays(cls, images: Sequence[np.ndarray], anchors=None, targets=None, names=None) -> "TemplateBank":
        """From HxWx4 uint8 arrays of any sizes (padded to a common size with alpha 0)."""
        h = max(a.shape[0] for a in images)
        w = max(a.shape[1] for a in images)
        stack = np.zeros((len(images), h, w, 4), dtype=np.uint8)
        for i, a in enumerate(images):
            stack[i, : a.shape[0], : a.shape[1]] = a
        sizes = torch.tensor([[a.shape[1], a.shape[0]] for a in images])
        to_t = (lambda v: None if v is None else torch.as_tensor(np.asarray(v, dtype=np.float64)))
        return cls(torch.from_numpy(stack).permute(0, 3, 1, 2), to_t(anchors), to_t(targets), sizes, names)

    def on(self, device: torch.device):
        key = str(device)
        if key not in self._by_device:
            self._by_device[key] = tuple(t.to(device) for t in (self.premultiplied, self.anchors, self.targets, self.sizes))
        return self._by_device[key]


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


def _paint(ctx: _Ctx, img: Tensor, own: Tensor, fill: Tensor, box: Tensor | None) -> Tensor:
    """where(own, fill colour, img); own [b,H,W] bool, fill [b] codes into G.FILLS, box [b,4]
    (x, y, w, h) of each shape (texture is laid over it). Works in the images' own dtype;
    constant colours broadcast from [b,3,1,1], full-size fills are drawn only when used."""
    b, c, h, w = img.shape
    code = fill.view(b, 1, 1, 1)
    colour = torch.where(code == G.FILLS.index("white"), ctx.hi, ctx.lo).to(torch.float32).expand(b, c, 1, 1)
    if bool((fill == G.FILLS.index("mean")).any()):
        mean = img.float().mean(dim=(2, 3), keepdim=True)
        mean = torch.round(mean) if ctx.integer else mean
        colour = torch.where(code == G.FILLS.index("mean"), mean, colour)
    where = own.unsqueeze(1)
    out = _blend(img, colour.to(img.dtype), where)
    for name in ("noise", "texture"):
        chosen = fill == G.FILLS.index(name)
        if not bool(chosen.any()):
            continue
        if name == "noise":
            u = ctx.rand(b, c, h, w, dtype=torch.float32)
            value = torch.floor(u * 256.0).clamp(max=255.0) if ctx.integer else ctx.lo + (ctx.hi - ctx.lo) * u
        else:
            value = _texture(ctx, b, c, box if box is not None else _box(own))
        out = _blend(out, value.to(img.dtype), _and(where, chosen.view(b, 1, 1, 1)))
    return out


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


def _texture(ctx: _Ctx, b: int, c: int, box: Tensor) -> Tensor:
    cells = G.TEXTURE_CELLS
    grid = torch.floor(ctx.rand(b, c, cells, cells, dtype=torch.float32) * 256.0).clamp(max=255.0)
    ys, xs = ctx.grid()
    bx, by, bw, bh = (box[:, i].float().view(b, 1, 1) for i in range(4))
    # pixel centre -> normalised coordinate over the shape's box (align_corners=False, like cv2)
    gx = (xs.view(1, 1, -1) - bx + 0.5) / bw.clamp(min=1) * 2 - 1
    gy = (ys.view(1, -1, 1) - by + 0.5) / bh.clamp(min=1) * 2 - 1
    coords = torch.stack(torch.broadcast_tensors(gx, gy), dim=-1)
    tex = F.grid_sample(grid, coords, mode="bicubic", padding_mode="border", align_corners=False)
    tex = torch.round(tex).clamp(0, 255)
    return tex if ctx.integer else ctx.lo + (ctx.hi - ctx.lo) * tex / 255.0


def _box(own: Tensor) -> Tensor:
    """Tight box (x, y, w, h) of each mask [b,H,W] (0-size when empty)."""
    b, h, w = own.shape
    cols, rows = own.any(dim=1), own.any(dim=2)
    ar_w = torch.arange(w, device=own.device)
    ar_h = torch.arange(h, device=own.device)
    x0 = torch.where(cols, ar_w, w).amin(1)
    x1 = torch.where(cols, ar_w, -1).amax(1)
    y0 = torch.where(rows, ar_h, h).amin(1)
    y1 = torch.where(rows, ar_h, -1).amax(1)
    return torch.stack([x0, y0, (x1 - x0 + 1).clamp(min=0), (y1 - y0 + 1).clamp(min=0)], 1)


def _rect_mask(ctx: _Ctx, x: Tensor, y: Tensor, w: Tensor, h: Tensor) -> Tensor:
    ys, xs = ctx.grid()
    xs, ys = xs.long(), ys.long()
    inx = (xs.view(1, -1) >= x.view(-1, 1)) & (xs.view(1, -1) < (x + w).view(-1, 1))
    iny = (ys.view(1, -1) >= y.view(-1, 1)) & (ys.view(1, -1) < (y + h).view(-1, 1))
    return _and(iny.unsqueeze(2), inx.unsqueeze(1))


# ----------------------------------------------------------------------------- exact k-th value


_FAR = 1e30  # beyond any gauge value; finite, so 0 * _FAR stays 0


def kth_smallest(g: Tensor, k: Tensor, guess: Tensor, power: int, steps: int = 3) -> Tensor:
    """Per row of g [b, M], the k-th smallest value (k [b] >= 1), so that {g <= t} has k members
    (ties aside). Newton steps on the count (which grows like t^(2/power) for a scaled shape) get
    close in a few passes; an exact top-k over the few values between fixes the rest."""
    kf = k.to(torch.float64)
    t = guess.to(torch.float64).clone()
    for _ in range(steps):
        count = (g <= t.to(g.dtype).unsqueeze(1)).sum(1).to(torch.float64).clamp(min=1.0)
        t = t * (kf / count) ** (power / 2.0)
    t = t.to(g.dtype)
    count = (g <= t.unsqueeze(1)).sum(1)
    diff = k - count
    if bool((diff > 0).any()):
        need = int(diff.max())
        # values <= t pushed out of reach (arithmetic rather than torch.where: see _and)
        above = torch.maximum(g, t.unsqueeze(1)) + (g <= t.unsqueeze(1)).to(g.dtype) * _FAR
        smallest = torch.topk(above, min(need, g.shape[1]), dim=1, largest=False).values
        pick = smallest.gather(1, (diff.clamp(min=1, max=smallest.shape[1]) - 1).unsqueeze(1)).squeeze(1)
        t = torch.where(diff > 0, pick, t)
    if bool((diff < 0).any()):
        drop = int((-diff).max())
        below = torch.minimum(g, t.unsqueeze(1)) - (g > t.unsqueeze(1)).to(g.dtype) * _FAR
        largest = torch.topk(below, min(drop + 1, g.shape[1]), dim=1, largest=True).values
        pick = largest.gather(1, (-diff).clamp(min=0, max=largest.shape[1] - 1).unsqueeze(1)).squeeze(1)
        t = torch.where(diff < 0, pick, t)
    return t


# ----------------------------------------------------------------------------- ops


class _Op:
    name = ""

    def __init__(self, params: dict):
        cls = _CPU_CLASSES.get(self.name)
        defaults = cls.defaults if cls is not None else self.defaults
        unknown = sorted(set(params) - set(defaults))
        if unknown:
            raise ValueError(f"occluder {self.name!r} got unknown parameter(s) {unknown}; known: {sorted(defaults)}")
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


class _BlockOp(_Op):
    name = "block"

    def __call__(self, ctx, img, lm):
        b = img.shape[0]
        W, H = ctx.width, ctx.height
        u = self._draws(ctx, b)
        ratio = self._ratio(u)
        fill = _codes(self.params["fill"], u["fill"], G.FILLS, "fill")
        area = ratio * W * H
        side = _round_half_even(torch.sqrt(area))
        if W <= H:
            alt_w, alt_h = torch.full_like(area, W), torch.clamp(_round_half_even(area / W), max=H)
        else:
            alt_w, alt_h = torch.clamp(_round_half_even(area / H), max=W), torch.full_like(area, H)
        square = side <= min(W, H)
        bw = torch.where(square, side, alt_w).long()
        bh = torch.where(square, side, alt_h).long()
        return self._place(ctx, img, bw, bh, fill)

    def _place(self, ctx, img, bw, bh, fill):
        b = img.shape[0]
        pos = ctx.rand(b, 2)
        x = torch.floor(pos[:, 0] * (ctx.width - bw + 1)).long()
        y = torch.floor(pos[:, 1] * (ctx.height - bh + 1)).long()
        own = _rect_mask(ctx, x, y, bw, bh)
        return _paint(ctx, img, own, fill, torch.stack([x, y, bw, bh], 1)), own


def rect_dims(pixels: Tensor, aspect: Tensor, W: int, H: int) -> tuple[Tensor, Tensor]:
    """Vectorised G.rect_dims (float64 in, int64 out)."""
    h = torch.clamp(_round_half_even(torch.sqrt(pixels / aspect)), min=1)
    w = torch.clamp(_round_half_even(pixels / h), min=1)
    wide = w > W
    h = torch.where(wide, torch.clamp(torch.clamp(_round_half_even(pixels / W), min=1), max=H), h)
    w = torch.where(wide, torch.full_like(w, W), w)
    tall = h > H
    w = torch.where(tall, torch.clamp(torch.clamp(_round_half_even(pixels / H), min=1), max=W), w)
    h = torch.where(tall, torch.full_like(h, H), h)
    empty = pixels <= 0
    return torch.where(empty, 0, w).long(), torch.where(empty, 0, h).long()


class _RectangleOp(_BlockOp):
    name = "rectangle"

    def __call__(self, ctx, img, lm):
        b = img.shape[0]
        u = self._draws(ctx, b)
        ratio = self._ratio(u)
        aspect = _num(self.params["aspect"], u["aspect"])
        fill = _codes(self.params["fill"], u["fill"], G.FILLS, "fill")
        pixels = _round_half_even(ratio * ctx.width * ctx.height)
        bw, bh = rect_dims(pixels, aspect, ctx.width, ctx.height)
        return self._place(ctx, img, bw, bh, fill)


@dataclass
class _Shapes:
    """A batch of unit shapes: gauge(dx, dy) on coordinates broadcasting to [b, H, W] (dx [b,1,W],
    dy [b,H,1], or both [b,1,M]) returns [b, H, W]; area [b], extents [b] each."""

    gauge: Any
    area: Tensor
    xmin: Tensor
    xmax: Tensor
    ymin: Tensor
    ymax: Tensor
    power: int


def _pseudo_angle(dx: Tensor, dy: Tensor) -> Tensor:
    q = dx / (dx.abs() + dy.abs() + 1e-20)
    return (1 - q) + (dy < 0).to(q.dtype) * (2 + 2 * q)  # 1 - q for dy >= 0, 3 + q below


class _GaugeOp(_Op):
    def shapes(self, ctx: _Ctx, c: dict, b: int) -> _Shapes:
        raise NotImplementedError

    def concrete(self, ctx, u) -> dict:
        c = {}
        for key, value in self.params.items():
            if key in ("fill",):
                c[key] = _codes(value, u[key], G.FILLS, "fill")
            elif key == "overflow":
                c[key] = _codes(value, u[key], G.OVERFLOW, "overflow")
            elif key in ("vertices", "harmonics"):
                c[key] = _int(value, u[key])
            else:
                c[key] = _num(value, u[key])
        return c

    def __call__(self, ctx, img, lm):
        b = img.shape[0]
        W, H = ctx.width, ctx.height
        u = self._draws(ctx, b)
        c = self.concrete(ctx, u)
        c["ratio"] = self._ratio(u)
        sh = self.shapes(ctx, c, b)
        k = _round_half_even(c["ratio"] * W * H).long()
        s0 = torch.sqrt(k.to(torch.float64) / sh.area)
        span_x, span_y = s0 * (sh.xmax - sh.xmin), s0 * (sh.ymax - sh.ymin)
        fits = (span_x <= W) & (span_y <= H)
        pos = ctx.rand(b, 2)
        cx = torch.where(fits, -s0 * sh.xmin + pos[:, 0] * (W - span_x), W / 2.0 - s0 * (sh.xmin + sh.xmax) / 2)
        cy = torch.where(fits, -s0 * sh.ymin + pos[:, 1] * (H - span_y), H / 2.0 - s0 * (sh.ymin + sh.ymax) / 2)
        ys, xs = ctx.grid()
        # separable coordinates [b,1,W] and [b,H,1]: gauges broadcast them, saving full-size ops
        dx = xs.view(1, 1, W) + 0.5 - cx.float().view(b, 1, 1)
        dy = ys.view(1, H, 1) + 0.5 - cy.float().view(b, 1, 1)
        g = sh.gauge(dx, dy).reshape(b, -1)
        thr = kth_smallest(g, k.clamp(min=1), s0**sh.power, sh.power)
        thr = torch.where(k > 0, thr, -_FAR)  # per-row thresholds: [b] ops, not [b, H*W]
        own = g <= thr.unsqueeze(1)
        shrink = (~fits) & (c["overflow"] == G.OVERFLOW.index("shrink"))
        if bool(shrink.any()):
            ring = torch.where(shrink, self._ring_min(ctx, sh, cx, cy), _FAR)
            own = own & (g < ring.to(g.dtype).unsqueeze(1))
        own = own.view(b, H, W)
        return _paint(ctx, img, own, c["fill"], None), own

    @staticmethod
    def _ring_min(ctx, sh, cx, cy) -> Tensor:
        W, H = ctx.width, ctx.height
        xs = torch.arange(-1, W + 1, device=ctx.device, dtype=torch.float32)
        ys = torch.arange(-1, H + 1, device=ctx.device, dtype=torch.float32)
        rx = torch.cat([xs, xs, torch.full((H + 2,), -1.0, device=ctx.device), torch.full((H + 2,), float(W), device=ctx.device)])
        ry = torch.cat([torch.full((W + 2,), -1.0, device=ctx.device), torch.full((W + 2,), float(H), device=ctx.device), ys, ys])
        dx = rx.view(1, 1, -1) + 0.5 - cx.float().view(-1, 1, 1)
        dy = ry.view(1, 1, -1) + 0.5 - cy.float().view(-1, 1, 1)
        return sh.gauge(dx, dy).reshape(len(cx), -1).amin(1)


class _EllipseOp(_GaugeOp):
    name = "ellipse"

    def shapes(self, ctx, c, b):
        a, bb = torch.sqrt(c["aspect"]), 1.0 / torch.sqrt(c["aspect"])
        t = torch.deg2rad(c["angle"])
        ca, sa = (torch.cos(t) / a).float().view(b, 1, 1), (torch.sin(t) / a).float().view(b, 1, 1)
        cb, sb = (torch.cos(t) / bb).float().view(b, 1, 1), (torch.sin(t) / bb).float().view(b, 1, 1)

        def gauge(dx, dy):
            u = dx * ca + dy * sa
            v = dy * cb - dx * sb
            return u * u + v * v

        ex = torch.sqrt((a * torch.cos(t)) ** 2 + (bb * torch.sin(t)) ** 2)
        ey = torch.sqrt((a * torch.sin(t)) ** 2 + (bb * torch.cos(t)) ** 2)
        return _Shapes(gauge, torch.full_like(ex, math.pi), -ex, ex, -ey, ey, power=2)


class _PolygonOp(_GaugeOp):
    name = "polygon"

    def shapes(self, ctx, c, b):
        n = c["vertices"]
        if bool((n < 3).any()) or bool(((c["spikiness"] < 0) | (c["spikiness"] >= 1)).any()):
            raise ValueError("polygon needs vertices >= 3 and spikiness in [0, 1)")
        N = int(n.max())
        j = torch.arange(N, device=ctx.device).view(1, N)
        active = j < n.view(b, 1)
        gaps = torch.zeros(b, N, dtype=torch.float64, device=ctx.device)
        todo = torch.ones(b, dtype=torch.bool, device=ctx.device)
        while bool(todo.any()):  # same rejection rule as G.polygon_vertices
            fresh = torch.where(active, 0.5 + ctx.rand(b, N), torch.zeros_like(gaps))
            fresh = fresh / fresh.sum(1, keepdim=True) * (2 * math.pi)
            gaps = torch.where(todo.view(b, 1), fresh, gaps)
            todo = todo & (gaps.amax(1) >= G.POLYGON_MAX_GAP)
        phase = ctx.rand(b) * (2 * math.pi)
        angles = phase.view(b, 1) + torch.cumsum(gaps, 1) - gaps
        radii = 1.0 - c["spikiness"].view(b, 1) * ctx.rand(b, N)
        px, py = radii * torch.cos(angles), radii * torch.sin(angles)
        nxt = torch.where(j + 1 < n.view(b, 1), j + 1, torch.zeros_like(j)).expand(b, N)
        qx, qy = px.gather(1, nxt), py.gather(1, nxt)
        d = px * qy - py * qx
        coef_x, coef_y = (qy - py) / d, (px - qx) / d
        pa = torch.where(active, _pseudo_angle(px, py), torch.full_like(px, 5.0))  # inactive sort last
        pa, order = torch.sort(pa, dim=1, stable=True)
        bounds = pa.float().contiguous()
        cxs, cys = coef_x.gather(1, order).float(), coef_y.gather(1, order).float()

        def gauge(dx, dy):
            pa = _pseudo_angle(dx, dy)
            shape = pa.shape
            idx = torch.searchsorted(bounds, pa.reshape(b, -1), right=True) - 1
            idx = torch.remainder(idx, n.view(b, 1))  # -1 (before the first vertex): the last sector
            return (dx * cxs.gather(1, idx).view(shape) + dy * cys.gather(1, idx).view(shape))

        big = torch.full_like(px, float("inf"))
        area = 0.5 * torch.where(active, d, torch.zeros_like(d)).sum(1)
        return _Shapes(gauge, area, torch.where(active, px, big).amin(1), torch.where(active, px, -big).amax(1),
                       torch.where(active, py, big).amin(1), torch.where(active, py, -big).amax(1), power=1)


_BLOB_TABLES: dict[str, tuple[Tensor, ...]] = {}


def _blob_tables(device) -> tuple[Tensor, ...]:
    key = str(device)
    if key not in _BLOB_TABLES:
        n = G.BLOB_BINS
        edges = np.arctan2(*G.pseudo_angle_inverse(np.arange(n + 1) * (4.0 / n))[::-1])
        widths = np.mod(np.diff(edges), 2.0 * math.pi)
        _BLOB_TABLES[key] = tuple(torch.as_tensor(a, dtype=torch.float64, device=device) for a in (
            G._BLOB_COS, G._BLOB_SIN, G._BLOB_COS_DIR, G._BLOB_SIN_DIR, widths))
    return _BLOB_TABLES[key]


class _BlobOp(_GaugeOp):
    name = "blob"

    def shapes(self, ctx, c, b):
        K = c["harmonics"]
        if bool(((K < 1) | (K > G.BLOB_MAX_HARMONICS)).any()) or bool((c["amplitude"] < 0).any()):
            raise ValueError(f"blob needs harmonics in [1, {G.BLOB_MAX_HARMONICS}] and amplitude >= 0")
        cos_k, sin_k, cos_dir, sin_dir, widths = _blob_tables(ctx.device)
        M = int(K.max())
        k = torch.arange(1, M + 1, device=ctx.device, dtype=torch.float64).view(1, M)
        on = k <= K.view(b, 1)
        size = torch.where(on, c["amplitude"].view(b, 1) * ctx.randn(b, M) / k, torch.zeros(b, M, dtype=torch.float64, device=ctx.device))
        phases = ctx.rand(b, M) * (2 * math.pi)
        radius = torch.exp((size * torch.cos(phases)) @ cos_k[:M] - (size * torch.sin(phases)) @ sin_k[:M])
        inv_sq = (1.0 / radius**2).float()
        nb = G.BLOB_BINS

        def gauge(dx, dy):
            pa = _pseudo_angle(dx, dy)
            idx = torch.clamp((pa * (nb / 4.0)).long(), max=nb - 1)
            return (dx * dx + dy * dy) * inv_sq.gather(1, idx.reshape(b, -1)).view(pa.shape)

        xs, ys = radius * cos_dir, radius * sin_dir
        area = 0.5 * (radius**2 * widths).sum(1)
        return _Shapes(gauge, area, xs.amin(1), xs.amax(1), ys.amin(1), ys.amax(1), power=2)


class _PiecesOp(_Op):
    name = "pieces"

    def __call__(self, ctx, img, lm):
        b = img.shape[0]
        W, H = ctx.width, ctx.height
        u = self._draws(ctx, b)
        ratio = self._ratio(u)
        n = _int(self.params["n"], u["n"])
        shape = _codes(self.params["shape"], u["shape"], G.Pieces.SHAPES, "pieces shape")
        fill = _codes(self.params["fill"], u["fill"], G.FILLS, "fill")
        if bool((n < 1).any()):
            raise ValueError("pieces needs n >= 1")
        N = int(n.max())
        dev = ctx.device
        active = torch.arange(N, device=dev).view(1, N) < n.view(b, 1)
        weights = -torch.log1p(-ctx.rand(b, N)) - torch.log1p(-ctx.rand(b, N))
        weights = torch.where(active, weights, torch.zeros_like(weights))
        total = _round_half_even(ratio * W * H)
        counts = _split(total, weights, active)
        mixed = shape == G.Pieces.SHAPES.index("mixed")
        ellipse = torch.where(mixed.view(b, 1), ctx.rand(b, N) < 0.5,
                              (shape == G.Pieces.SHAPES.index("ellipse")).view(b, 1).expand(b, N))
        aspect = G.PIECE_ASPECT[0] + (G.PIECE_ASPECT[1] - G.PIECE_ASPECT[0]) * ctx.rand(b, N)
        counts, order = torch.sort(counts, dim=1, descending=True, stable=True)
        ellipse, aspect = ellipse.gather(1, order), aspect.gather(1, order)
        cf = counts.to(torch.float64)
        rw, rh = rect_dims(cf, aspect, W, H)
        box_area = 4.0 / math.pi * cf
        ew = torch.clamp(torch.clamp(torch.ceil(torch.sqrt(box_area * aspect)), min=1), max=W)
        eh = torch.clamp(torch.clamp(torch.ceil(box_area / ew), min=1), max=H)
        bw = torch.where(ellipse, ew.long(), rw)
        bh = torch.where(ellipse, eh.long(), rh)
        real = counts > 0
        # layouts: whole sub-batch first, then only the samples still missing pieces
        best_x = torch.zeros(b, N, dtype=torch.long, device=dev)
        best_y = torch.zeros_like(best_x)
        best_ok = torch.zeros(b, N, dtype=torch.bool, device=dev)
        rows = torch.arange(b, device=dev)
        for _ in range(G.PIECES_ATTEMPTS):
            x, y, ok = self._layout(ctx, bw[rows], bh[rows], real[rows])
            better = ok.sum(1) > best_ok[rows].sum(1)
            sel = rows[better]
            best_x[sel], best_y[sel], best_ok[sel] = x[better], y[better], ok[better]
            rows = rows[best_ok[rows].sum(1) < real[rows].sum(1)]
            if len(rows) == 0:
                break
        own = torch.zeros(b, H * W, dtype=torch.bool, device=dev)
        ys, xs = ctx.grid()
        gx = (xs.view(1, 1, W) + 0.5).expand(1, H, W).reshape(1, -1)
        gy = (ys.view(1, H, 1) + 0.5).expand(1, H, W).reshape(1, -1)
        for j in range(N):
            placed = best_ok[:, j]
            if not bool(placed.any()):
                continue
            x, y, w, h = best_x[:, j], best_y[:, j], bw[:, j], bh[:, j]
            piece = _rect_mask(ctx, x, y, w, h).view(b, -1)
            rows = torch.nonzero(ellipse[:, j] & placed).squeeze(1)
            if len(rows):
                # the k pixels of the box nearest its centre in ellipse gauge (G.ellipse_in_box)
                x, y, w, h = x[rows].float().view(-1, 1), y[rows].float().view(-1, 1), w[rows], h[rows]
                half_w, half_h = w.float().view(-1, 1) / 2, h.float().view(-1, 1) / 2
                g = ((gx - x - half_w) / half_w) ** 2 + ((gy - y - half_h) / half_h) ** 2
                g = g + (~piece[rows]).to(g.dtype) * _FAR  # outside the box: out of reach
                k = torch.minimum(counts[rows, j], w * h).clamp(min=1)
                thr = kth_smallest(g, k, torch.ones(len(rows), dtype=torch.float64, device=dev), power=2)
                piece[rows] = g <= thr.view(-1, 1)
            own |= _and(piece, placed.view(b, 1))
        own = own.view(b, H, W)
        return _paint(ctx, img, own, fill, None), own

    @staticmethod
    def _layout(ctx, bw, bh, real):
        """One layout attempt: piece j at a uniformly random free top-left position, keeping a
        one-pixel gap from the pieces placed before it (as G._layout)."""
        b, N = bw.shape
        W, H = ctx.width, ctx.height
        dev = ctx.device
        ys = torch.arange(H, device=dev).view(1, H, 1)
        xs = torch.arange(W, device=dev).view(1, 1, W)
        x = torch.zeros(b, N, dtype=torch.long, device=dev)
        y = torch.zeros_like(x)
        ok = torch.zeros(b, N, dtype=torch.bool, device=dev)
        for j in range(N):
            w, h = bw[:, j].view(b, 1, 1), bh[:, j].view(b, 1, 1)
            # uint8 arithmetic instead of broadcast bool ops (see _and)
            valid = (ys <= H - h).to(torch.uint8) * (xs <= W - w).to(torch.uint8)
            for i in range(j):
                px, py = x[:, i].view(b, 1, 1), y[:, i].view(b, 1, 1)
                pw, ph = bw[:, i].view(b, 1, 1), bh[:, i].view(b, 1, 1)
                # positions within one pixel of placed box i: a row band times a column band
                rows = ((ys >= py - h) & (ys <= py + ph) & ok[:, i].view(b, 1, 1)).to(torch.uint8)
                cols = ((xs >= px - w) & (xs <= px + pw)).to(torch.uint8)
                valid = valid * (1 - rows * cols)
            valid = valid.view(b, -1)
            # a uniform pick among the valid positions: the t-th of them, t uniform below their count
            seen = torch.cumsum(valid, 1, dtype=torch.int32)
            t = torch.floor(ctx.rand(b) * seen[:, -1]).to(torch.int32)
            # seen is sorted along each row: the first position where it passes t
            pos = torch.searchsorted(seen, (t + 1).view(b, 1)).view(b).clamp(max=H * W - 1)
            ok[:, j] = (seen[:, -1] > 0) & real[:, j]
            y[:, j], x[:, j] = pos // W, pos % W
        return x, y, ok


def _split(total: Tensor, weights: Tensor, active: Tensor) -> Tensor:
    """Vectorised G.split_pixels (largest remainder), rows of `weights` [b, N]."""
    share = weights / weights.sum(1, keepdim=True) * total.view(-1, 1)
    base = torch.floor(share)
    rest = (total - base.sum(1)).long()
    frac = torch.where(active, share - base, torch.full_like(share, -1.0))
    order = torch.sort(-frac, dim=1, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return (base + (rank < rest.view(-1, 1)).to(base.dtype)).long()


class _BankOp(_Op):
    """Templates from a TemplateBank (`bank` names it in TorchOccluder's banks; `index` picks a
    template, default uniform). placement="landmarks": anchors onto their face-frame targets,
    then scaled by `scale` and rotated by `rotation` degrees about the targets' midpoint and
    shifted by up to `shift` (face-frame units, uniform in [-shift, shift] per axis);
    "random" (and always when no landmarks are given): FROM-style, the template at its own size
    times `scale`, centred on a uniform pixel, cut by the border."""

    name = "bank"
    defaults = {"bank": "default", "index": None, "scale": 1.0, "rotation": 0.0, "shift": 0.0, "placement": "landmarks"}

    def __call__(self, ctx, img, lm):
        b = img.shape[0]
        W, H = ctx.width, ctx.height
        name = self.params["bank"]
        if name not in ctx.banks:
            raise KeyError(f"no template bank {name!r} given to TorchOccluder (banks={sorted(ctx.banks)})")
        bank: TemplateBank = ctx.banks[name]
        prem, anchors, targets, sizes = bank.on(ctx.device)
        u = self._draws(ctx, b)
        n = len(bank)
        if self.params["index"] is None:
            idx = torch.clamp((u["index"] * n).long(), max=n - 1)
        else:
            idx = _int(self.params["index"], u["index"])
        scale = _num(self.params["scale"], u["scale"])
        rot = torch.deg2rad(_num(self.params["rotation"], u["rotation"]))
        placement = _codes(self.params["placement"], u["placement"], ("landmarks", "random"), "placement")
        a = anchors[idx]  # [b, 2, 2]
        a_mid = a.mean(1)
        z_rot = torch.polar(torch.ones_like(rot), rot)
        pos = ctx.rand(b, 2)
        # FROM-style: own size x scale, centre uniform over pixels
        size = sizes[idx]
        centre_rand = torch.stack([torch.floor(pos[:, 0] * W) + 0.5, torch.floor(pos[:, 1] * H) + 0.5], 1)
        z_rand = torch.complex(scale, torch.zeros_like(scale)) * z_rot
        mid_rand = size / 2
        if lm is not None:
            lm = lm.to(torch.float64)
            eye_mid = (lm[:, 0] + lm[:, 1]) / 2
            ex = lm[:, 1] - lm[:, 0]
            ey = (lm[:, 3] + lm[:, 4]) / 2 - eye_mid
            shift = _num(self.params["shift"], u["shift"])
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
        # output pixel p -> template point mid + (p - centre) / z
        ys, xs = ctx.grid()
        px = (xs.view(1, 1, W) + 0.5).double() - centre[:, 0].view(b, 1, 1)
        py = (ys.view(1, H, 1) + 0.5).double() - centre[:, 1].view(b, 1, 1)
        zi = (1.0 / z).view(b, 1, 1)
        tx = mid[:, 0].view(b, 1, 1) + px * zi.real - py * zi.imag
        ty = mid[:, 1].view(b, 1, 1) + px * zi.imag + py * zi.real
        th, tw = prem.shape[2], prem.shape[3]
        gz = ((2 * idx.double() + 1) / n - 1).view(b, 1, 1).expand(b, H, W)
        grid = torch.stack([tx / tw * 2 - 1, ty / th * 2 - 1, gz], -1).float().unsqueeze(0)  # [1,b,H,W,3]
        # one 3-D sample over the stack: depth picks the template exactly (at a slice centre)
        sample = F.grid_sample(prem.permute(1, 0, 2, 3).unsqueeze(0), grid, mode="bilinear",
                               padding_mode="zeros", align_corners=False)[0].permute(1, 0, 2, 3)
        alpha = sample[:, 3]
        own = alpha >= 0.5
        rgb = sample[:, :3] / alpha.clamp(min=1e-6).unsqueeze(1)
        rgb = ctx.lo + (ctx.hi - ctx.lo) * rgb.clamp(0, 1)
        if ctx.integer:
            rgb = torch.round(rgb)
        return _blend(img, rgb.to(img.dtype), own.unsqueeze(1)), own


_OPS = {op.name: op for op in (_BlockOp, _RectangleOp, _EllipseOp, _PolygonOp, _BlobOp, _PiecesOp, _BankOp)}


# ----------------------------------------------------------------------------- the occluder


def _cumulative(node):
    """Mix nodes carry cumulative probabilities here (one uniform draw per image picks a branch)."""
    if node[0] == "mix":
        return ("mix", np.cumsum(node[1]), [_cumulative(child) for child in node[2]])
    if node[0] == "all":
        return ("all", [_cumulative(child) for child in node[1]])
    return node


class TorchOccluder:
    """A compiled spec applied to whole batches with torch ops.

    __call__(images [B,3,H,W] uint8 or float, landmarks [B,5,2] or None, generator) returns
    (occluded images, same dtype and device; masks bool [B,1,H,W]). Inputs are not modified.
    The ops run on the images' device; `device` is where banks and tables are prepared ahead.
    `banks` maps names to TemplateBanks for the `bank` family; `value_range` is (black, white)
    for float images (default (0, 1); uint8 images always use (0, 255)).
    On CPU, run with torch.set_num_threads(1) per process when several processes share the cores
    (DataLoader workers): intra-op threads that spin against each other slowed it 40x in tests."""

    def __init__(self, spec: Any, device: str | torch.device = "cpu", banks: dict[str, TemplateBank] | None = None,
                 value_range: tuple[float, float] | None = None):
        self.spec = load_spec(spec)
        self.device = torch.device(device)
        self.banks = dict(banks or {})
        self.value_range = value_range
        self._root = self._compile(self.spec)
        for bank in self.banks.values():
            bank.on(self.device)

    def _compile(self, spec):
        def leaf(name: str, params: dict):
            if name not in _OPS:
                raise KeyError(f"occluder {name!r} has no torch implementation; supported: {', '.join(SUPPORTED)} "
                               f"(load object templates into a TemplateBank and use 'bank')")
            return ("one", _OPS[name](params))

        return _cumulative(compile_tree(spec, leaf))

    def __call__(self, images: Tensor, landmarks: Tensor | None, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        b, _, h, w = images.shape
        integer = images.dtype == torch.uint8
        lo, hi = (0.0, 255.0) if integer else (self.value_range or (0.0, 1.0))
        ctx = _Ctx(generator, images.device, float(lo), float(hi), integer, h, w, self.banks)
        mask = torch.zeros(b, 1, h, w, dtype=torch.bool, device=images.device)
        lm = None if landmarks is None else landmarks.to(images.device)
        # ops work in the images' dtype and never write into their input
        out, mask = self._run(self._root, ctx, images, mask, lm)
        return (out.clone() if out is images else out), mask

    def _run(self, node, ctx, img, mask, lm):
        kind = node[0]
        if kind == "clean" or img.shape[0] == 0:
            return img, mask
        if kind == "one":
            img, own = node[1](ctx, img, lm)
            return img, mask | own.unsqueeze(1)
        if kind == "all":
            for child in node[1]:
                img, mask = self._run(child, ctx, img, mask, lm)
            return img, mask
        cdf = torch.as_tensor(node[1], dtype=torch.float64, device=img.device)
        branch = torch.clamp(torch.searchsorted(cdf, ctx.rand(img.shape[0]), right=True), max=len(node[2]) - 1)
        img, mask = img.clone(), mask.clone()  # written per branch below; the input stays intact
        for i, child in enumerate(node[2]):
            sel = torch.nonzero(branch == i).squeeze(1)
            if len(sel) == 0 or child[0] == "clean":
                continue
            sub_img, sub_mask = self._run(child, ctx, img[sel], mask[sel], None if lm is None else lm[sel])
            img.index_copy_(0, sel, sub_img)
            mask.index_copy_(0, sel, sub_mask)
        return img, mask
