"""Templates on batches: TensorBank (RGBA templates on a device) and the `bank` op."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from occsynth.faces.geometry import similarity
from occsynth.occluders.families.objects import load_bank
from occsynth.occluders.params import anything, integer, number, word
from occsynth.occluders.torch._ops import Tensor, _blend, _blend_windows, _codes, _int, _num, _Op, by_slices

# ----------------------------------------------------------------------------- template bank


def _extents(alpha: Tensor) -> Tensor:
    """(x0, y0, x1, y1) [N, 4] float64: the box of each template's pixels with alpha > 0 (alpha
    [N, h, w]), x1 and y1 one past the last (all 0 for a transparent template)."""

    def span(seen: Tensor) -> tuple[Tensor, Tensor]:  # [N, k] bool -> first, one past the last
        first = seen.to(torch.uint8).argmax(1)  # argmax gives the first of equal maxima
        last = seen.shape[1] - seen.flip(1).to(torch.uint8).argmax(1)
        some = seen.any(1)
        return torch.where(some, first, 0), torch.where(some, last, 0)

    seen = alpha > 0
    (x0, x1), (y0, y1) = span(seen.any(1)), span(seen.any(2))
    return torch.stack([x0, y0, x1, y1], 1).to(torch.float64)


class TensorBank:
    """RGBA templates on a device for the `bank` op, pasted at landmark-relative positions (the
    batched view of a template set; the object bank itself is families/objects.TemplateBank,
    brought here with `from_template_bank`).

    rgba     [N, 4, h, w], uint8 (0..255) or float (0..1); smaller templates are padded with
             alpha 0 at the bottom/right (see from_arrays) and `sizes` keeps their own size.
    anchors  [N, 2, 2]: two points (x, y) in each template's pixels (pixel i spans [i, i+1]).
    targets  [N, 2, 2]: where those points go, in the face frame of occsynth.assets.catalog:
             F(fx, fy) = E + fx * (right_eye - left_eye) + fy * (mouth_mid - E), E = eye midpoint,
             so (-0.5, 0) / (0.5, 0) are the eyes and (0, 1) the mouth centre. The template is
             mapped by the similarity taking anchors onto targets (then jittered by the op).
             Default: the template's left and right edge midpoints go 0.5 inter-ocular distances
             outside each eye (a glasses-like band, 2 IODs wide).
    sizes    [N, 2] (w, h) of each template before padding (FROM-style random placement uses it).
    extents  [N, 4] (x0, y0, x1, y1) box of each template's pixels with alpha > 0 (computed; the
             op samples only the output pixels this box can reach).
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
            anchors = torch.stack(
                [
                    torch.stack([torch.zeros(n), self.sizes[:, 1] / 2], 1),
                    torch.stack([self.sizes[:, 0], self.sizes[:, 1] / 2], 1),
                ],
                1,
            )
        if targets is None:
            targets = torch.tensor([[[-1.0, 0.0], [1.0, 0.0]]] * n)
        self.anchors = anchors.to(torch.float64).reshape(n, 2, 2)
        self.targets = targets.to(torch.float64).reshape(n, 2, 2)
        self.names = list(names) if names is not None else [str(i) for i in range(n)]
        self._by_device: dict[str, tuple[Tensor, Tensor, Tensor, Tensor]] = {}
        self.extents = _extents(self.premultiplied[:, 3])
        self._extents_by_device: dict[str, Tensor] = {}

    def __len__(self) -> int:
        return self.premultiplied.shape[0]

    @classmethod
    def from_arrays(cls, images: Sequence[np.ndarray], anchors=None, targets=None, names=None) -> TensorBank:
        """From HxWx4 uint8 arrays of any sizes (padded to a common size with alpha 0)."""
        h = max(a.shape[0] for a in images)
        w = max(a.shape[1] for a in images)
        stack = np.zeros((len(images), h, w, 4), dtype=np.uint8)
        for i, a in enumerate(images):
            stack[i, : a.shape[0], : a.shape[1]] = a
        sizes = torch.tensor([[a.shape[1], a.shape[0]] for a in images])

        def to_t(v):
            return None if v is None else torch.as_tensor(np.asarray(v, dtype=np.float64))

        return cls(torch.from_numpy(stack).permute(0, 3, 1, 2), to_t(anchors), to_t(targets), sizes, names)

    @classmethod
    def from_template_bank(
        cls, bank=None, *, categories: Sequence[str] | None = None, split: str = "any"
    ) -> TensorBank:
        """The object occluders' template bank (default: the shipped one) as a TensorBank.

        A template of the object bank is placed by the least-squares similarity of its k anchor
        points onto k face-frame points; here that similarity is fitted once, in face-frame
        coordinates, and reduced to the two-point form of this class (the template's left and
        right edge midpoints and where the fit sends them). The two placements agree where the
        face frame is a similarity of the image (frontal faces, IOD:eye-mouth as the bank's
        mean face); on strongly sheared frames they differ slightly (the CPU path fits in image
        space)."""
        bank = load_bank() if bank is None else bank
        chosen = bank.select(tuple(categories) if categories else None, split)
        if not chosen:
            raise ValueError(f"no templates of categories {categories} in split {split!r}")
        images, anchors, targets, names = [], [], [], []
        for i in chosen:
            t = bank.templates[i]
            w, h = t.size
            m = similarity(t.meta["anchor"]["points"], t.meta["anchor"]["face_points"])
            a = [(0.0, h / 2.0), (float(w), h / 2.0)]
            images.append(t.rgba)
            anchors.append(a)
            targets.append([(m[0] * x + m[1] * y + m[2], m[3] * x + m[4] * y + m[5]) for x, y in a])
            names.append(t.name)
        return cls.from_arrays(images, anchors, targets, names)

    def extents_on(self, device: torch.device) -> Tensor:
        key = str(device)
        if key not in self._extents_by_device:
            self._extents_by_device[key] = self.extents.to(device)
        return self._extents_by_device[key]

    def on(self, device: torch.device):
        key = str(device)
        if key not in self._by_device:
            self._by_device[key] = tuple(
                t.to(device) for t in (self.premultiplied, self.anchors, self.targets, self.sizes)
            )
        return self._by_device[key]


