"""PDSN: block geometry, dictionary binarisation, FDM as AND of the right entries, four stages."""

from __future__ import annotations

import math

import numpy as np
import torch
from methods_helpers import CONFIGS, falls, tiny_cfg, train_and_evaluate

from occsynth_train.config import load_config
from occsynth_train.data.keyed import KeyedDataset
from occsynth_train.engine.checkpoint import list_checkpoints, load_checkpoint
from occsynth_train.engine.trainer import train
from occsynth_train.eval.evaluate import _images, _masks, evaluate_benchmark, load_pairs
from occsynth_train.methods import create_method
from occsynth_train.methods.pdsn import binarise, block_ids, block_iou, cell_fractions, min_max


def _method(*overrides):
    cfg = load_config(CONFIGS / "pdsn_tiny_cpu.yaml", ["data.train=[x]", *overrides])
    torch.manual_seed(0)
    return create_method("pdsn", cfg, 5)


def test_central_blocks_and_block_iou():
    assert block_ids(5, "central") == [6, 7, 8, 11, 12, 13, 16, 17, 18] and len(block_ids(5, "all")) == 25
    masks = torch.zeros(2, 1, 20, 20)
    masks[0, :, 4:8, 8:12] = 1  # exactly cell (1, 2) = 7
    masks[1, :, 4:8, 8:10] = 1  # half of cell 7
    iou = block_iou(masks, 5)
    assert iou[0, 7] == 1.0 and iou[0].sum() == 1.0
    assert math.isclose(iou[1, 7].item(), 0.5) and cell_fractions(masks, 5)[1, 7] == 0.5


def test_binarised_entry_zeroes_exactly_floor_tau_k():
    torch.manual_seed(0)
    for shape, tau in (((8, 3, 3), 0.25), ((5, 2, 2), 0.3), ((4, 1, 1), 0.25)):
        m = torch.rand(shape)
        b = binarise(m, tau)
        n = math.floor(tau * m.numel())
        assert int((b == 0).sum()) == n and set(b.unique().tolist()) <= {0.0, 1.0}
        if n:  # the zeros are the smallest entries
            assert m[b == 0].max() <= m[b == 1].min()
    ties = binarise(torch.zeros(10), 0.25)
    assert int((ties == 0).sum()) == 2  # exact count even when every value ties
    mm = min_max(torch.tensor([[1.0, 3.0, 2.0]]))
    assert torch.allclose(mm, torch.tensor([[0.0, 1.0, 0.5]]))


def test_fdm_is_the_and_of_the_chosen_blocks_entries():
    m = _method("method_kw.stage=finetune")
    c, h, w = m.dict_sum.shape[1:]
    torch.manual_seed(1)
    m.dict_sum.copy_(torch.rand_like(m.dict_sum))
    m.dict_count.fill_(1)
    entries = m.dictionary()
    assert all(int((e == 0).sum()) == math.floor(0.25 * c * h * w) for e in entries)
    # 20 px masks: equal 4 px cells, so a region of two whole cells has IoU exactly 0.5 with each
    masks = torch.zeros(3, 1, 20, 20)
    ys, xs = torch.arange(20) * 5 // 20, torch.arange(20) * 5 // 20
    masks[0, 0] = ((ys[:, None] == 1) & ((xs[None] == 1) | (xs[None] == 2))).float()  # cells 6 + 7
    masks[1, 0] = ((ys[:, None] == 2) & (xs[None] == 2)).float()  # cell 12 only
    fdm = m.fdm(masks)
    k6, k7, k12 = m.blocks.index(6), m.blocks.index(7), m.blocks.index(12)
    assert torch.equal(fdm[0], entries[k6] * entries[k7])  # AND of two entries
    assert torch.equal(fdm[1], entries[k12])
    assert torch.equal(fdm[2], torch.ones(c, h, w))  # no occlusion: keep all
    masks[1, 0, 8:12, 12:16] = 1  # add cell 13: region of 2 cells, each IoU 0.5 -> 12 AND 13
    assert torch.equal(m.fdm(masks)[1], entries[k12] * entries[m.blocks.index(13)])
    masks[1, 0, 0:4, 0:4] = 1  # and a third cell: each IoU 1/3 < 0.5 -> nothing chosen
    assert torch.equal(m.fdm(masks)[1], torch.ones(c, h, w))


