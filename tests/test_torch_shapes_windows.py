"""The gauge shapes (`ellipse`, `polygon`, `blob`) and `pieces` compute only inside each sample's
window (issue 16, item 4): against the whole-grid implementations they replaced (shapes.py at
9c887c3 for polygon and pieces, at 9364582 for ellipse and blob, kept below with their
arithmetic unchanged as `_WholeGrid*`), seeded batches give bit-identical images and masks, and
the generator ends in the same state (the same draws, in the same order)."""

from __future__ import annotations

import math

import pytest
import torch

from occsynth.faces.templates import get_template
from occsynth.occluders.families import geometric as G
from occsynth.occluders.torch import TorchOccluder, _ops
from occsynth.occluders.torch import shapes as shapes_module
from occsynth.occluders.torch._ops import (
    _FAR,
    _and,
    _codes,
    _Ctx,
    _int,
    _paint,
    _rect_mask,
    _round_half_even,
    kth_smallest,
)
from occsynth.occluders.torch.shapes import (
    _blob_tables,
    _BlobOp,
    _covered,
    _EllipseOp,
    _PiecesOp,
    _PolygonOp,
    _pseudo_angle,
    _Shapes,
    _split,
    rect_dims,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# ----------------------------------------------------------------------------- the references


class _WholeGrid:
    """_GaugeOp.__call__ at 9c887c3 (the same at 9364582): the gauge over every pixel."""

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
        dx = xs.view(1, 1, W) + 0.5 - cx.float().view(b, 1, 1)
        dy = ys.view(1, H, 1) + 0.5 - cy.float().view(b, 1, 1)
        g = sh.gauge(dx, dy).reshape(b, -1)
        thr = kth_smallest(g, k.clamp(min=1), s0**sh.power, sh.power)
        thr = torch.where(k > 0, thr, -_FAR)
        own = g <= thr.unsqueeze(1)
        shrink = (~fits) & (c["overflow"] == G.OVERFLOW.index("shrink"))
        if bool(shrink.any()):
            ring = torch.where(shrink, self._ring_min(ctx, sh, cx, cy), _FAR)
            own = own & (g < ring.to(g.dtype).unsqueeze(1))
        own = own.view(b, H, W)
        return _paint(ctx, img, own, c["fill"], None), own


class _WholeGridPolygon(_WholeGrid, _PolygonOp):
    """_PolygonOp.shapes at 9c887c3."""

    def shapes(self, ctx, c, b):
        n = c["vertices"]
        if bool((n < 3).any()) or bool(((c["spikiness"] < 0) | (c["spikiness"] >= 1)).any()):
            raise ValueError("polygon needs vertices >= 3 and spikiness in [0, 1)")
        N = int(n.max())
        j = torch.arange(N, device=ctx.device).view(1, N)
        active = j < n.view(b, 1)
        gaps = torch.zeros(b, N, dtype=torch.float64, device=ctx.device)
        todo = torch.ones(b, dtype=torch.bool, device=ctx.device)
        while bool(todo.any()):
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
        pa = torch.where(active, _pseudo_angle(px, py), torch.full_like(px, 5.0))
        pa, order = torch.sort(pa, dim=1, stable=True)
        bounds = pa.float().contiguous()
        cxs, cys = coef_x.gather(1, order).float(), coef_y.gather(1, order).float()

        def gauge(dx, dy):
            pa = _pseudo_angle(dx, dy)
            shape = pa.shape
            flat = pa.reshape(b, -1)
            idx = torch.searchsorted(bounds, flat, right=True) - 1
            idx += (idx < 0).long() * n.view(b, 1)
            return dx * cxs.gather(1, idx).view(shape) + dy * cys.gather(1, idx).view(shape)

        big = torch.full_like(px, float("inf"))
        area = 0.5 * torch.where(active, d, torch.zeros_like(d)).sum(1)
        return _Shapes(
            gauge,
            area,
            torch.where(active, px, big).amin(1),
            torch.where(active, px, -big).amax(1),
            torch.where(active, py, big).amin(1),
            torch.where(active, py, -big).amax(1),
            power=1,
        )


class _WholeGridEllipse(_WholeGrid, _EllipseOp):
    """_EllipseOp.shapes at 9364582."""

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


class _WholeGridBlob(_WholeGrid, _BlobOp):
    """_BlobOp.shapes at 9364582."""

    def shapes(self, ctx, c, b):
        K = c["harmonics"]
        if bool(((K < 1) | (K > G.BLOB_MAX_HARMONICS)).any()) or bool((c["amplitude"] < 0).any()):
            raise ValueError(f"blob needs harmonics in [1, {G.BLOB_MAX_HARMONICS}] and amplitude >= 0")
        cos_k, sin_k, cos_dir, sin_dir, widths = _blob_tables(ctx.device)
        M = int(K.max())
        k = torch.arange(1, M + 1, device=ctx.device, dtype=torch.float64).view(1, M)
        on = k <= K.view(b, 1)
        size = torch.where(
            on,
            c["amplitude"].view(b, 1) * ctx.randn(b, M) / k,
            torch.zeros(b, M, dtype=torch.float64, device=ctx.device),
        )
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


class _WholeGridPieces(_PiecesOp):
    """_PiecesOp at 9c887c3: layouts by a cumulative sum over every position, ellipse pieces
    ranked over every pixel."""

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
        ellipse = torch.where(
            mixed.view(b, 1), ctx.rand(b, N) < 0.5, (shape == G.Pieces.SHAPES.index("ellipse")).view(b, 1).expand(b, N)
        )
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
                x, y, w, h = x[rows].float().view(-1, 1), y[rows].float().view(-1, 1), w[rows], h[rows]
                half_w, half_h = w.float().view(-1, 1) / 2, h.float().view(-1, 1) / 2
                g = ((gx - x - half_w) / half_w) ** 2 + ((gy - y - half_h) / half_h) ** 2
                g = g + (~piece[rows]).to(g.dtype) * _FAR
                k = torch.minimum(counts[rows, j], w * h).clamp(min=1)
                thr = kth_smallest(g, k, torch.ones(len(rows), dtype=torch.float64, device=dev), power=2)
                piece[rows] = g <= thr.view(-1, 1)
            own |= _and(piece, placed.view(b, 1))
        own = own.view(b, H, W)
        return _paint(ctx, img, own, fill, None), own

    @staticmethod
    def _layout(ctx, bw, bh, real):
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
            valid = (ys <= H - h).to(torch.uint8) * (xs <= W - w).to(torch.uint8)
            for i in range(j):
                px, py = x[:, i].view(b, 1, 1), y[:, i].view(b, 1, 1)
                pw, ph = bw[:, i].view(b, 1, 1), bh[:, i].view(b, 1, 1)
                rows = ((ys >= py - h) & (ys <= py + ph) & ok[:, i].view(b, 1, 1)).to(torch.uint8)
                cols = ((xs >= px - w) & (xs <= px + pw)).to(torch.uint8)
                valid = valid * (1 - rows * cols)
            valid = valid.view(b, -1)
            seen = torch.cumsum(valid, 1, dtype=torch.int32)
            t = torch.floor(ctx.rand(b) * seen[:, -1]).to(torch.int32)
            pos = torch.searchsorted(seen, (t + 1).view(b, 1)).view(b).clamp(max=H * W - 1)
            ok[:, j] = (seen[:, -1] > 0) & real[:, j]
            y[:, j], x[:, j] = pos // W, pos % W
        return x, y, ok


# ----------------------------------------------------------------------------- the comparisons


def _images(b, dtype, value_range, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (b, 3, h, w), generator=g, dtype=torch.uint8)
    if dtype != torch.uint8:
        lo, hi = value_range or (0.0, 1.0)
        images = (lo + (hi - lo) * images.to(dtype) / 255.0).to(dtype)
    return images


def _landmarks(b, h, w, seed):
    points = torch.as_tensor(get_template("arcface-112x112").points, dtype=torch.float32)
    lm = points * torch.tensor([w / 112.0, h / 112.0])
    return lm + 20 * (torch.rand(b, 1, 2, generator=torch.Generator().manual_seed(seed)) - 0.5)


def _compare(name, reference, params, dtype, value_range, h, w, with_landmarks, device, b=64, seeds=(0, 1)):
    for seed in seeds:
        images = _images(b, dtype, value_range, h, w, seed).to(device)
        lm = _landmarks(b, h, w, seed).to(device) if with_landmarks else None
        occ = TorchOccluder({"name": name, "params": params}, device=device, value_range=value_range)
        g_new, g_ref = torch.Generator(device).manual_seed(seed + 5), torch.Generator(device).manual_seed(seed + 5)
        out, masks = occ(images, lm, g_new)
        leaf = occ._root[1]
        ref = reference(leaf.params)
        ref_out, ref_own = ref(
            _ctx_for(occ, images, g_ref, value_range), images, None if lm is None else lm.to(images.device)
        )
        assert torch.equal(masks[:, 0], ref_own), (name, params, seed)
        assert torch.equal(out, ref_out), (name, params, seed)
        # the same draws in the same order: both generators end in the same state
        assert torch.equal(g_new.get_state(), g_ref.get_state())
        assert bool(masks.any())


def _ctx_for(occ, images, generator, value_range):
    integer = images.dtype == torch.uint8
    lo, hi = (0.0, 255.0) if integer else (value_range or (0.0, 1.0))
    return _Ctx(generator, images.device, float(lo), float(hi), integer, images.shape[2], images.shape[3], {})


IMAGES = [(torch.uint8, None, 112, 112), (torch.float32, None, 96, 80), (torch.float32, (-1.0, 1.0), 64, 112)]

POLYGONS = [
    {},  # the defaults
    {"ratio": [0.0005, 0.02], "vertices": [3, 6]},  # tiny: a handful of pixels, k = 0 included
    {"ratio": [0.0, 0.002], "vertices": 3, "spikiness": [0.0, 0.95]},
    {"ratio": [0.5, 0.95], "vertices": [3, 16], "spikiness": [0.0, 0.9], "overflow": "clip"},  # past the border
    {"ratio": [0.3, 0.9], "vertices": [8, 24], "spikiness": [0.5, 0.95], "overflow": "shrink"},
    {"ratio": [0.05, 0.6], "vertices": [3, 12], "overflow": {"choice": ["clip", "shrink"]}, "fill": "mean"},
    {"ratio": [0.1, 0.4], "fill": {"choice": ["noise", "texture", "white"]}},
]

ELLIPSES = [
    {},  # the defaults
    {"ratio": [0.0, 0.003], "aspect": [0.2, 5.0]},  # tiny and thin: k = 0 included
    {"ratio": [0.4, 0.95], "aspect": [0.3, 3.0], "overflow": {"choice": ["clip", "shrink"]}},  # past the border
    {"ratio": [0.05, 0.5], "angle": 45.0, "aspect": 4.0, "fill": "mean"},
    {"ratio": [0.1, 0.4], "fill": {"choice": ["noise", "texture", "white"]}},
]

BLOBS = [
    {},  # the defaults
    {"ratio": [0.0005, 0.01], "harmonics": [1, 16], "amplitude": [0.0, 1.2]},  # tiny, rough
    {"ratio": [0.4, 0.95], "amplitude": [0.3, 1.0], "overflow": {"choice": ["clip", "shrink"]}},
    {"ratio": [0.05, 0.5], "harmonics": 16, "amplitude": 1.5, "fill": {"choice": ["mean", "texture"]}},
]

PIECES = [
    {},  # the defaults
    {"ratio": [0.0, 0.01], "n": [1, 6]},  # tiny pieces, empty ones included
    {"ratio": [0.5, 0.95], "n": [1, 3], "shape": "ellipse"},  # large: pieces as big as the image
    {"ratio": [0.2, 0.8], "n": [4, 9], "shape": "mixed"},  # crowded: failed layouts, retries
    {"ratio": [0.05, 0.5], "n": [2, 5], "shape": "rectangle", "fill": "mean"},
    {"ratio": [0.1, 0.5], "n": [1, 5], "shape": "ellipse", "fill": {"choice": ["noise", "texture", "white"]}},
]


GAUGE_CASES = [
    *(("polygon", _WholeGridPolygon, params) for params in POLYGONS),
    *(("ellipse", _WholeGridEllipse, params) for params in ELLIPSES),
    *(("blob", _WholeGridBlob, params) for params in BLOBS),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_landmarks", [True, False])
@pytest.mark.parametrize("dtype, value_range, h, w", IMAGES)
@pytest.mark.parametrize("name, reference, params", GAUGE_CASES)
def test_gauge_windows_match_the_whole_grid(name, reference, params, dtype, value_range, h, w, with_landmarks, device):
    _compare(name, reference, params, dtype, value_range, h, w, with_landmarks, device)


def test_blob_shapes_lie_within_their_window_extents():
    """The blob's slack holds: on a fine grid around unit blobs, every point with gauge <= 1 lies
    within the extents widened by the slack, while the extents alone (taken at the bin centres)
    can be passed."""
    op = _BlobOp({"harmonics": [1, 16], "amplitude": [0.2, 1.5]})
    ctx = _Ctx(torch.Generator().manual_seed(4), torch.device("cpu"), 0.0, 1.0, False, 64, 64, {})
    b = 48
    c = op.concrete(ctx, op._draws(ctx, b))
    sh = op.shapes(ctx, c, b)
    r = float(torch.maximum(sh.xmax.abs(), sh.xmin.abs()).max().item()) * 1.2 + 0.1
    t = torch.linspace(-r, r, 801)
    dx, dy = t.float().view(1, 1, -1).expand(b, 1, -1), t.float().view(1, -1, 1).expand(b, -1, 1)
    inside = sh.gauge(dx, dy) <= 1.0
    x, y = dx.expand_as(inside).double(), dy.expand_as(inside).double()
    out = lambda lo, hi, v: inside & ((v < lo.view(b, 1, 1)) | (v > hi.view(b, 1, 1)))  # noqa: E731
    past = out(sh.xmin - sh.slack, sh.xmax + sh.slack, x) | out(sh.ymin - sh.slack, sh.ymax + sh.slack, y)
    assert not bool(past.any())
    assert bool((out(sh.xmin, sh.xmax, x) | out(sh.ymin, sh.ymax, y)).any())  # the slack is needed


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_landmarks", [True, False])
@pytest.mark.parametrize("dtype, value_range, h, w", IMAGES)
@pytest.mark.parametrize("params", PIECES)
def test_pieces_windows_match_the_whole_grid(params, dtype, value_range, h, w, with_landmarks, device):
    _compare("pieces", _WholeGridPieces, params, dtype, value_range, h, w, with_landmarks, device)


@pytest.mark.parametrize("chunk", [1, 10_000])  # a window per sample; one window for the batch (as off CPU)
def test_chunk_sizes_give_the_same_output(chunk, monkeypatch):
    monkeypatch.setattr(shapes_module, "CPU_CHUNK", chunk)
    _compare("polygon", _WholeGridPolygon, POLYGONS[4], torch.uint8, None, 64, 72, False, "cpu", b=40, seeds=(3,))
    _compare("ellipse", _WholeGridEllipse, ELLIPSES[2], torch.uint8, None, 64, 72, False, "cpu", b=40, seeds=(3,))
    _compare("blob", _WholeGridBlob, BLOBS[2], torch.uint8, None, 64, 72, False, "cpu", b=40, seeds=(3,))
    _compare("pieces", _WholeGridPieces, PIECES[3], torch.uint8, None, 64, 72, False, "cpu", b=40, seeds=(3,))


@pytest.mark.parametrize("name", ["ellipse", "polygon", "blob"])
def test_gauge_windows_written_by_indices_as_by_slices(name, monkeypatch):
    """Off CPU the gauge windows are written by a scatter of indices, on CPU by a loop of slices:
    forced on CPU, the index path gives the same masks and images."""
    params = {"ratio": [0.02, 0.9], "overflow": {"choice": ["clip", "shrink"]}}
    images = _images(40, torch.uint8, None, 64, 72, 3)
    runs = []
    for devices in (("cpu",), ()):
        monkeypatch.setattr(_ops, "SLICE_DEVICES", devices)
        runs.append(TorchOccluder({"name": name, "params": params})(images, None, torch.Generator().manual_seed(3)))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert bool(runs[0][1].any())


@pytest.mark.parametrize(
    "name, op, reference",
    [
        ("polygon", _PolygonOp, _WholeGridPolygon),
        ("ellipse", _EllipseOp, _WholeGridEllipse),
        ("blob", _BlobOp, _WholeGridBlob),
    ],
)
def test_windows_too_small_fall_back_to_the_whole_image(name, op, reference, monkeypatch):
    """With windows of the shape at half its area scale, the check fails for nearly every sample
    (the k-th smallest gauge lies beyond the window's reach): they are redone over the whole
    image, and the output is still the whole-grid one."""
    calls = []
    window = op._window

    def spy(*args):
        bad = window(*args)
        calls.append(int(bad.sum()))
        return bad

    monkeypatch.setattr(shapes_module, "REACH", (0.5, 0.0))
    monkeypatch.setattr(op, "_window", staticmethod(spy))
    _compare(name, reference, {"ratio": [0.05, 0.5]}, torch.float32, None, 48, 56, True, "cpu", b=40)
    assert sum(calls) >= 40  # most samples of both seeds failed the check and were redone


def test_covered_counts_the_union_of_the_intervals_in_each_row():
    """_covered by hand: intervals [3, 5], [0, 4], [9, 9] and an empty [7, 6] (clipped away);
    row 0 holds all of them (0..5 and 9: 7 integers), row 1 the first and the empty one (3), row
    2 none (0), row 3 the last two (1)."""
    s = torch.tensor([[3, 0, 9, 7]])
    e = torch.tensor([[5, 4, 9, 6]])
    band = torch.tensor([[[1, 1, 1, 1], [1, 0, 0, 1], [0, 0, 0, 0], [0, 0, 1, 1]]], dtype=torch.bool)
    assert _covered(s, e, band).tolist() == [[7, 3, 0, 1]]
    assert _covered(s[:, :0], e[:, :0], band[..., :0]).tolist() == [[0, 0, 0, 0]]