class _BankOp(_Op):
    """Templates from a TensorBank (`bank` names it in TorchOccluder's banks; `index` picks a
    template, default uniform). placement="landmarks": anchors onto their face-frame targets,
    then scaled by `scale` and rotated by `rotation` degrees about the targets' midpoint and
    shifted by up to `shift` (face-frame units, uniform in [-shift, shift] per axis);
    "random" (and always when no landmarks are given): FROM-style, the template at its own size
    times `scale`, centred on a uniform pixel, cut by the border."""

    name = "bank"
    defaults = {"bank": "default", "index": None, "scale": 1.0, "rotation": 0.0, "shift": 0.0, "placement": "landmarks"}
    schema = {
        "bank": anything("a name in TorchOccluder's banks", nullable=False),
        "index": integer(0, nullable=True),
        "scale": number(0.0, lo_open=True),
        "rotation": number(),
        "shift": number(0.0),
        "placement": word("landmarks", "random"),
    }

    def __call__(self, ctx, img, lm):
        b = img.shape[0]
        W, H = ctx.width, ctx.height
        name = self.params["bank"]
        if name not in ctx.banks:
            raise KeyError(f"no template bank {name!r} given to TorchOccluder (banks={sorted(ctx.banks)})")
        bank: TensorBank = ctx.banks[name]
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
        return _render(ctx, img, prem, bank.extents_on(ctx.device), idx, z, centre, mid)


