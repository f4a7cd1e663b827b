"""Face-recognition metrics on numpy arrays: verification accuracy, ROC, TAR@FAR, rank-1, IoU.

Scores are similarities (cosine of L2-normalised embeddings): higher = more likely the same
person. A pair is predicted "same" when score > threshold.

Verification accuracy (LFW protocol): for each fold k, the threshold that maximises accuracy
on the other folds is applied to fold k; the result is the mean (and population std, as
insightface prints it) of the per-fold accuracies. The threshold is the exact optimum over all
score midpoints (the middle of the best interval), not a grid.

TAR@FAR, insightface convention (evaluation/IJB and arcface_torch/eval_ijbc.py): one ROC over
all pairs (sklearn `roc_curve`, whose default drops collinear intermediate points), then the
operating point whose FPR is closest to the target, the largest TPR among equal FPRs. Without
enough negatives the nearest point can be far from the target (with N negative pairs the
smallest non-zero FAR is 1/N: 3,000 LFW negatives cannot resolve 1e-4, which then reports the
TAR at FAR = 0); the report therefore carries the achieved FAR next to each TAR.
`tar_at_far_strict` gives the conservative alternative: the largest TPR with FPR <= target.

How FaceX-Zoo differs. Its IJB-C evaluator (test_protocol/ijbc/ijbc_evaluator.py) is derived
from insightface's and picks the TAR the same way (nearest FPR on the sklearn ROC). Its LFW-style
evaluator (test_protocol/lfw/lfw_evaluator.py) reports only the 10-fold accuracy, and chooses
each fold's threshold differently: the maximiser of TPR - FPR (Youden's J, not accuracy) over
1,000 evenly spaced thresholds between the training scores' min and max, with pairs exactly at
the threshold counted wrong either way; its +- is the standard error (std with ddof=1 / sqrt(10)),
not the std. insightface's LFW-style `verification.py` picks the max-accuracy threshold on a
0.01 grid of squared-L2 distances (a 0.005 grid in cosine), splits folds by pair order, and its
"VAL@FAR" (FaceNet's) interpolates, per fold, the threshold that gives the target FAR on the
training folds and averages the test-fold TARs; that is not the IJB-style TAR@FAR used here.
"""

from __future__ import annotations

import numpy as np


# ---------------------------------------------------------------- verification
def pair_scores(emb: np.ndarray, index_a: np.ndarray, index_b: np.ndarray) -> np.ndarray:
    """Cosine similarity of rows index_a and index_b of L2-normalised embeddings."""
    return np.einsum("ij,ij->i", emb[index_a], emb[index_b])


def accuracy_at(scores: np.ndarray, issame: np.ndarray, threshold: float) -> float:
    pred = scores > threshold
    return float(np.mean(pred == issame))


def best_threshold(scores: np.ndarray, issame: np.ndarray) -> float:
    """The accuracy-maximising threshold: the middle of the first best run of score midpoints."""
    scores = np.asarray(scores, dtype=np.float64)
    issame = np.asarray(issame, dtype=bool)
    u = np.unique(scores)
    cands = np.concatenate([[u[0] - 1.0], (u[:-1] + u[1:]) / 2.0, [u[-1] + 1.0]])
    pos = np.sort(scores[issame])
    neg = np.sort(scores[~issame])
    tp = len(pos) - np.searchsorted(pos, cands, side="right")  # positives above each threshold
    tn = np.searchsorted(neg, cands, side="right")  # negatives at or below
    correct = tp + tn
    best = np.flatnonzero(correct == correct.max())
    # the first contiguous run of optimal candidates, its middle (robust to where test scores fall)
    run_end = best[0]
    while run_end + 1 < len(cands) and correct[run_end + 1] == correct.max():
        run_end += 1
    return float((cands[best[0]] + cands[run_end]) / 2.0)


def kfold_accuracy(scores: np.ndarray, issame: np.ndarray, folds: np.ndarray) -> dict:
    """LFW-protocol accuracy: threshold chosen on the other folds, applied to each fold."""
    scores, issame, folds = np.asarray(scores, float), np.asarray(issame, bool), np.asarray(folds)
    fold_ids = sorted(set(folds.tolist()))
    if len(fold_ids) < 2:
        raise ValueError("k-fold accuracy needs at least two folds")
    accs, thresholds = [], []
    for f in fold_ids:
        test = folds == f
        thr = best_threshold(scores[~test], issame[~test])
        thresholds.append(thr)
        accs.append(accuracy_at(scores[test], issame[test], thr))
    return {
        "accuracy": float(np.mean(accs)),
        "accuracy_std": float(np.std(accs)),
        "fold_accuracy": accs,
        "fold_threshold": thresholds,
        "folds": fold_ids,
    }


