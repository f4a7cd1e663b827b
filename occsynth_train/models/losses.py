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


def _two_class_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """log [P(visible), P(occluded)] per pixel, [B, 2, H, W], from 1- or 2-channel logits."""
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    if logits.shape[1] == 1:
        logits = torch.cat([torch.zeros_like(logits), logits], 1)  # sigmoid(z) == softmax([0, z])[1]
    elif logits.shape[1] != 2:
        raise ValueError(f"occlusion logits must have 1 or 2 channels, got {logits.shape[1]}")
    return F.log_softmax(logits, dim=1)


def structure_consensus_loss(
    logits: torch.Tensor,
    masks: torch.Tensor,
    blobs: torch.Tensor | None = None,
    alpha: float = 10.0,
    beta: float = 5.0,
) -> torch.Tensor:
    """Structure-via-consensus segmentation loss (Masi, Mathai & AbdAlmageed, "Towards Learning
    Structure via Consensus for Face Segmentation and Parsing", CVPR 2020), the loss MSML's
    released training script puts on its segmentation branch (alpha = 10, beta = 5).

    Pixels are grouped into blobs, each of one true label y_s. `blobs` is an integer map
    [B, 1, H, W] (e.g. connected components); None = the true mask itself, i.e. two blobs, the
    visible and the occluded pixels, which is how MSML calls it. For blob s and image b with
    pixel set B_bs (possibly empty) and per-pixel class probabilities p_i:
        pbar_bs = mean over i in B_bs of p_i                        (the blob's consensus)
        label_s = (1/B) sum_b [B_bs not empty] * (-log pbar_bs[y_s])   (batch mean; an image
                  without the blob counts as 0, as in the reference implementation)
        dev_s   = sum_b sum_{i in B_bs} KL(pbar_bs || p_i) / (C * sum_b |B_bs|)
                  (mean over blob pixels and the C = 2 classes, the reference's normaliser)
        loss    = mean over the blobs present in the batch of (alpha * label_s + beta * dev_s)
    The label term fits each blob's average prediction to its label; the deviation term pulls
    every pixel of a blob towards the blob's consensus (gradient flows through pbar too), so a
    right-on-average but speckled prediction is penalised where plain pixel CE would not see it.
    Works on logits of 1 channel (binary) or 2 channels (softmax over [visible, occluded]).
    """
    log_p = _two_class_log_probs(logits)
    p = log_p.exp()
    target = _match(masks, logits)[:, 0].round().long()
    if blobs is None:
        groups = target
    else:
        groups = _match(blobs, logits)[:, 0].round().long()
    c = p.shape[1]
    terms = []
    for s in torch.unique(groups):
        inside = groups == s  # [B, H, W]
        labels = torch.unique(target[inside])
        if labels.numel() != 1:
            raise ValueError(
                f"consensus loss: blob {int(s)} covers pixels of labels {labels.tolist()}; a blob needs one"
            )
        y = int(labels)
        w = inside.unsqueeze(1).to(p.dtype)  # [B, 1, H, W]
        n = w.sum((2, 3))  # [B, 1]
        pbar = (p * w).sum((2, 3)) / n.clamp(min=1)  # [B, C]
        log_pbar = torch.log(pbar.clamp(min=torch.finfo(p.dtype).tiny))
        present = (n[:, 0] > 0).to(p.dtype)
        label = (-log_pbar[:, y] * present).mean()
        kl = (pbar * log_pbar)[:, :, None, None] - pbar[:, :, None, None] * log_p  # [B, C, H, W]
        dev = (kl * w).sum() / (c * n.sum())
        terms.append(alpha * label + beta * dev)
    return torch.stack(terms).mean()