def _boxes(rect: Tensor, z: Tensor, centre: Tensor, mid: Tensor, height: int, width: int):
    """Per sample, the output pixels a template can reach: (x0, y0, x1, y1) [b] int64, x1 and y1
    one past the last pixel, clipped to the image (x1 <= x0 or y1 <= y0: none).

    Output pixel p (centre p + 0.5) samples template point t = mid + (p + 0.5 - centre) / z, and
    bilinear sampling (align_corners=False, zero padding) is non-zero only for t within half a
    template pixel of the template's pixels with alpha > 0, which lie in `rect` (x0, y0, x1, y1
    in template pixels, see TensorBank.extents). The corners of that rectangle grown by one
    template pixel, sent through p + 0.5 = centre + z (t - mid) and grown by one output pixel
    (both margins cover rounding), bound every pixel with alpha > 0; elsewhere alpha is 0 (not
    pasted, as the whole-grid sampling gave). A non-finite placement gets the whole image."""
    b = z.shape[0]
    cx = torch.stack([rect[:, 0] - 1, rect[:, 2] + 1], 1)  # [b, 2] template x
    cy = torch.stack([rect[:, 1] - 1, rect[:, 3] + 1], 1)
    corners = torch.complex(cx.view(b, 2, 1), cy.view(b, 1, 2)).reshape(b, 4)
    mid_c = torch.complex(mid[:, 0], mid[:, 1]).view(b, 1)
    # output pixel index (centre of pixel p is p + 0.5) of each corner
    p = z.view(b, 1) * (corners - mid_c) + torch.complex(centre[:, 0], centre[:, 1]).view(b, 1) - complex(0.5, 0.5)
    x0 = torch.floor(p.real.amin(1)) - 1
    x1 = torch.ceil(p.real.amax(1)) + 2
    y0 = torch.floor(p.imag.amin(1)) - 1
    y1 = torch.ceil(p.imag.amax(1)) + 2
    finite = torch.isfinite(x0) & torch.isfinite(x1) & torch.isfinite(y0) & torch.isfinite(y1)
    x0 = torch.where(finite, x0.clamp(0, width), 0.0).long()
    x1 = torch.where(finite, x1.clamp(0, width), float(width)).long()
    y0 = torch.where(finite, y0.clamp(0, height), 0.0).long()
    y1 = torch.where(finite, y1.clamp(0, height), float(height)).long()
    return x0, y0, x1, y1


def _windows(x0: Tensor, y0: Tensor, x1: Tensor, y1: Tensor, height: int, width: int):
    """Windows of one common size holding the boxes of _boxes: their top-left corners [b] and
    (height, width), the largest box's; a window that would leave the image moves inside."""
    bw = max(1, int((x1 - x0).max()))
    bh = max(1, int((y1 - y0).max()))
    return x0.clamp(max=width - bw), y0.clamp(max=height - bh), bh, bw


def _render(ctx, img: Tensor, prem: Tensor, rect: Tensor, idx: Tensor, z: Tensor, centre: Tensor, mid: Tensor):
    """Paste template idx[i] (premultiplied [n, 4, th, tw]) mapped by output pixel p -> template
    point mid + (p + 0.5 - centre) / z, hard-edged at alpha >= 0.5; returns (images, own [b,H,W]).

    Only each sample's window (see _boxes, _windows) is sampled: its own template (prem[idx]) by a
    2-D bilinear grid_sample, with the grid computed in float64 as over the whole image before.
    Outside the windows alpha is 0 (nothing pasted), as the whole-grid sampling gave. On CPU the
    samples go in chunks of CPU_CHUNK, in the order of their boxes' areas (similar boxes share a
    window size; the temporaries stay small: large ones are fresh pages from the OS on every
    call); on other devices in one piece."""
    b, c, H, W = img.shape
    if b == 0:
        return img.clone(), torch.zeros(0, H, W, dtype=torch.bool, device=img.device)
    x0, y0, x1, y1 = _boxes(rect[idx], z, centre, mid, H, W)
    if img.device.type == "cpu" and b > CPU_CHUNK:
        order = torch.argsort((x1 - x0).clamp(min=0) * (y1 - y0).clamp(min=0))
        chunks = [order[s : s + CPU_CHUNK] for s in range(0, b, CPU_CHUNK)]
    else:
        chunks = [torch.arange(b, device=img.device)]
    out = img.clone(memory_format=torch.contiguous_format)
    own = torch.zeros(b, H, W, dtype=torch.bool, device=img.device)
    for sel in chunks:
        wx, wy, bh, bw = _windows(x0[sel], y0[sel], x1[sel], y1[sel], H, W)
        box = (x0[sel], y0[sel], x1[sel], y1[sel])
        _paste(ctx, out, own, sel, prem, idx[sel], z[sel], centre[sel], mid[sel], wx, wy, bh, bw, box)
    return out, own


CPU_CHUNK = 32


