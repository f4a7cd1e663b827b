"""PDSN: block geometry and selection, dictionary binarisation, FDM as AND of the right entries,
the stage-2 mechanism (Eq. 4 difference, L1 scale, frozen trunk + head), stage-3 LRs, four stages."""

from __future__ import annotations

import csv
import math
import tarfile
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from astronaut_face import aligned_astronaut
from methods_helpers import CONFIGS, falls, tiny_cfg, train_and_evaluate
from train_fixtures import build_train_set

import occsynth
from occsynth.faces.align import align_face, center_crop_landmarks
from occsynth.faces.templates import get_template
from occsynth.occluders.families.grid import cell_bounds
from occsynth_train.config import load_config
from occsynth_train.data.keyed import KeyedDataset
from occsynth_train.engine.checkpoint import list_checkpoints, load_checkpoint
from occsynth_train.engine.optim import build_optimizer
from occsynth_train.engine.trainer import train
from occsynth_train.eval.evaluate import _images, _masks, evaluate_benchmark, load_pairs
from occsynth_train.methods import create_method
from occsynth_train.methods.pdsn import binarise, block_ids, block_iou, cell_fractions, mask_l1, min_max


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
    k13 = m.blocks.index(13)
    assert torch.equal(m.fdm(masks)[1], entries[k12] * entries[k13])
    masks[1, 0, 0:4, 0:4] = 1  # and a third (corner, no generator) cell: each covered whole
    assert torch.equal(m.fdm(masks)[1], entries[k12] * entries[k13])  # coverage: still 12 AND 13
    iou = _method("method_kw.stage=finetune", "method_kw.block_selection=iou")
    iou.load_state_dict(m.state_dict())
    assert torch.equal(iou.fdm(masks)[1], torch.ones(c, h, w))  # the IoU reading: each 1/3 < 0.5, none


def _band(h: int, w: int, row: int, cols) -> torch.Tensor:
    """A mask [1, 1, h, w] covering exactly the given cells of one grid row (the grid_cell bounds)."""
    out = torch.zeros(1, 1, h, w)
    for col in cols:
        x0, y0, x1, y1 = cell_bounds(row * 5 + col, 5, w, h)
        out[..., y0:y1, x0:x1] = 1
    return out


def test_a_band_over_the_three_central_eye_row_cells_selects_exactly_them():
    """The paper's sunglasses example: the eye-row blocks M12, M13, M14 (1..25), cells 11-13 here."""
    m = _finetuned()  # the config's default rule: coverage
    assert m.block_selection == "coverage"
    band = _band(112, 96, 2, (1, 2, 3))  # the paper's 112x96 crop
    chosen = m.chosen_blocks(band)[0]
    assert sorted(m.blocks[k] for k in chosen.nonzero().flatten().tolist()) == [11, 12, 13]
    e = m.dictionary()
    expect = e[m.blocks.index(11)] * e[m.blocks.index(12)] * e[m.blocks.index(13)]
    assert torch.equal(m.fdm(band)[0], expect) and (expect == 0).any()
    iou = block_iou(band, 5)[0, 11:14]  # each cell's share of the band, about 1/3: why IoU selects none
    assert ((iou > 0.3) & (iou < 0.35)).all()
    assert not _finetuned("method_kw.block_selection=iou").chosen_blocks(band).any()


def _selected_and_covered(m, mask: np.ndarray) -> tuple[set, set]:
    """(cells PDSN selects, cells the mask covers by >= 50 %, counted here pixel by pixel)."""
    h, w = mask.shape
    covered = set()
    for cell in range(25):
        x0, y0, x1, y1 = cell_bounds(cell, 5, w, h)
        if mask[y0:y1, x0:x1].astype(bool).mean() >= 0.5:
            covered.add(cell)
    chosen = m.chosen_blocks(torch.from_numpy(mask.astype(np.float32))[None, None])[0]
    return {m.blocks[k] for k in chosen.nonzero().flatten().tolist()}, covered


def _check_objects(face: np.ndarray, landmarks: np.ndarray) -> dict:
    m = _finetuned("method_kw.blocks=all")
    iou = _finetuned("method_kw.blocks=all", "method_kw.block_selection=iou")
    found = {}
    for name, seed in (("sunglasses", 0), ("scarf", 0), ("object", 1), ("object", 2), ("object", 3)):
        mask = occsynth.occlude(face, landmarks, name, seed).mask > 0
        chosen, covered = _selected_and_covered(m, mask)
        assert chosen == covered, (name, seed)
        found[(name, seed)] = chosen
        if name in ("sunglasses", "scarf"):  # real objects span several cells: IoU picks none of them
            assert chosen and not _selected_and_covered(iou, mask)[0], name
    return found


