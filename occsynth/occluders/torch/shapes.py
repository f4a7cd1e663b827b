"""The geometric families on batches: block, rectangle, ellipse, polygon, blob, pieces (see the
package docstring for how each matches the CPU path)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from occsynth.occluders.families import geometric as G
from occsynth.occluders.torch._ops import (
    _FAR,
    Tensor,
    _and,
    _at_most,
    _box,
    _codes,
    _count,
    _Ctx,
    _int,
    _num,
    _Op,
    _paint,
    _rect_mask,
    _round_half_even,
    by_slices,
    kth_smallest,
)


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
    """A batch of unit shapes: gauge(dx, dy, rows=None) on coordinates broadcasting to [n, H, W]
    (dx [n,1,W], dy [n,H,1], or both [n,1,M]) returns [n, H, W], for the samples `rows` (all b
    when None); area [b], extents [b] each (those placement uses); slack [b] or None: how far
    (in unit-shape coordinates) the shape {gauge <= 1} may reach past those extents, which the
    windows add (blob: its extents are taken at the bin centres, a sector reaches past them)."""

    gauge: Any
    area: Tensor
    xmin: Tensor
    xmax: Tensor
    ymin: Tensor
    ymax: Tensor
    power: int
    slack: Tensor | None = None


def _pseudo_angle(dx: Tensor, dy: Tensor) -> Tensor:
    q = dx / (dx.abs() + dy.abs() + 1e-20)
    return (1 - q) + (dy < 0).to(q.dtype) * (2 + 2 * q)  # 1 - q for dy >= 0, 3 + q below


# samples per chunk of window work on CPU (as the bank op: small temporaries stay in cache)
CPU_CHUNK = 32

# a gauge shape's window holds the shape scaled by REACH[0] * s0 + REACH[1] (s0 its area scale)
REACH = (1.05, 1.0)


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

    def _placement(self, ctx, img):
        """The draws and placement every gauge shape starts with (same draws, same order):
        (b, W, H, concrete values, shapes, pixel count k, area scale s0, fits, cx, cy)."""
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
        return b, W, H, c, sh, k, s0, fits, cx, cy

    def __call__(self, ctx, img, lm):
        """The placement, then the k pixels of smallest gauge, the gauge computed only in a window
        per sample rather than over the whole image (issue 16, item 4: on CPU, whole-frame
        elementwise ops made the batch slower than the per-image path).

        Why the window gives the whole image's mask: {g <= s^power} is the unit shape scaled by s,
        which lies in its box (extents, plus slack) scaled by s. Each sample's window holds the box
        at reach = 1.05 s0 + 1 (REACH; s0 the area scale) grown by 2 pixels, so every pixel outside
        it has g > reach^power. Wherever the k-th smallest gauge of the window is <= reach^power
        and at least k window pixels are <= it, the window holds the k smallest pixels of the
        image, and its float32 gauge values are the whole image's arithmetic pixel for pixel: the
        mask is the same. Samples where that check fails, or whose shape does not fit the image,
        are computed over the whole image."""
        b, W, H, c, sh, k, s0, fits, cx, cy = self._placement(ctx, img)
        shrink = (~fits) & (c["overflow"] == G.OVERFLOW.index("shrink"))
        ring = None
        if bool(shrink.any()):
            ring = torch.where(shrink, self._ring_min(ctx, sh, cx, cy), _FAR)
        reach = REACH[0] * s0 + REACH[1]
        slack = 0.0 if sh.slack is None else sh.slack
        x0 = torch.floor(cx + reach * (sh.xmin - slack)) - 2
        x1 = torch.ceil(cx + reach * (sh.xmax + slack)) + 2
        y0 = torch.floor(cy + reach * (sh.ymin - slack)) - 2
        y1 = torch.ceil(cy + reach * (sh.ymax + slack)) + 2
        whole = ~fits | ~(torch.isfinite(x0) & torch.isfinite(x1) & torch.isfinite(y0) & torch.isfinite(y1))
        x0 = torch.where(whole, 0.0, x0.clamp(0, W)).long()
        x1 = torch.where(whole, float(W), x1.clamp(0, W)).long()
        y0 = torch.where(whole, 0.0, y0.clamp(0, H)).long()
        y1 = torch.where(whole, float(H), y1.clamp(0, H)).long()
        reach = torch.where(whole, math.inf, reach)  # the whole image: nothing to check
        own = torch.zeros(b * H * W, dtype=torch.bool, device=img.device)
        boxes = torch.zeros(b, 4, dtype=torch.long, device=img.device)  # boxes holding the masks
        # the fills laid over a box (noise and texture: their windows, the texture's extent)
        boxed = (c["fill"] == G.FILLS.index("texture")) | (c["fill"] == G.FILLS.index("noise"))
        todo = torch.arange(b, device=img.device)
        while len(todo):  # the windows, then the samples that failed the check over the whole image
            if img.device.type == "cpu" and len(todo) > CPU_CHUNK:
                # by width, then height: tighter common windows than by area (the masks are
                # the same in any window that holds them: only the work changes)
                order = todo[torch.argsort(((x1 - x0) * (H + 1) + (y1 - y0))[todo])]
                chunks = [order[i : i + CPU_CHUNK] for i in range(0, len(order), CPU_CHUNK)]
            else:
                chunks = [todo]
            failed = []
            for sel in chunks:
                bad = self._window(ctx, own, boxes, boxed, sel, sh, k, s0, cx, cy, ring, reach, x0, y0, x1, y1)
                failed.append(sel[bad])
            todo = torch.cat(failed)
            x0[todo], y0[todo], x1[todo], y1[todo] = 0, 0, W, H
            reach[todo] = math.inf
        own = own.view(b, H, W)
        return _paint(ctx, img, own, c["fill"], boxes), own

    @staticmethod
    def _window(ctx, own, boxes, boxed, sel, sh, k, s0, cx, cy, ring, reach, x0, y0, x1, y1) -> Tensor:
        """Rank the gauge of samples `sel` in windows of one common size (the largest of their
        boxes x0..x1, y0..y1; a window that would leave the image moves inside), set own
        [B*H*W] there and, where `boxed` [B] (a fill laid over the mask's box), the mask's tight
        box in boxes [B, 4], found in the window rather than over the whole frame (the other
        fills use no box: theirs stay zero); returns which of them fail the check (see
        __call__), own left unset."""
        H, W = ctx.height, ctx.width
        n, dev = len(sel), own.device
        bw, bh = max(1, int((x1[sel] - x0[sel]).max())), max(1, int((y1[sel] - y0[sel]).max()))
        px = x0[sel].clamp(max=W - bw).view(n, 1) + torch.arange(bw, device=dev)  # [n, bw] image columns
        py = y0[sel].clamp(max=H - bh).view(n, 1) + torch.arange(bh, device=dev)
        # as the whole-image grid: float32 pixel index + 0.5 - float32 centre
        dx = px.float().view(n, 1, bw) + 0.5 - cx[sel].float().view(n, 1, 1)
        dy = py.float().view(n, bh, 1) + 0.5 - cy[sel].float().view(n, 1, 1)
        g = sh.gauge(dx, dy, sel).reshape(n, -1)
        ks = k[sel]
        thr = kth_smallest(g, ks.clamp(min=1), s0[sel] ** sh.power, sh.power)
        thr = torch.where(ks > 0, thr, -_FAR)
        mask = _at_most(g, thr.unsqueeze(1))
        # the check, where a window is not the whole image (reach finite): those are always kept
        far = reach[sel] ** sh.power
        bad = (ks > 0) & torch.isfinite(far) & ((thr.double() > far) | (_count(mask) < ks))
        if ring is not None:
            mask = mask & (g < ring[sel].to(g.dtype).unsqueeze(1))
        mask = _and(mask, ~bad.view(n, 1))
        tight = torch.nonzero(boxed[sel]).squeeze(1)
        if len(tight):
            origin = (px[tight, 0], py[tight, 0])
            boxes[sel[tight]] = _box(mask.view(n, bh, bw).index_select(0, tight), origin, (H, W))
        if by_slices(dev):  # (_ops.SLICE_DEVICES)
            # each sample's window is written once (a failed one with all False): slice assignment
            frame = own.view(-1, H, W)
            starts = zip(sel.tolist(), py[:, 0].tolist(), px[:, 0].tolist(), mask.view(n, bh, bw))
            for s, y, x, m in starts:
                frame[s, y : y + bh, x : x + bw] = m
        else:
            lin = (sel.view(n, 1, 1) * H + py.view(n, bh, 1)) * W + px.view(n, 1, bw)
            _set_true(own, lin.view(-1), mask.view(-1))
        return bad

    @staticmethod
    def _ring_min(ctx, sh, cx, cy) -> Tensor:
        W, H = ctx.width, ctx.height
        xs = torch.arange(-1, W + 1, device=ctx.device, dtype=torch.float32)
        ys = torch.arange(-1, H + 1, device=ctx.device, dtype=torch.float32)
        rx = torch.cat(
            [xs, xs, torch.full((H + 2,), -1.0, device=ctx.device), torch.full((H + 2,), float(W), device=ctx.device)]
        )
        ry = torch.cat(
            [torch.full((W + 2,), -1.0, device=ctx.device), torch.full((W + 2,), float(H), device=ctx.device), ys, ys]
        )
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

        def gauge(dx, dy, rows=None):
            a1, a2, b1, b2 = (ca, sa, cb, sb) if rows is None else (ca[rows], sa[rows], cb[rows], sb[rows])
            u = dx * a1 + dy * a2
            v = dy * b1 - dx * b2
            return u * u + v * v

        ex = torch.sqrt((a * torch.cos(t)) ** 2 + (bb * torch.sin(t)) ** 2)
        ey = torch.sqrt((a * torch.sin(t)) ** 2 + (bb * torch.cos(t)) ** 2)
        return _Shapes(gauge, torch.full_like(ex, math.pi), -ex, ex, -ey, ey, power=2)


# up to this many vertices, a polygon's sector is found by counting comparisons (see gauge)
SECTOR_COUNT_MAX = 16


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

        # per sample, the coefficients by sector count c (how many vertex angles are <= the
        # pixel's): sector c - 1, and c = 0 (before the first vertex) is the last sector, n - 1
        last = (n - 1).view(b, 1)
        by_count = torch.cat([last, torch.arange(N, device=ctx.device).expand(b, N)], 1)
        tab_x, tab_y = cxs.gather(1, by_count), cys.gather(1, by_count)  # [b, N + 1]

        def gauge(dx, dy, rows=None):
            pa = _pseudo_angle(dx, dy)
            shape = pa.shape
            flat = pa.reshape(shape[0], -1)
            bd, tx, ty = (bounds, tab_x, tab_y) if rows is None else (bounds[rows], tab_x[rows], tab_y[rows])
            # the sector count: for up to 16 vertices by N comparisons in uint8, ~3x faster on CPU
            # than searchsorted (unused columns hold 5.0, above every pseudo-angle: never counted)
            if N <= SECTOR_COUNT_MAX and flat.device.type == "cpu":
                # the same comparisons in NumPy: torch's CPU comparison of a column against
                # rows ran ~9x slower (the bulk of a polygon batch's gauge)
                values, limits = flat.numpy(), bd.numpy()
                counted = np.zeros(values.shape, dtype=np.uint8)
                for j in range(N):
                    counted += np.less_equal(limits[:, j : j + 1], values).view(np.uint8)
                count = torch.from_numpy(counted).long()
            elif N <= SECTOR_COUNT_MAX:
                count = torch.zeros(flat.shape, dtype=torch.uint8, device=flat.device)
                for j in range(N):
                    count += (bd[:, j : j + 1] <= flat).view(torch.uint8)
                count = count.long()
            else:
                count = torch.searchsorted(bd, flat, right=True)
            return dx * tx.gather(1, count).view(shape) + dy * ty.gather(1, count).view(shape)

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


_BLOB_TABLES: dict[str, tuple[Tensor, ...]] = {}


def _blob_tables(device) -> tuple[Tensor, ...]:
    key = str(device)
    if key not in _BLOB_TABLES:
        n = G.BLOB_BINS
        edges = np.arctan2(*G.pseudo_angle_inverse(np.arange(n + 1) * (4.0 / n))[::-1])
        widths = np.mod(np.diff(edges), 2.0 * math.pi)
        _BLOB_TABLES[key] = tuple(
            torch.as_tensor(a, dtype=torch.float64, device=device)
            for a in (G._BLOB_COS, G._BLOB_SIN, G._BLOB_COS_DIR, G._BLOB_SIN_DIR, widths)
        )
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
        size = torch.where(
            on,
            c["amplitude"].view(b, 1) * ctx.randn(b, M) / k,
            torch.zeros(b, M, dtype=torch.float64, device=ctx.device),
        )
        phases = ctx.rand(b, M) * (2 * math.pi)
        radius = torch.exp((size * torch.cos(phases)) @ cos_k[:M] - (size * torch.sin(phases)) @ sin_k[:M])
        inv_sq = (1.0 / radius**2).float()
        nb = G.BLOB_BINS

        def gauge(dx, dy, rows=None):
            pa = _pseudo_angle(dx, dy)
            idx = torch.clamp((pa * (nb / 4.0)).long(), max=nb - 1)
            table = inv_sq if rows is None else inv_sq[rows]
            return (dx * dx + dy * dy) * table.gather(1, idx.reshape(len(table), -1)).view(pa.shape)

        xs, ys = radius * cos_dir, radius * sin_dir
        area = 0.5 * (radius**2 * widths).sum(1)
        # sector i (radius r_i) spans less than a bin width w from its centre direction, where the
        # extents are taken: its points lie within r_i w of there (|cos a - cos b| <= |a - b|)
        slack = radius.amax(1) * float(widths.max())
        return _Shapes(gauge, area, xs.amin(1), xs.amax(1), ys.amin(1), ys.amax(1), power=2, slack=slack)


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
        # every placed piece drawn inside its own window (see _draw_pieces): on CPU in chunks of
        # CPU_CHUNK pieces of similar box sizes, elsewhere in one piece
        sample, j = torch.nonzero(best_ok, as_tuple=True)
        x, y, w, h = best_x[sample, j], best_y[sample, j], bw[sample, j], bh[sample, j]
        k = torch.minimum(counts[sample, j], w * h).clamp(min=1)
        own = torch.zeros(b * H * W, dtype=torch.bool, device=dev)
        if dev.type == "cpu" and len(sample) > CPU_CHUNK:
            order = torch.argsort(w * h)
            chunks = [order[s : s + CPU_CHUNK] for s in range(0, len(sample), CPU_CHUNK)]
        else:
            chunks = [torch.arange(len(sample), device=dev)] if len(sample) else []
        for sel in chunks:
            _draw_pieces(ctx, own, sample[sel], x[sel], y[sel], w[sel], h[sel], ellipse[sample, j][sel], k[sel])
        own = own.view(b, H, W)
        return _paint(ctx, img, own, fill, None), own

    @staticmethod
    def _layout(ctx, bw, bh, real):
        """One layout attempt: piece j at a uniformly random free top-left position, keeping a
        one-pixel gap from the pieces placed before it (as G._layout).

        The pick is the (t+1)-th free position in row-major order, t uniform below their count.
        The free positions are counted per row without a [b, H, W] grid: in row y, the columns
        [0, W - w] less the union of the column intervals of the placed pieces whose row band
        holds y (a sweep over the intervals sorted by start); then the row holding the (t+1)-th,
        and in that row alone, the column."""
        if ctx.device.type in LAYOUT_NUMPY_DEVICES:
            return _layout_numpy(ctx, bw, bh, real)
        b, N = bw.shape
        W, H = ctx.width, ctx.height
        dev = ctx.device
        ys = torch.arange(H, device=dev).view(1, H, 1)
        xs = torch.arange(W, device=dev).view(1, 1, W)
        x = torch.zeros(b, N, dtype=torch.long, device=dev)
        y = torch.zeros_like(x)
        ok = torch.zeros(b, N, dtype=torch.bool, device=dev)
        ar = torch.arange(b, device=dev)
        for j in range(N):
            w, h = bw[:, j].view(b, 1), bh[:, j].view(b, 1)
            xmax = torch.clamp(W - w, max=W - 1)  # top-left columns 0..xmax, rows 0..ymax
            ymax = torch.clamp(H - h, max=H - 1)
            # column intervals [s, e] (inclusive, within 0..xmax) barred by the pieces placed so far
            # (within one pixel of piece i: columns px - w .. px + pw, rows py - h .. py + ph)
            s = torch.clamp(x[:, :j] - w, min=0)
            e = torch.minimum(x[:, :j] + bw[:, :j], xmax)
            band = (ys >= (y[:, :j] - h).view(b, 1, j)) & (ys <= (y[:, :j] + bh[:, :j]).view(b, 1, j))
            band = band & ok[:, :j].view(b, 1, j)  # [b, H, j]: interval i bars row y
            free = (xmax + 1).clamp(min=0) - _covered(s, e, band)  # [b, H]
            free = torch.where(ys.view(1, H) <= ymax, free, 0)
            seen = torch.cumsum(free, 1)
            total = seen[:, -1]
            t = torch.floor(ctx.rand(b) * total.to(torch.int32)).long()
            row = torch.searchsorted(seen, (t + 1).view(b, 1)).view(b).clamp(max=H - 1)
            before = torch.where(row > 0, seen.gather(1, (row - 1).clamp(min=0).view(b, 1)).view(b), 0)
            # the chosen row: its free columns, and the (t + 1 - before)-th of them
            barred = band[ar, row].view(b, j, 1) & (xs >= s.view(b, j, 1)) & (xs <= e.view(b, j, 1))
            line = (xs.view(1, W) <= xmax) & ~barred.any(1)
            cols = torch.cumsum(line.to(torch.int32), 1)
            col = torch.searchsorted(cols, (t + 1 - before).to(torch.int32).view(b, 1)).view(b)
            pos = torch.where(total > 0, row * W + col, H * W - 1)  # none free: as the clamped search gave
            ok[:, j] = (total > 0) & real[:, j]
            y[:, j], x[:, j] = pos // W, pos % W
        return x, y, ok


# Devices where a pieces layout runs in NumPy on the tensors' memory (_layout_numpy): on CPU 3.2x
# faster than the torch layout (31 -> 10 ms for 256 samples of 5 pieces; the torch layout's
# [b, H, j] arrays moved to NumPy as they were gained nothing: the short axis must not be last).
# Tests empty it to run the torch layout on CPU.
LAYOUT_NUMPY_DEVICES = ("cpu",)


def _layout_numpy(ctx, bw: Tensor, bh: Tensor, real: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """_PiecesOp._layout in NumPy, step for step: the same integers, and the same draws
    (ctx.rand, float64). The row bands are [b, j, H] (the torch layout's [b, H, j] transposed:
    NumPy's loops run along the last axis, and j is a handful), int32 where torch has int64
    (the same small integers). A sorted row's searchsorted (left) is the count of its values
    below the one searched."""
    b, N = bw.shape
    W, H = ctx.width, ctx.height
    bw, bh, real = bw.numpy().astype(np.int32), bh.numpy().astype(np.int32), real.numpy()
    ys = np.arange(H, dtype=np.int32)
    xs = np.arange(W, dtype=np.int32)
    x = np.zeros((b, N), dtype=np.int32)
    y = np.zeros_like(x)
    ok = np.zeros((b, N), dtype=bool)
    ar = np.arange(b)
    for j in range(N):
        w, h = bw[:, j : j + 1], bh[:, j : j + 1]
        xmax = np.minimum(W - w, W - 1)  # [b, 1]
        ymax = np.minimum(H - h, H - 1)
        s = np.maximum(x[:, :j] - w, 0)  # [b, j]
        e = np.minimum(x[:, :j] + bw[:, :j], xmax)
        band = (ys >= (y[:, :j] - h)[:, :, None]) & (ys <= (y[:, :j] + bh[:, :j])[:, :, None])  # [b, j, H]
        band &= ok[:, :j, None]
        free = np.maximum(xmax + 1, 0) - _covered_numpy(s, e, band)  # [b, H]
        free = np.where(ys <= ymax, free, 0)
        seen = np.cumsum(free, 1)
        total = seen[:, -1]
        t = np.floor(ctx.rand(b).numpy() * total.astype(np.int32)).astype(np.int64)
        row = np.minimum(np.count_nonzero(seen < (t + 1)[:, None], axis=1), H - 1)
        before = np.where(row > 0, seen[ar, np.maximum(row - 1, 0)], 0)
        barred = band[ar, :, row][:, :, None] & (xs >= s[:, :, None]) & (xs <= e[:, :, None])  # [b, j, W]
        line = (xs <= xmax) & ~barred.any(1)
        cols = np.cumsum(line, 1, dtype=np.int32)
        col = np.count_nonzero(cols < (t + 1 - before)[:, None], axis=1)
        pos = np.where(total > 0, row * W + col, H * W - 1)
        ok[:, j] = (total > 0) & real[:, j]
        y[:, j], x[:, j] = pos // W, pos % W
    return torch.from_numpy(x.astype(np.int64)), torch.from_numpy(y.astype(np.int64)), torch.from_numpy(ok)


def _covered_numpy(s: np.ndarray, e: np.ndarray, band: np.ndarray) -> np.ndarray:
    """_covered in NumPy, band [b, j, H]: the same sweep, interval by interval in the order of a
    stable sort by start (torch's order), each step over [b, H] (NumPy's accumulate along the
    short middle axis, and gathers along it, ran ~5x slower)."""
    b, j, H = band.shape
    covered = np.zeros((b, H), dtype=np.int32)
    reach = np.full((b, H), -1, dtype=np.int32)  # the furthest end so far, per row
    order = np.argsort(s, axis=1, kind="stable")
    ar = np.arange(b)
    for i in range(j):
        k = order[:, i]
        end = np.where(band[ar, k], e[ar, k][:, None], np.int32(-1))
        covered += np.maximum(end - np.maximum(s[ar, k][:, None], reach + 1) + 1, 0)
        np.maximum(reach, end, out=reach)
    return covered


def _covered(s: Tensor, e: Tensor, band: Tensor) -> Tensor:
    """Per row, how many integers the intervals [s_i, e_i] (s, e [b, j]) cover together, counting
    interval i in row y only where band[:, y, i] ([b, H, j] bool): [b, H] int64. A sweep over the
    intervals sorted by start: each adds what it reaches past the furthest end before it."""
    b, H, j = band.shape
    if j == 0:
        return torch.zeros(b, H, dtype=torch.long, device=band.device)
    s, order = torch.sort(s, dim=1, stable=True)
    e, band = e.gather(1, order), band.gather(2, order.view(b, 1, j).expand(b, H, j))
    end = torch.where(band, e.view(b, 1, j), -1)
    reach = torch.cummax(end, 2).values
    prior = torch.cat([torch.full((b, H, 1), -1, dtype=reach.dtype, device=reach.device), reach[..., :-1]], 2)
    return torch.clamp(end - torch.maximum(s.view(b, 1, j), prior + 1) + 1, min=0).sum(2)


def _set_true(own: Tensor, at: Tensor, where: Tensor) -> None:
    """own[at[where]] = True (own, where bool; at int64 indices into own). On CPU by a scatter
    taking the maximum of 0/1 bytes (no nonzero pass: ~3x faster); elsewhere by indexing."""
    if own.device.type == "cpu":
        own.view(torch.uint8).scatter_reduce_(0, at, where.view(torch.uint8), reduce="amax")
    else:
        own[at[where]] = True


def _draw_pieces(ctx, own: Tensor, sample: Tensor, x: Tensor, y: Tensor, w: Tensor, h: Tensor, ellipse, k) -> None:
    """Set own [B*H*W] (the batch's masks, flattened) over pieces [n] of samples `sample`: boxes
    (x, y, w, h) inside the image, a rectangle fills its box, an ellipse (ellipse [n] bool) takes
    the k [n] pixels of its box nearest the box centre in ellipse gauge (G.ellipse_in_box).

    The pieces are computed in windows of one common size (the largest box; a window that would
    leave the image moves inside). Inside its box an ellipse's gauge is the float32 arithmetic of
    the whole-image computation, pixel for pixel; the window's other pixels are pushed out of
    reach (+_FAR) as the whole image's were, so the k-th smallest value, hence the mask, is the
    same."""
    n = len(sample)
    H, W = ctx.height, ctx.width
    dev = own.device
    bh, bw = max(1, int(h.max())), max(1, int(w.max()))
    cx = x.clamp(max=W - bw).view(n, 1) + torch.arange(bw, device=dev)  # [n, bw] image columns
    cy = y.clamp(max=H - bh).view(n, 1) + torch.arange(bh, device=dev)
    inx = ((cx >= x.view(n, 1)) & (cx < (x + w).view(n, 1))).view(n, 1, bw)
    iny = ((cy >= y.view(n, 1)) & (cy < (y + h).view(n, 1))).view(n, bh, 1)
    inside = _and(iny, inx).view(n, bh * bw)
    rows = torch.nonzero(ellipse).squeeze(1)
    if len(rows):
        # the k pixels of the box nearest its centre in ellipse gauge (G.ellipse_in_box)
        gx = (cx[rows].float() + 0.5).view(-1, 1, bw)
        gy = (cy[rows].float() + 0.5).view(-1, bh, 1)
        xr, yr = x[rows].float().view(-1, 1, 1), y[rows].float().view(-1, 1, 1)
        half_w, half_h = w[rows].float().view(-1, 1, 1) / 2, h[rows].float().view(-1, 1, 1) / 2
        g = (((gx - xr - half_w) / half_w) ** 2 + ((gy - yr - half_h) / half_h) ** 2).view(len(rows), -1)
        g = g + (~inside[rows]).to(g.dtype) * _FAR  # outside the box: out of reach
        thr = kth_smallest(g, k[rows], torch.ones(len(rows), dtype=torch.float64, device=dev), power=2)
        inside[rows] = _at_most(g, thr.view(-1, 1))
    lin = (sample.view(n, 1, 1) * H + cy.view(n, bh, 1)) * W + cx.view(n, 1, bw)
    _set_true(own, lin.view(-1), inside.view(-1))


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