def _paste(ctx, out, own, sel, prem, idx, z, centre, mid, x0, y0, bh: int, bw: int, box: tuple) -> None:
    """_render on the samples `sel`: out [B, c, H, W] (the images) and own [B, H, W] written in
    place in the samples' windows (origins x0, y0, size bh x bw); box: each sample's own box
    (x0, y0, x1, y1) in the window, see _boxes; the other arguments are the chosen samples'."""
    b = len(sel)
    c, H, W = out.shape[1:]
    dev = out.device
    px = ((x0.view(b, 1) + torch.arange(bw, device=dev)).double() + 0.5).view(b, 1, bw) - centre[:, 0].view(b, 1, 1)
    py = ((y0.view(b, 1) + torch.arange(bh, device=dev)).double() + 0.5).view(b, bh, 1) - centre[:, 1].view(b, 1, 1)
    zi = (1.0 / z).view(b, 1, 1)
    # template point, normalised for grid_sample: float64 as before, then float32
    th, tw = prem.shape[2], prem.shape[3]
    grid = torch.empty(b, bh, bw, 2, device=dev)
    tx = (mid[:, 0].view(b, 1, 1) + px * zi.real) - py * zi.imag
    grid[..., 0] = tx.div_(tw).mul_(2).sub_(1)
    ty = (mid[:, 1].view(b, 1, 1) + px * zi.imag) + py * zi.real
    grid[..., 1] = ty.div_(th).mul_(2).sub_(1)
    if by_slices(dev):  # (_ops.SLICE_DEVICES)
        # each sample's own template sampled where it lies (no copy of the chunk's templates, one
        # call a sample), and only inside its own box: outside it alpha samples to 0 (_boxes),
        # as the zeros left there. On CPU, batch 256: 14% faster in all for the copy, and for
        # the shipped bank (templates of many sizes) another ~10%; the values are the same
        sample = torch.zeros(b, prem.shape[1], bh, bw, device=dev, dtype=prem.dtype)
        spans = zip(idx.tolist(), *(v.tolist() for v in box), y0.tolist(), x0.tolist())
        for i, (t, bx0, by0, bx1, by1, wy, wx) in enumerate(spans):
            if bx1 <= bx0 or by1 <= by0:
                continue  # nothing of the template lands in the image
            ys, xs = slice(by0 - wy, by1 - wy), slice(bx0 - wx, bx1 - wx)
            sample[i : i + 1, :, ys, xs] = F.grid_sample(
                prem[t : t + 1], grid[i : i + 1, ys, xs], mode="bilinear", padding_mode="zeros", align_corners=False
            )
    else:
        sample = F.grid_sample(
            prem.index_select(0, idx), grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
    alpha = sample[:, 3:4]
    own_w = alpha >= 0.5
    rgb = sample[:, :3].div_(alpha.clamp(min=1e-6)).clamp_(0, 1).mul_(ctx.hi - ctx.lo)
    if ctx.lo != 0:  # (adding 0 changes nothing here: every value is >= +0, none is -0)
        rgb = rgb.add_(ctx.lo)
    if ctx.integer:
        rgb = rgb.round_()
    rgb = rgb.to(out.dtype)
    if by_slices(dev):
        starts = list(zip(sel.tolist(), y0.tolist(), x0.tolist()))
        _blend_windows(out, starts, bh, bw, rgb, own_w)
        for i, (s, y, x) in enumerate(starts):
            own[s, y : y + bh, x : x + bw] = own_w[i, 0]
        return
    # elsewhere, the windows' pixels in the flattened images: gather, blend, scatter back
    rows = (y0.view(b, 1, 1, 1) + torch.arange(bh, device=dev).view(1, 1, bh, 1)) * W
    pix = rows + x0.view(b, 1, 1, 1) + torch.arange(bw, device=dev).view(1, 1, 1, bw)  # [b, 1, bh, bw]
    at = (sel.view(b, 1, 1, 1) * c + torch.arange(c, device=dev).view(1, c, 1, 1)) * (H * W) + pix
    flat = out.view(-1)
    flat[at] = _blend(flat[at], rgb, own_w)
    own.view(-1)[sel.view(b, 1, 1, 1) * (H * W) + pix] = own_w