def test_a_real_object_selects_the_cells_it_covers():
    face, landmarks = aligned_astronaut()
    found = _check_objects(face, landmarks)
    # the eye row, as in the paper's example: both lenses' cells; the bridge cell 12 is 49% covered
    # by the current bank's frame (58% by the version-1 bank's), so it may or may not be selected
    assert {11, 13} <= found[("sunglasses", 0)] <= {11, 12, 13}
    assert {16, 17, 18} <= found[("scarf", 0)]


@pytest.mark.lfw
def test_a_real_lfw_face_with_lfw_occ_objects_selects_the_cells_they_cover(lfw_tgz):
    with tarfile.open(lfw_tgz) as archive:  # the first image of the archive, as LFW-OCC would take it
        member = next(m for m in archive if m.isfile() and m.name.endswith(".jpg"))
        data = archive.extractfile(member).read()
    image = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    template = get_template("arcface")
    landmarks = center_crop_landmarks(image.shape[1], image.shape[0], template)  # the deep-funneled face
    face, _, aligned = align_face(image, landmarks, template)
    found = _check_objects(face, aligned)
    assert found[("sunglasses", 0)] & {11, 12, 13}


def _pair_batch(m, masks: torch.Tensor, has_clean=True, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    b = masks.shape[0]
    return SimpleNamespace(
        images=torch.randn(b, 3, 32, 32, generator=g),
        clean=torch.randn(b, 3, 32, 32, generator=g),
        masks=masks,
        labels=torch.arange(b) % 5,
        has_clean=torch.tensor([has_clean] * b),
        keys=[f"k{i}" for i in range(b)],
    )


def _on_cell(b: int, cell: int) -> torch.Tensor:
    masks = torch.zeros(b, 1, 32, 32)
    x0, y0, x1, y1 = cell_bounds(cell, 5, 32, 32)
    masks[:, :, y0:y1, x0:x1] = 1
    return masks


@pytest.mark.parametrize("stage", ["masks", "dictionary"])
def test_mask_generators_see_the_feature_difference_of_the_pair(stage):
    """Eq. 4: the generator's input is |f(x_occ) - f(x_clean)|, the trunk's top maps of the pair."""
    m = _method(f"method_kw.stage={stage}").train()
    assert m.requires_clean
    batch = _pair_batch(m, _on_cell(3, 12))
    seen = []
    m.generators["12"].register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach()))
    m(batch, 0)
    with torch.no_grad():
        f_occ = m.backbone.forward_features(batch.images)[-1]
        f_clean = m.backbone.forward_features(batch.clean)[-1]
    assert len(seen) == 1 and torch.allclose(seen[0], (f_occ - f_clean).abs(), atol=1e-6)
    gen = m.generators["12"]  # Conv3x3 -> PReLU -> BN -> sigmoid (the authors' `sia` branch)
    x = seen[0]
    with torch.no_grad():
        assert torch.allclose(gen(x), torch.sigmoid(gen.bn(gen.prelu(gen.conv(x)))))


@pytest.mark.parametrize("stage", ["masks", "dictionary"])
def test_stages_that_need_the_clean_twin_refuse_data_without_it(stage):
    m = _method(f"method_kw.stage={stage}").train()
    with pytest.raises(ValueError, match=r"'k0'.*no clean counterpart.*pdsn-pairs.*--keep-clean"):
        m(_pair_batch(m, _on_cell(2, 12), has_clean=False), 0)
    m(_pair_batch(m, torch.zeros(2, 1, 32, 32), has_clean=False), 0)  # unoccluded samples need none


def test_training_the_masks_stage_on_data_without_clean_twins_fails_at_once(sk_faces, tmp_path):
    data = build_train_set(tmp_path / "no_clean", sk_faces, keep_clean=False, occluded_fraction=1.0)
    trunk = train(tiny_cfg("pdsn", data, tmp_path / "trunk", "method_kw.stage=trunk", "train.steps=1"))
    cfg = tiny_cfg(
        "pdsn",
        data,
        tmp_path / "run",
        "method_kw.stage=masks",
        "train.steps=2",
        f"train.init_from={list_checkpoints(trunk)[-1]}",
    )
    with pytest.raises(ValueError, match="no clean counterpart"):
        train(cfg)


