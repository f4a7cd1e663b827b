"""SOIDN: OMA mask range and shape, segmentation supervision, smoke run."""

from __future__ import annotations

import torch
from methods_helpers import CONFIGS, falls, train_and_evaluate

from occsynth_train.config import load_config
from occsynth_train.methods import create_method


def test_oma_mask_in_unit_interval_with_face_feature_shape():
    cfg = load_config(CONFIGS / "soidn_tiny_cpu.yaml", ["data.train=[x]", "model.input_size=[64,64]"])
    m = create_method("soidn", cfg, 5)
    torch.nn.init.normal_(m.oma.weight, 0, 1.0)  # a non-trivial mask
    top, mask, logits = m.occlusion_mask(torch.randn(2, 3, 64, 64))
    assert mask.shape == top.shape == (2, 512, 2, 2)
    assert mask.min() >= 0 and mask.max() <= 1 and mask.std() > 0
    assert logits.shape == (2, 2, 64, 64)
    # the mask is driven by the segmentation trunk: the face loss reaches it through the OMA
    labels = torch.tensor([0, 1])
    emb = m.backbone.forward_head(top * mask)
    torch.nn.functional.cross_entropy(m.head(emb, labels), labels).backward()
    assert m.seg.stages[4][0].weight.grad.abs().max() > 0


def test_soidn_trains_and_evaluates(tiny_train, tiny_pairs, tmp_path):
    occ, report, _ = train_and_evaluate("soidn", tiny_train, tiny_pairs, tmp_path / "run", "train.steps=8", term="occ")
    assert falls(occ)
    assert report["segmentation"]["miou"] is not None
