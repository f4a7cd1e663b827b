"""Metrics on constructed data with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from occsynth_train.eval.metrics import (
    MaskIoU,
    auc,
    best_threshold,
    kfold_accuracy,
    rank1,
    rank1_rotate,
    roc_curve,
    tar_at_far,
    tar_at_far_strict,
    verification_report,
)


def test_separable_scores_give_accuracy_one():
    rng = np.random.default_rng(0)
    issame = np.tile([True, False], 300)
    scores = np.where(issame, rng.uniform(0.6, 0.9, 600), rng.uniform(-0.2, 0.4, 600))
    folds = np.repeat(np.arange(10), 60)
    out = kfold_accuracy(scores, issame, folds)
    assert out["accuracy"] == 1.0 and out["accuracy_std"] == 0.0 and len(out["fold_accuracy"]) == 10
    assert all(0.4 <= t <= 0.6 for t in out["fold_threshold"])


def test_kfold_threshold_comes_from_the_other_folds():
    # fold 0 alone would be perfectly split at 0.5; folds 1-2 put their optimum at 0.75, which
    # misclassifies fold 0's positive at 0.6 -> fold 0 accuracy 1/2
    scores = np.array([0.6, 0.4, 0.8, 0.7, 0.8, 0.7])
    issame = np.array([True, False, True, False, True, False])
    folds = np.array([0, 0, 1, 1, 2, 2])
    out = kfold_accuracy(scores, issame, folds)
    assert out["fold_threshold"][0] == pytest.approx(0.75)
    assert out["fold_accuracy"][0] == 0.5


def test_best_threshold_is_middle_of_best_interval():
    scores = np.array([0.1, 0.2, 0.8, 0.9])
    issame = np.array([False, False, True, True])
    assert best_threshold(scores, issame) == pytest.approx(0.5)


def test_roc_curve_matches_sklearn_semantics_by_hand():
    # sorted descending: 0.9 P, 0.8 P, 0.7 N, 0.6 P, 0.5 N, 0.4 N
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    issame = np.array([1, 1, 0, 1, 0, 0], bool)
    fpr, tpr, thr = roc_curve(scores, issame, drop_intermediate=False)
    assert np.allclose(fpr, [0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    assert np.allclose(tpr, [0, 1 / 3, 2 / 3, 2 / 3, 1, 1, 1])
    assert thr[0] == np.inf and np.allclose(thr[1:], scores)
    # sklearn drops collinear points before prepending (0, 0): only (2/3, 1), inside the
    # final horizontal run, goes; (0, 1/3) stays because (0, 0) is not yet there
    fpr, tpr, _ = roc_curve(scores, issame)
    assert np.allclose(fpr, [0, 0, 0, 1 / 3, 1 / 3, 1]) and np.allclose(tpr, [0, 1 / 3, 2 / 3, 2 / 3, 1, 1])


def test_tar_at_far_hand_computed():
    # 10 positives, 1000 negatives. Negatives: one at 0.95, one at 0.85, the rest below 0.
    # Positives: 3 above 0.95, 4 between 0.85 and 0.95, 3 below 0.85 (at 0.5).
    pos = np.array([0.99, 0.98, 0.97, 0.93, 0.92, 0.91, 0.90, 0.5, 0.5, 0.5])
    neg = np.concatenate([[0.95, 0.85], np.linspace(-0.9, -0.1, 998)])
    scores = np.concatenate([pos, neg])
    issame = np.concatenate([np.ones(10, bool), np.zeros(1000, bool)])
    # FAR 1e-3 = one false accept: threshold just below 0.95 accepts 0.95 and the 7 positives above 0.85
    r = tar_at_far(scores, issame, 1e-3)
    assert r["far"] == pytest.approx(1e-3) and r["tar"] == pytest.approx(0.7)
    # FAR 1e-4 < 1/1000: nearest achievable point is FAR 0 -> the 3 positives above 0.95
    r = tar_at_far(scores, issame, 1e-4)
    assert r["far"] == 0.0 and r["tar"] == pytest.approx(0.3)
    s = tar_at_far_strict(scores, issame, 1e-3)
    assert s["far"] <= 1e-3 and s["tar"] == pytest.approx(0.7)


def test_insightface_and_strict_conventions_differ_when_nearest_far_is_above_target():
    # 10 negatives: FAR steps of 0.1. Target 0.14: nearest is 0.1 (both agree);
    # target 0.17: nearest is 0.2 (insightface) but strict must stay at <= 0.17 -> 0.1
    neg = np.linspace(0.0, 0.9, 10)
    pos = np.array([0.95, 0.85, 0.75, 0.65])
    scores = np.concatenate([pos, neg])
    issame = np.concatenate([np.ones(4, bool), np.zeros(10, bool)])
    assert tar_at_far(scores, issame, 0.17)["far"] == pytest.approx(0.2)
    assert tar_at_far_strict(scores, issame, 0.17)["far"] == pytest.approx(0.1)
    assert tar_at_far(scores, issame, 0.14)["far"] == pytest.approx(0.1)


def test_verification_report_fields():
    rng = np.random.default_rng(1)
    issame = np.tile([True, False], 100)
    scores = np.where(issame, rng.normal(0.6, 0.1, 200), rng.normal(0.1, 0.1, 200))
    rep = verification_report(scores, issame, np.arange(200) % 10)
    assert rep["negatives"] == 100 and rep["far_resolution"] == pytest.approx(0.01)
    assert 0.95 < rep["auc"] <= 1.0 and set(rep["tar_at_far"]) == {"1e-03", "1e-04"}


def test_rank1_with_distractors():
    gallery = np.eye(4)  # identities a, b, c + distractor d
    gallery_ids = ["a", "b", "c", "d"]
    probes = np.array([[1.0, 0.1, 0, 0], [0, 0.2, 0, 1.0], [0, 0, 1.0, 0], [0.5, 0.5, 0.5, 0.5]])
    probe_ids = ["a", "b", "c", "zz"]  # b's probe is nearest to the distractor; zz has no mate
    out = rank1(gallery, gallery_ids, probes, probe_ids)
    assert out["rank1"] == pytest.approx(2 / 3)
    assert out["probes"] == 3 and out["probes_without_mate"] == 1 and out["gallery"] == 4


def test_rank1_rotate_megaface_style():
    # identity x: 3 images; identity y: 2 images; one distractor
    e = lambda *v: np.array(v, float) / np.linalg.norm(v)  # noqa: E731
    probes = np.stack([e(1, 0, 0), e(1, 0.1, 0), e(1, 0, 0.1), e(0, 1, 0), e(0.6, 0.8, 0)])
    ids = ["x", "x", "x", "y", "y"]
    distractors = np.stack([e(0.8, 0.6, 0)])  # close to y's second image and to x's
    out = rank1_rotate(probes, ids, distractors)
    # x: 6 tests, sims within x >= 0.99 beat the distractor (<= 0.86): 6 hits.
    # y: sim(y0, y1) = 0.8; y0's best distractor 0.6 -> hit; y1's best distractor 0.96 -> miss
    assert out["tests"] == 8 and out["rank1"] == pytest.approx(7 / 8)


def test_mask_iou_by_hand():
    true = np.zeros((2, 4, 4), bool)
    pred = np.zeros((2, 4, 4), bool)
    true[0, :2, :2] = True  # 4 px
    pred[0, :2, :3] = True  # 6 px, 4 shared -> IoU 4/6
    # image 1: nothing occluded, nothing predicted (no occluded-class evidence)
    iou = MaskIoU()
    iou.update(pred, true)
    r = iou.result()
    assert r["iou_occluded"] == pytest.approx(4 / 6)
    # visible class: 32 px total; true visible 28, pred visible 26, shared 26 -> 26/28
    assert r["iou_visible"] == pytest.approx(26 / 28)
    assert r["miou"] == pytest.approx((4 / 6 + 26 / 28) / 2)
    assert r["image_iou_occluded"] == pytest.approx(4 / 6) and r["images_with_occlusion"] == 1


# ---------------------------------------------------------------- agreement with scikit-learn
def _random_pairs(seed: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    """Scores of 40-400 pairs, 10-90 % positives; with `ties`, scores on a coarse grid so many
    positives and negatives share a score."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(40, 400))
    issame = rng.random(n) < rng.uniform(0.1, 0.9)
    issame[:2] = [True, False]  # both classes present
    scores = rng.normal(0.0, 1.0, n) + 1.5 * issame
    if ties:
        scores = np.round(scores * 4) / 4
    return scores, issame


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_roc_auc_and_tar_at_far_agree_with_sklearn(seed, ties):
    sk = pytest.importorskip("sklearn.metrics")
    scores, issame = _random_pairs(seed, ties)
    for drop in (True, False):
        fpr, tpr, thr = roc_curve(scores, issame, drop_intermediate=drop)
        sk_fpr, sk_tpr, sk_thr = sk.roc_curve(issame, scores, drop_intermediate=drop)
        np.testing.assert_allclose(fpr, sk_fpr, rtol=0, atol=1e-12)
        np.testing.assert_allclose(tpr, sk_tpr, rtol=0, atol=1e-12)
        assert thr[0] == sk_thr[0] == np.inf
        np.testing.assert_array_equal(thr[1:], sk_thr[1:])
    fpr, tpr, _ = roc_curve(scores, issame)
    assert auc(fpr, tpr) == pytest.approx(sk.roc_auc_score(issame, scores), abs=1e-12)
    assert verification_report(scores, issame, np.arange(len(scores)) % 2)["auc"] == pytest.approx(
        sk.roc_auc_score(issame, scores), abs=1e-12
    )

    sk_fpr, sk_tpr, sk_thr = sk.roc_curve(issame, scores)  # insightface: nearest FPR, first in flipped order
    full_fpr, full_tpr, full_thr = sk.roc_curve(issame, scores, drop_intermediate=False)
    for far in (1e-3, 1e-2, 0.05, 0.1, 0.3):
        i = int(np.argmin(np.abs(sk_fpr[::-1] - far)))
        got = tar_at_far(scores, issame, far)
        assert (got["tar"], got["far"], got["threshold"]) == pytest.approx(
            (sk_tpr[::-1][i], sk_fpr[::-1][i], sk_thr[::-1][i]), abs=1e-12
        )
        ok = full_fpr <= far + 1e-12
        strict = tar_at_far_strict(scores, issame, far)
        assert strict["far"] <= far + 1e-12 and strict["tar"] == pytest.approx(full_tpr[ok].max(), abs=1e-12)
