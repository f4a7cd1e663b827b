"""Mask losses for methods with an occlusion-segmentation branch.

Masks follow the occsynth contract after loading: float [B, 1, H, W], 1 = occluded, 0 = visible.
Logits are either one channel (binary: sigmoid -> P(occluded)) or two channels
(softmax over [visible, occluded]).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _match(masks: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    masks = masks.float()
    if masks.shape[-2:] != logits.shape[-2:]:
        # nearest keeps the target binary; area-averaged targets would be soft labels
        masks = F.interpolate(masks, size=logits.shape[-2:], mode="nearest")
    return masks


def occlusion_probability(logits: torch.Tensor) -> torch.Tensor:
    """P(occluded) per pixel, [B, 1, H, W], from 1- or 2-channel logits."""
    logits = logits.float()
    if logits.shape[1] == 1:
        return torch.sigmoid(logits)
    if logits.shape[1] == 2:
        return torch.softmax(logits, dim=1)[:, 1:2]
    raise ValueError(f"occlusion logits must have 1 or 2 channels, got {logits.shape[1]}")


def pixel_cross_entropy(logits: torch.Tensor, masks: torch.Tensor, pos_weight: float | None = None) -> torch.Tensor:
    """Mean per-pixel cross-entropy between occlusion logits and the true mask.

    1 channel: binary cross-entropy with logits (`pos_weight` up-weights occluded pixels, useful
    when they are rare); 2 channels: softmax cross-entropy with class 1 = occluded.
    """
    target = _match(masks, logits)
    logits = logits.float()
    if logits.shape[1] == 1:
        weight = None if pos_weight is None else torch.tensor(pos_weight, device=logits.device)
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight)
    if logits.shape[1] == 2:
        return F.cross_entropy(logits, target[:, 0].round().long())
    raise ValueError(f"occlusion logits must have 1 or 2 channels, got {logits.shape[1]}")


def region_consistency(logits: torch.Tensor, masks: torch.Tensor, grid: int | tuple[int, int] = 4) -> torch.Tensor:
    """Region-consistency loss: per cell of a grid, how far the predicted occluded fraction is
    from the true one.

    Definition: split the image into a `grid` (rows x cols; adaptive pooling cells when the size
    is not divisible). For image b and cell c let
        p_bc = mean over the cell of P(occluded)   (the soft predicted occluded fraction)
        t_bc = mean over the cell of the true mask  (the true occluded fraction)
    loss = mean over b, c of |p_bc - t_bc|, in [0, 1].

    Pixel cross-entropy scores every pixel on its own; this term scores the amount of occlusion
    per face region, so a prediction that is right about *how much* of the eye region is covered
    but off by a few pixels at the boundary is barely penalised, while speckle spread over a
    visible region is. grid=1 compares the whole-image occlusion ratio only.
    """
    prob = occlusion_probability(logits)
    target = _match(masks, logits)
    cells = (grid, grid) if isinstance(grid, int) else tuple(grid)
    return (F.adaptive_avg_pool2d(prob, cells) - F.adaptive_avg_pool2d(target, cells)).abs().mean()