def test_l1_term_is_the_mean_over_mask_entries_by_hand():
    """The authors' nn.L1Loss(reduction='mean'), weighted 10: mean over every mask entry of the batch."""
    mask = torch.tensor([[[[0.5, 1.0]]], [[[0.0, 0.25]]]])
    f_occ = torch.tensor([[[[2.0, -1.0]]], [[[4.0, 3.0]]]])
    f_clean = torch.tensor([[[[1.0, 1.0]]], [[[0.0, 1.0]]]])
    # pair 1: |1.0 - 0.5| + |-1 - 1| = 2.5; pair 2: |0 - 0| + |0.75 - 0.25| = 0.5
    assert torch.allclose(mask_l1(mask, f_occ, f_clean, "sum"), torch.tensor([2.5, 0.5]))
    assert torch.allclose(mask_l1(mask, f_occ, f_clean, "mean"), torch.tensor([1.25, 0.25]))
    ref = torch.nn.L1Loss(reduction="mean")(mask * f_occ, mask * f_clean)
    assert math.isclose(mask_l1(mask, f_occ, f_clean).mean().item(), ref.item()) and math.isclose(ref.item(), 0.75)
    with pytest.raises(ValueError, match="l1_reduction"):
        mask_l1(mask, f_occ, f_clean, "max")


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_masks_stage_loss_is_half_ce_of_each_side_plus_weighted_l1(reduction):
    m = _method("method_kw.stage=masks", f"method_kw.l1_reduction={reduction}").train()
    masks = torch.cat([_on_cell(2, 12), _on_cell(1, 7)])
    batch = _pair_batch(m, masks)
    outs = {}
    for b in ("12", "7"):
        m.generators[b].register_forward_hook(lambda mod, args, out, b=b: outs.__setitem__(b, out.detach()))
    terms = m(batch, 0)
    with torch.no_grad():
        f_occ = m.backbone.forward_features(batch.images)[-1]
        f_clean = m.backbone.forward_features(batch.clean)[-1]
        mk = torch.cat([outs["12"], outs["7"]])  # the batch is ordered by block: 12's pairs first here
        order = torch.tensor([0, 1, 2])
        ce = sum(
            0.5 * F.cross_entropy(m.head(m.backbone.forward_head(mk * f), batch.labels[order]), batch.labels[order])
            for f in (f_clean, f_occ)
        )
        per_pair = (mk * f_occ - mk * f_clean).abs().flatten(1)
        l1 = per_pair.mean(1) if reduction == "mean" else per_pair.sum(1)
    assert torch.allclose(terms["mask_ce"], ce, rtol=1e-5)
    assert torch.allclose(terms["mask_l1"], 10.0 * l1.mean(), rtol=1e-5)


def test_masks_stage_freezes_trunk_fc_and_margin_head():
    m = _method("method_kw.stage=masks").train()
    assert not m.backbone.training and not m.head.training and m.generators.training
    assert not any(p.requires_grad for p in m.backbone.parameters())
    assert not any(p.requires_grad for p in m.head.parameters())
    groups = m.param_groups()
    trained = {id(p) for g in groups for p in g["params"]}
    assert not trained & {id(p) for p in list(m.backbone.parameters()) + list(m.head.parameters())}
    assert {id(p) for p in m.generators.parameters()} <= trained
    terms = m(_pair_batch(m, _on_cell(2, 12)), 0)
    sum(v for k, v in terms.items() if not k.startswith("log/")).backward()
    assert all(p.grad is None for p in m.head.parameters()) and all(p.grad is None for p in m.backbone.parameters())
    assert m.generators["12"].conv.weight.grad is not None and m.generators["6"].conv.weight.grad is None


def test_finetune_trains_fc_and_head_at_the_small_lr_and_the_trunk_ten_times_slower():
    m = _method("method_kw.stage=finetune").train()  # tiny config: optim.lr 0.05
    opt = build_optimizer(m.param_groups(), m.cfg.optim)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert math.isclose(lrs["fc+head"], 1e-3) and math.isclose(lrs["trunk"], 1e-4)
    assert math.isclose(lrs["segmentation"], 0.05)
    named = {g["name"]: {id(p) for p in g["params"]} for g in opt.param_groups}
    assert {id(p) for p in m.head.parameters()} <= named["fc+head"]
    assert id(m.backbone.fc.weight) in named["fc+head"] and id(m.backbone.stem[0].weight) in named["trunk"]
    assert not {id(p) for p in m.generators.parameters()} & set().union(*named.values())
    frozen = _method("method_kw.stage=finetune", "method_kw.finetune_trunk_lr=0").train()
    names = [g["name"] for g in frozen.param_groups()]
    assert names == ["fc+head", "segmentation"]
    assert not any(p.requires_grad for p in frozen.backbone.stages.parameters())
    assert not frozen.backbone.stages.training and frozen.backbone.bn.training  # BN of the FC still adapts