def test_dictionary_stage_accumulates_normalised_masks():
    from types import SimpleNamespace

    m = _method("method_kw.stage=dictionary").train()
    assert not m.backbone.training and not any(p.requires_grad for p in m.generators.parameters())
    masks = torch.zeros(2, 1, 32, 32)
    masks[:, :, 13:19, 13:19] = 1  # cell 12 (rows/cols 12.8-19.2)
    batch = SimpleNamespace(
        images=torch.randn(2, 3, 32, 32),
        masks=masks,
        labels=torch.tensor([0, 1]),
        clean=torch.randn(2, 3, 32, 32),
        has_clean=torch.tensor([True, True]),
    )
    terms = m(batch, 0)
    k = m.blocks.index(12)
    assert m.dict_count[k] == 2 and m.dict_count.sum() == 2
    assert not any(v.requires_grad for v in terms.values())  # a statistics pass: nothing to optimise
    assert not any(p.requires_grad for p in m.parameters())
    assert 0 <= m.dict_sum[k].min() and m.dict_sum[k].max() <= 2


def test_four_stages_train_through_the_trainer(tiny_train, tiny_pairs, tmp_path):
    ident, _, _ = train_and_evaluate("pdsn", tiny_train, tiny_pairs, tmp_path / "trunk", "train.steps=16", term="id")
    assert falls(ident)
    prev = list_checkpoints(tmp_path / "trunk")[-1]
    masks_run = train(
        tiny_cfg(
            "pdsn", tiny_train, tmp_path / "masks", "method_kw.stage=masks", "train.steps=8", f"train.init_from={prev}"
        )
    )
    import csv

    rows = list(csv.DictReader(open(masks_run / "train_log.csv")))
    l1 = np.array([float(r["mask_l1"]) for r in rows])
    assert np.isfinite(l1).all() and any(float(r["log/pairs"]) > 0 for r in rows)
    prev = list_checkpoints(masks_run)[-1]
    dict_run = train(
        tiny_cfg(
            "pdsn",
            tiny_train,
            tmp_path / "dict",
            "method_kw.stage=dictionary",
            "train.steps=4",
            f"train.init_from={prev}",
        )
    )
    state = load_checkpoint(list_checkpoints(dict_run)[-1])["model"]
    assert state["dict_count"].sum() > 0
    gen_before = torch.load(prev, weights_only=False)["model"]
    assert torch.equal(state["generators.7.body.3.bias"], gen_before["generators.7.body.3.bias"])  # untouched
    prev = list_checkpoints(dict_run)[-1]
    ident, report, method = train_and_evaluate(
        "pdsn",
        tiny_train,
        tiny_pairs,
        tmp_path / "ft",
        "method_kw.stage=finetune",
        "train.steps=6",
        f"train.init_from={prev}",
        term="id",
    )
    assert method.dict_count.sum() > 0 and report["segmentation"]["miou"] is not None


def test_block_comes_from_the_grid_cell_record_mirrored_when_flipped():
    m = _method("method_kw.stage=masks")
    masks = torch.zeros(4, 1, 25, 25)
    # cell 13 with its 4-neighbours (8, 12, 14, 18): every cell is fully occluded, so the mask alone
    # cannot tell the centre (argmax picks the first, 8)
    for c in (8, 12, 13, 14, 18):
        r, q = divmod(c, 5)
        masks[:, 0, r * 5 : (r + 1) * 5, q * 5 : (q + 1) * 5] = 1
    rec = {"family": "geometric", "name": "grid_cell", "params": {"cell": 13, "cells": [8, 12, 13, 14, 18], "grid": 5}}
    metas = [
        {"occluders": [rec], "flipped": False},
        {"occluders": [rec], "flipped": True},  # column 3 -> 1: cell 11
        {"occluders": [{"name": "block", "params": {}}]},  # no grid record: from the mask
        {"occluders": [{**rec, "params": {**rec["params"], "grid": 3}}]},
    ]  # other grid: ignored
    got = m._block_of(masks, metas).tolist()
    assert got == [m.blocks.index(13), m.blocks.index(11), m.blocks.index(8), m.blocks.index(8)]
    assert m._block_of(masks).tolist() == [m.blocks.index(8)] * 4
    corner = [{"occluders": [{**rec, "params": {**rec["params"], "cell": 0}}]}]
    assert m._block_of(masks[:1], corner).tolist() == [-1]  # no generator for a corner cell
    assert m._block_of(torch.zeros(1, 1, 25, 25)).tolist() == [-1]  # nothing occluded