def roc_curve(
    scores: np.ndarray, issame: np.ndarray, drop_intermediate: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) with sklearn.metrics.roc_curve's semantics (first point at
    threshold +inf; with drop_intermediate, points inside straight horizontal/vertical runs are
    dropped), so TAR@FAR reproduces insightface's numbers without sklearn (the agreement with
    sklearn's roc_curve / roc_auc_score is tested on random scores with ties)."""
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(issame, dtype=bool).astype(np.float64)
    order = np.argsort(scores, kind="mergesort")[::-1]
    s, y = scores[order], y[order]
    distinct = np.flatnonzero(np.diff(s))
    ends = np.r_[distinct, len(s) - 1]
    tps = np.cumsum(y)[ends]
    fps = 1 + ends - tps
    thr = s[ends]
    if drop_intermediate and len(fps) > 2:
        keep = np.flatnonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])
        fps, tps, thr = fps[keep], tps[keep], thr[keep]
    fps, tps, thr = np.r_[0, fps], np.r_[0, tps], np.r_[np.inf, thr]
    fpr = fps / fps[-1] if fps[-1] > 0 else np.full_like(fps, np.nan)
    tpr = tps / tps[-1] if tps[-1] > 0 else np.full_like(tps, np.nan)
    return fpr, tpr, thr


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only trapz
    return float(trapezoid(tpr, fpr))


def tar_at_far(scores: np.ndarray, issame: np.ndarray, far: float) -> dict:
    """insightface convention (module doc): the ROC point with FPR nearest `far`, max TPR."""
    fpr, tpr, thr = roc_curve(scores, issame)
    fpr, tpr, thr = fpr[::-1], tpr[::-1], thr[::-1]  # as insightface: flipped, first match wins
    i = int(np.argmin(np.abs(fpr - far)))
    return {"tar": float(tpr[i]), "far": float(fpr[i]), "threshold": float(thr[i])}


def tar_at_far_strict(scores: np.ndarray, issame: np.ndarray, far: float) -> dict:
    """The largest TPR among operating points with FPR <= far."""
    fpr, tpr, thr = roc_curve(scores, issame, drop_intermediate=False)
    ok = np.flatnonzero(fpr <= far + 1e-12)
    i = ok[np.argmax(tpr[ok])]
    return {"tar": float(tpr[i]), "far": float(fpr[i]), "threshold": float(thr[i])}


def verification_report(
    scores: np.ndarray, issame: np.ndarray, folds: np.ndarray, fars: tuple[float, ...] = (1e-3, 1e-4)
) -> dict:
    """Accuracy (k-fold), AUC and TAR@FAR of one set of pairs."""
    scores, issame = np.asarray(scores, float), np.asarray(issame, bool)
    out = {"pairs": int(len(scores)), "positives": int(issame.sum()), "negatives": int((~issame).sum())}
    out.update(kfold_accuracy(scores, issame, folds))
    fpr, tpr, _ = roc_curve(scores, issame)
    out["auc"] = auc(fpr, tpr)
    out["tar_at_far"] = {f"{far:.0e}": tar_at_far(scores, issame, far) for far in fars}
    out["tar_at_far_strict"] = {f"{far:.0e}": tar_at_far_strict(scores, issame, far) for far in fars}
    out["far_resolution"] = 1.0 / max(1, out["negatives"])
    return out


# ---------------------------------------------------------------- identification
def rank1_from_nearest(nearest_ids, probe_ids, gallery_ids) -> dict:
    """Closed-set rank-1 from the identity of each probe's nearest gallery entry. Gallery entries of
    identities without probes act as distractors; probes whose identity has no gallery entry
    cannot be identified and are counted apart, not scored."""
    nearest_ids, probe_ids, gallery_ids = np.asarray(nearest_ids), np.asarray(probe_ids), np.asarray(gallery_ids)
    mated = np.isin(probe_ids, gallery_ids)
    hits = nearest_ids[mated] == probe_ids[mated] if mated.any() else np.zeros(0, bool)
    return {
        "rank1": float(hits.mean()) if len(hits) else float("nan"),
        "probes": int(mated.sum()),
        "probes_without_mate": int((~mated).sum()),
        "gallery": int(len(gallery_ids)),
        "gallery_identities": int(len(set(gallery_ids.tolist()))),
    }