def test_unknown_and_renamed_options_are_refused():
    with pytest.raises(ValueError, match="unknown method_kw.*'block_sel'"):
        _method("method_kw.block_sel=coverage")
    with pytest.raises(ValueError, match="renamed.*block_selection"):
        _method("method_kw.block_score=iou")
    with pytest.raises(ValueError, match="block_selection must be"):
        _method("method_kw.block_selection=area")
    with pytest.raises(ValueError, match="blocks must be"):
        _method("method_kw.blocks=middle")


def test_dictionary_stage_accumulates_normalised_masks():
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
    assert torch.equal(state["generators.7.conv.weight"], gen_before["generators.7.conv.weight"])  # untouched
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
        close = lambda x, y: torch.allclose(x, y, atol=1e-4)  # noqa: E731  (batch-size rounding)
        assert close(ea, m.backbone.forward_head(fa * fdm)) and close(eb, m.backbone.forward_head(fb * fdm))
        # clean gallery face: exactly the probe's FDM on both (the paper's protocol)
        assert close(eb[0], m.backbone.forward_head(fb[:1] * m.fdm(ma[:1]))[0])
        assert not close(eb[1], m.backbone.forward_head(fb[1:] * m.fdm(ma[1:]))[0])
        assert close(m.embed(a, ma), m.backbone.forward_head(fa * m.fdm(ma)))
        # a probe's condition on a gallery face: the gallery's top map times the probe's FDM
        cond = m.pair_condition(a, ma)
        assert cond.dtype == torch.uint8 and cond.shape == (2, len(m.blocks))
        assert close(m.embed_conditioned(b, cond[0]), m.backbone.forward_head(fb * m.fdm(ma[:1])))
        assert close(m.embed_conditioned(a, cond), m.embed(a, ma))
    assert not _finetuned("method_kw.pairwise_fdm=false").pairwise and not _method().pairwise
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


@pytest.mark.parametrize("stage", ["trunk", "masks", "dictionary", "finetune"])
def test_full_size_configs_are_the_papers_setting(stage):
    name = "pdsn_r50.yaml" if stage == "trunk" else f"pdsn_r50_{stage}.yaml"
    cfg = load_config(CONFIGS / name, ["data.train=[x]"])
    with torch.device("meta"):  # shapes only: IResNet-50 with 25 generators
        m = create_method("pdsn", cfg, 10572)
    assert m.stage == stage and m.input_size == (112, 96) and m._feature_size() == (7, 6)
    assert m.blocks == list(range(25)) and m.block_selection == "coverage" and m.block_threshold == 0.5
    assert (m.l1_weight, m.l1_reduction, m.tau) == (10.0, "mean", 0.25)
    assert (m.finetune_lr, m.finetune_trunk_lr) == (1e-3, 1e-4) and cfg.model.head_kw == {"s": 30.0, "m": 0.35}
    assert m.requires_clean == (stage in ("masks", "dictionary")) and m.pairwise == (stage == "finetune")


def test_a_stage_refuses_an_init_from_that_leaves_its_frozen_head_random(tiny_train, tmp_path):
    """The masks stage freezes the trunk and head: without init_from, or from a checkpoint trained
    on other identities (head of another shape), it must refuse instead of training generators
    against a random frozen head."""
    trunk = train(tiny_cfg("pdsn", tiny_train, tmp_path / "trunk", "method_kw.stage=trunk", "train.steps=2"))
    masks = ["method_kw.stage=masks", "train.steps=1"]
    with pytest.raises(ValueError, match="set train.init_from"):
        train(tiny_cfg("pdsn", tiny_train, tmp_path / "no_init", *masks))
    other = tmp_path / "other.pt"
    state = load_checkpoint(list_checkpoints(trunk)[-1])
    state["model"]["head.weight"] = torch.zeros(3, state["model"]["head.weight"].shape[1])  # 3 other identities
    torch.save(state, other)
    with pytest.raises(ValueError, match="another shape.*head.weight"):
        train(tiny_cfg("pdsn", tiny_train, tmp_path / "other_ids", *masks, f"train.init_from={other}"))