def _finetuned(*overrides):
    m = _method("method_kw.stage=finetune", *overrides).eval()
    with torch.no_grad():  # a dictionary with distinct entries
        m.dict_sum.copy_(torch.rand_like(m.dict_sum))
        m.dict_count.fill_(1)
    return m


def test_pairwise_fdm_is_the_and_of_both_faces_and_the_probes_for_a_clean_face():
    m = _finetuned("method_kw.occlusion_source=gt")
    assert m.pairwise and m.uses_gt_masks and not m.has_segmentation
    a, b = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    ma, mb = torch.zeros(2, 1, 32, 32), torch.zeros(2, 1, 32, 32)
    ma[:, 0, 13:19, 13:19] = 1  # cell 12 on both probes
    mb[1, 0, 7:13, 7:13] = 1  # cell 6 on the second gallery face only
    with torch.no_grad():
        ea, eb = m.embed_pair(a, b, ma, mb)
        fa, fb = m.backbone.forward_features(a)[-1], m.backbone.forward_features(b)[-1]
        fdm = m.fdm(ma) * m.fdm(mb)
        assert torch.allclose(ea, m.backbone.forward_head(fa * fdm)) and torch.allclose(
            eb, m.backbone.forward_head(fb * fdm)
        )
        # clean gallery face: exactly the probe's FDM on both (the paper's protocol)
        assert torch.allclose(eb[0], m.backbone.forward_head(fb[:1] * m.fdm(ma[:1]))[0])
        assert not torch.allclose(eb[1], m.backbone.forward_head(fb[1:] * m.fdm(ma[1:]))[0])
        assert torch.allclose(m.embed(a, ma), m.backbone.forward_head(fa * m.fdm(ma)))
    assert not _finetuned("method_kw.pairwise_fdm=false").pairwise and not _method().pairwise
    import pytest

    with pytest.raises(ValueError, match="needs the true masks"):
        m.embed(a)
    with pytest.raises(ValueError, match="occlusion_source"):
        _method("method_kw.occlusion_source=oracle")


def test_evaluator_scores_pairs_pairwise_with_true_masks(tiny_pairs):
    m = _finetuned("method_kw.occlusion_source=gt")
    report, (scores, issame) = evaluate_benchmark(m, tiny_pairs, torch.device("cpu"), 16, 0, flip=False)
    assert report["test_masks"] == "ground truth" and report["verification"]["scoring"] == "pairwise"
    ds = KeyedDataset(tiny_pairs)
    pairs = [p for p in load_pairs(tiny_pairs, ds) if "issame" in p]
    assert len(scores) == len(pairs) == 40
    p = pairs[3]
    sa, sb = ds[ds.position[p["a"]]], ds[ds.position[p["b"]]]
    with torch.no_grad():
        ea, eb = m.embed_pair(
            _images(sa["image"][None], (32, 32), torch.device("cpu")),
            _images(sb["image"][None], (32, 32), torch.device("cpu")),
            _masks(sa["mask"][None], (32, 32), torch.device("cpu")),
            _masks(sb["mask"][None], (32, 32), torch.device("cpu")),
        )
    expect = torch.nn.functional.cosine_similarity(ea, eb).item()
    assert abs(scores[3] - expect) < 1e-5
    single, _ = evaluate_benchmark(
        _finetuned("method_kw.occlusion_source=gt", "method_kw.pairwise_fdm=false"),
        tiny_pairs,
        torch.device("cpu"),
        16,
        0,
        flip=False,
    )
    assert single["verification"]["scoring"] == "embeddings"