def rank1(gallery: np.ndarray, gallery_ids: list, probes: np.ndarray, probe_ids: list) -> dict:
    """Closed-set rank-1: each probe's nearest gallery entry (cosine) has its identity
    (rank1_from_nearest has the counting rules)."""
    gallery_ids = np.asarray(gallery_ids)
    if len(gallery_ids) and len(probes):
        nearest = gallery_ids[np.argmax(probes @ gallery.T, axis=1)]
    else:
        nearest = np.full(len(probes), None, dtype=object)
    return rank1_from_nearest(nearest, probe_ids, gallery_ids)


def rotate_tests(probe_ids) -> tuple[np.ndarray, np.ndarray]:
    """MegaFace's rotating-gallery tests: (probe, gallery) index arrays of every ordered pair of two
    distinct images of one identity, identity by identity (np.unique order), row-major within it."""
    probe_ids = np.asarray(probe_ids)
    ps, gs = [], []
    for identity in np.unique(probe_ids):
        idx = np.flatnonzero(probe_ids == identity)
        rows, cols = np.nonzero(~np.eye(len(idx), dtype=bool))
        ps.append(idx[rows])
        gs.append(idx[cols])
    cat = lambda parts: np.concatenate(parts).astype(int) if parts else np.zeros(0, int)  # noqa: E731
    return cat(ps), cat(gs)


def rank1_rotate_from_hits(hits: np.ndarray, identities: int, distractors: int) -> dict:
    """The rotate summary of the tests' outcomes (True: sim(probe, gallery) beat every distractor)."""
    hits = np.asarray(hits, bool)
    return {
        "rank1": float(hits.mean()) if len(hits) else float("nan"),
        "tests": int(len(hits)),
        "distractors": int(distractors),
        "identities": int(identities),
    }


def rank1_rotate(probes: np.ndarray, probe_ids: list, distractors: np.ndarray) -> dict:
    """MegaFace-style rank-1 ("rotate" gallery mode): for each identity, each of its images in
    turn is the only gallery image of that identity, among all distractors; the identity's other
    images are its probes. A test (gallery image g, probe p) is a hit when sim(p, g) beats every
    distractor. Returns the hit rate over all such tests."""
    probe_ids = np.asarray(probe_ids)
    best_distractor = (probes @ distractors.T).max(axis=1) if len(distractors) else np.full(len(probes), -np.inf)
    p, g = rotate_tests(probe_ids)
    hits = np.einsum("ij,ij->i", probes[p], probes[g]) > best_distractor[p]
    return rank1_rotate_from_hits(hits, len(np.unique(probe_ids)), len(distractors))


# ---------------------------------------------------------------- segmentation
class MaskIoU:
    """Accumulates occlusion-mask agreement over batches of boolean masks (True = occluded).

    iou_occluded: dataset-level |P & T| / |P | T| of the occluded class; iou_visible: the same for
    the visible class; miou: their mean (the two-class semantic-segmentation mIoU);
    image_iou_occluded: per-image IoU of the occluded class averaged over images whose union is
    non-empty (an image where both masks are empty says nothing about occluder shape).
    """

    def __init__(self) -> None:
        self.inter = np.zeros(2)
        self.union = np.zeros(2)
        self.per_image: list[float] = []

    def update(self, pred: np.ndarray, true: np.ndarray) -> None:
        pred = np.asarray(pred, bool).reshape(len(pred), -1)
        true = np.asarray(true, bool).reshape(len(true), -1)
        for c, (p, t) in enumerate(((~pred, ~true), (pred, true))):
            self.inter[c] += np.logical_and(p, t).sum()
            self.union[c] += np.logical_or(p, t).sum()
        inter = np.logical_and(pred, true).sum(1)
        union = np.logical_or(pred, true).sum(1)
        self.per_image += (inter[union > 0] / union[union > 0]).tolist()

    def result(self) -> dict:
        iou = [float(i / u) if u > 0 else None for i, u in zip(self.inter, self.union)]
        valid = [v for v in iou if v is not None]
        return {
            "iou_visible": iou[0],
            "iou_occluded": iou[1],
            "miou": float(np.mean(valid)) if valid else None,
            "image_iou_occluded": float(np.mean(self.per_image)) if self.per_image else None,
            "images_with_occlusion": len(self.per_image),
        }
